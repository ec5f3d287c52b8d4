"""End to end on the dev cloud: moto in server mode plus simulated VMs that boot the
instances' real user data, install the agent bundle from S3 and serve jobs.

One module-scoped installation (bucket, table, role, security group); each test
checks what a user would see (results, reuse, self-termination, nothing left). What
every host must do (commands, reattach, cancel, ...) is in the host conformance suite
(`tests/hosts`), which runs on EC2 too; this module keeps what is EC2's own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from meadow_devcloud.ec2 import DevCloud

import meadow_core as mc
from meadow_core.clouds.aws import names, session
from meadow_core.clouds.aws.host import AllocEC2Instance
from meadow_core.clouds.aws.registry import DynamoRegistry
from meadow_core.errors import UnsatisfiableResourcesError
from tests.aws import ec2_tasks
from tests.devcloud_install import meadow_installed

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.devcloud,
    pytest.mark.needs_root,
    pytest.mark.slow,
]

REGION = "us-east-2"
HERE = Path(__file__).resolve().parent
#: Short, so the idle tests end quickly; warm reuse tests act well within it.
IDLE_TIMEOUT = 12.0


@pytest.fixture(scope="module")
def cloud(devcloud: DevCloud, moto_server: Any) -> Iterator[DevCloud]:
    """A freshly reset dev cloud with Meadow installed, the env pointing at it."""
    with meadow_installed(devcloud, moto_server, REGION):
        try:
            yield devcloud
        finally:
            _terminate_all()


def _ec2() -> Any:
    return boto3.client("ec2", region_name=REGION)


def _instances(states: tuple[str, ...] = ("pending", "running")) -> list[dict[str, Any]]:
    reservations = _ec2().describe_instances(
        Filters=[
            {"Name": "tag:meadow:managed", "Values": ["true"]},
            {"Name": "instance-state-name", "Values": list(states)},
        ]
    )["Reservations"]
    return [i for r in reservations for i in r["Instances"]]


def _terminate_all() -> None:
    ids = [i["InstanceId"] for i in _instances()]
    if ids:
        _ec2().terminate_instances(InstanceIds=ids)


def _diagnosis(cloud: DevCloud | None) -> str:
    """What the instances were doing: their agents' logs and the registry."""
    if cloud is None:
        return ""
    parts = []
    for record in DynamoRegistry(boto3.client("dynamodb", region_name=REGION)).list():
        parts.append(f"registry: {record.instance_id} {record.state} {record.allocations}")
    for vm in cloud.vms():
        for log in (cloud.state_dir / "vms" / vm / "fs" / "var-lib-meadow").glob("*.log"):
            parts.append(f"--- {vm} {log.name}\n{log.read_text()[-3000:]}")
    return "\n".join(parts)


def _wait(
    predicate: Callable[[], bool], timeout: float, what: str, cloud: DevCloud | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{_diagnosis(cloud)}")


@pytest.fixture(scope="module")
def deployment(cloud: DevCloud, tmp_path_factory: pytest.TempPathFactory) -> mc.Deployment:
    """The test code as a snapshot, in an environment built from a requirements file
    (built once on the caller and packed into S3: the VMs have no package index)."""
    folder = tmp_path_factory.mktemp("reqs")
    requirements = folder / "requirements.txt"
    requirements.write_text("six==1.16.0\n")
    return asyncio.run(
        mc.Deployment.mirror_local(
            interpreter=mc.PipRequirementsFile(str(requirements)),
            additional_sys_paths=[str(HERE.parent.parent)],
            include_sys_path=False,
        )
    )


def _host(**kwargs: Any) -> AllocEC2Instance:
    return AllocEC2Instance(region_name=REGION, idle_timeout=IDLE_TIMEOUT, **kwargs)


SMALL = mc.Resources(logical_cpu=1, memory_gb=1, max_eviction_rate=0)


def _serving(job_id: str) -> list[str]:
    """The instances whose registry record holds an allocation for the job."""
    registry = DynamoRegistry(boto3.client("dynamodb", region_name=REGION))
    return [r.instance_id for r in registry.list() if job_id in r.allocations]


def _in_flight(job_id: str) -> int:
    """Tasks of the job some instance has taken from its queue and not yet answered."""
    sqs = boto3.client("sqs", region_name=REGION)
    try:
        url = sqs.get_queue_url(QueueName=names.job_queue_name(job_id))["QueueUrl"]
    except sqs.exceptions.QueueDoesNotExist:
        return 0
    attributes = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessagesNotVisible"])


def _instances_busy(job_id: str, count: int) -> bool:
    """``count`` instances serve the job, each holding one of its tasks."""
    return len(_serving(job_id)) == count and _in_flight(job_id) == count


#: One worker per instance: no type holds two tasks this size.
ONE_PER_INSTANCE = mc.Resources(logical_cpu=96, memory_gb=370, max_eviction_rate=0)


def _gated_map(
    cloud: DevCloud,
    deployment: mc.Deployment,
    gate_dir: Path,
    name: str,
    tasks: int,
    instances: int,
    while_busy: Callable[[str], None] = lambda job_id: None,
) -> list[tuple[int, str]]:
    """Map ``tasks`` squares over ``instances`` instances, one task each at a time. The
    tasks wait for a gate file until every instance holds one, then ``while_busy(job_id)``
    runs and the gate opens: "all instances busy" is a state the test waits for, not a
    window it must catch however slowly an instance boots."""
    job_id = f"{name}-{uuid.uuid4().hex[:8]}"
    gate = gate_dir / f"{job_id}.released"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(
            mc.run_map_sync,
            ec2_tasks.square_when_released,
            [(x, str(gate)) for x in range(tasks)],
            host=_host(),
            resources_per_task=ONE_PER_INSTANCE,
            deployment=deployment,
            num_concurrent_tasks=instances,
            job_id=job_id,
        )
        try:
            busy = f"{instances} tasks to start"
            _wait(lambda: _instances_busy(job_id, instances), 150, busy, cloud)
            while_busy(job_id)
        finally:
            gate.touch()
        return running.result(timeout=300)


def test_run_function_launches_an_instance_then_reuses_it_warm(
    cloud: DevCloud, deployment: mc.Deployment
) -> None:
    _terminate_all()
    _wait(lambda: not cloud.vms(), 30, "previous VMs to go")
    first_instance, six_version = mc.run_function_sync(
        ec2_tasks.six_version, host=_host(), resources=SMALL, deployment=deployment
    )
    assert six_version == "1.16.0"
    running = [i["InstanceId"] for i in _instances()]
    assert running == [first_instance]
    assert first_instance in cloud.vms()

    second_instance, _ = mc.run_function_sync(
        ec2_tasks.six_version, host=_host(), resources=SMALL, deployment=deployment
    )
    assert second_instance == first_instance, "a warm instance with room must be reused"
    assert [i["InstanceId"] for i in _instances()] == [first_instance], "nothing new launched"
    # The job's record names what it read from the bucket, so `meadow aws cache prune`
    # keeps it: the code, the environment, the function and the agent bundle.
    registry = DynamoRegistry(boto3.client("dynamodb", region_name=REGION))
    for job in asyncio.run(_host().list_jobs(limit=2)):  # the cold job and the warm one
        refs = registry.job_fields(job.job_id)["refs"]  # type: ignore[index]
        kinds = sorted(ref.split("/", 1)[0] for ref in refs)
        assert kinds == ["bootstrap", "code", "envs", "functions"], refs


def test_explicit_credentials_are_all_a_caller_needs(
    cloud: DevCloud, deployment: mc.Deployment, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An orchestrator's stored connection (``session.using``) replaces boto3's chain for
    the whole path (uploads on thread pools, launch, watch, cleanup): with no AWS
    variable, profile or metadata endpoint left, the job runs inside the block and fails
    for lack of credentials outside it."""
    credentials = session.AwsCredentials(
        access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        endpoint_url=os.environ["AWS_ENDPOINT_URL"],
        region_name=REGION,
    )
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    with pytest.raises(session.MissingCredentialsError, match="no AWS credentials found"):
        mc.run_function_sync(ec2_tasks.six_version, host=_host(), resources=SMALL)
    host = AllocEC2Instance(idle_timeout=IDLE_TIMEOUT)  # the region comes from the block
    with session.using(credentials):
        _, six_version = mc.run_function_sync(
            ec2_tasks.six_version, host=host, resources=SMALL, deployment=deployment
        )
    assert six_version == "1.16.0"


def test_the_agents_own_interpreter_runs_a_function_pickled_by_value(
    cloud: DevCloud,
) -> None:
    """``preinstalled_interpreter(MEADOW_INTERPRETER)`` on an instance: no environment
    is built; the worker imports Meadow from the agent's bundle."""
    version = mc.run_function_sync(
        lambda: __import__("sys").version_info[:2],
        host=_host(),
        resources=SMALL,
        deployment=mc.Deployment.preinstalled_interpreter(mc.MEADOW_INTERPRETER),
    )
    assert tuple(version) == sys.version_info[:2]


def test_what_a_task_keeps_in_its_store_lands_in_the_bucket(cloud: DevCloud) -> None:
    """``current_task().store`` on an instance is Meadow's bucket, not the instance's
    disk: it outlives the instance and the caller reads it (the Dagster IO manager
    keeps step outputs there)."""
    key = f"user/{uuid.uuid4().hex}"
    mc.run_function_sync(
        lambda: mc.current_task().store.put(key, b"kept"),  # type: ignore[union-attr]
        host=_host(),
        resources=SMALL,
        deployment=mc.Deployment.preinstalled_interpreter(mc.MEADOW_INTERPRETER),
    )
    assert asyncio.run(_host().read_object(key)) == b"kept"


def test_the_meadow_command_follows_ec2_jobs(cloud: DevCloud, deployment: mc.Deployment) -> None:
    """`meadow --region R wait/jobs/status/logs` on a job submitted without waiting."""
    handle = mc.run_command_sync(
        ["sh", "-c", "echo made on an instance"],
        host=_host(),
        resources=SMALL,
        deployment=deployment,
        wait_for_result=False,
    )

    def meadow(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "meadow_core.cli", "--region", REGION, *args],
            capture_output=True,
            text=True,
            timeout=120,
        )

    waited = meadow("wait", handle.job_id)
    assert waited.returncode == 0, waited.stderr
    assert "made on an instance" in waited.stdout
    listed = meadow("jobs")
    assert f"{handle.job_id}\tsucceeded\t1/1\tcommand" in listed.stdout, listed.stderr
    status = meadow("status", handle.job_id)
    assert "succeeded" in status.stdout and "1/1 done" in status.stdout, status.stderr
    logs = meadow("logs", handle.job_id)
    assert logs.returncode == 0 and "made on an instance" in logs.stdout, logs.stderr


def test_map_over_three_instances_delivers_every_result_once(
    cloud: DevCloud, deployment: mc.Deployment, vm_visible_dir: Path
) -> None:
    """A task fills an instance, so a map of nine with three at a time needs three
    instances; the gate keeps the first one up from running the whole map alone."""
    results = _gated_map(cloud, deployment, vm_visible_dir, "three-instances", 9, 3)
    assert [value for value, _ in results] == [x * x for x in range(9)]
    assert len({instance for _, instance in results}) == 3


def test_idle_instances_terminate_themselves(cloud: DevCloud) -> None:
    assert _instances(), "the earlier tests left warm instances to watch"
    _wait(
        lambda: not _instances(),
        IDLE_TIMEOUT + 45,
        "idle instances to terminate themselves",
        cloud,
    )
    _wait(lambda: not cloud.vms(), 15, "the simulator to destroy the VMs")


def test_spot_interruption_mid_map_still_delivers_every_result(
    cloud: DevCloud, deployment: mc.Deployment
) -> None:
    spot = mc.Resources(logical_cpu=96, memory_gb=370, max_eviction_rate=80)
    interrupted: list[str] = []

    async def run() -> list[tuple[int, str]]:
        results: list[tuple[int, str]] = []
        async for result in mc.run_map_as_completed(
            ec2_tasks.square_slowly,
            [(x, 2.0) for x in range(8)],
            host=_host(),
            resources_per_task=spot,
            deployment=deployment,
            num_concurrent_tasks=2,
        ):
            results.append(result.result_or_raise())
            if not interrupted:
                victim = results[-1][1]
                cloud.interrupt(victim)
                interrupted.append(victim)
        return results

    results = asyncio.run(run())
    assert sorted(value for value, _ in results) == [x * x for x in range(8)]
    assert len(results) == 8
    _wait(lambda: interrupted[0] not in cloud.vms(), 30, "the interrupted instance to end")


def test_instance_killed_mid_task_costs_a_retry_not_a_result(
    cloud: DevCloud, deployment: mc.Deployment, vm_visible_dir: Path
) -> None:
    """One of a map's two instances dies holding a task: the task runs again on the
    other, and the caller gets every result once. The kill lands while both instances
    hold a task (see ``_gated_map``)."""
    killed: list[str] = []

    def kill_one(job_id: str) -> None:
        victim = _serving(job_id)[0]
        cloud.kill(victim)  # it dies without a word to anyone
        _ec2().terminate_instances(InstanceIds=[victim])
        killed.append(victim)

    results = _gated_map(cloud, deployment, vm_visible_dir, "killed-mid-task", 4, 2, kill_one)
    victim = killed[0]
    assert sorted(value for value, _ in results) == [x * x for x in range(4)]
    # The victim died before the gate opened, so the task it held ran again elsewhere.
    assert victim not in {instance for _, instance in results}


def test_caller_killed_mid_map_leaves_nothing_after_the_idle_timeout(
    cloud: DevCloud, deployment: mc.Deployment, tmp_path: Path, vm_visible_dir: Path
) -> None:
    """The caller dies, then one of the map's two instances dies mid-task. The other
    takes the job back when that task returns to the queue (nobody else would), finishes
    the map, settles the job nobody watches (its record says how it went, its queues
    are gone) and ends itself; a new caller gets every result.

    The tasks wait for a gate file, so "both instances hold a task" is a state the test
    waits for, not a window it has to catch: one instance cannot finish the map alone
    while the other is still booting."""
    job_id = f"killed-caller-{uuid.uuid4().hex[:8]}"
    gate = vm_visible_dir / f"{job_id}.released"
    script = tmp_path / "caller.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import asyncio, sys
            sys.path.insert(0, {str(HERE.parent.parent)!r})
            import meadow_core as mc
            from meadow_core.clouds.aws.host import AllocEC2Instance
            from tests.aws import ec2_tasks
            deployment = asyncio.run(mc.Deployment.mirror_local(
                interpreter=mc.PipRequirementsFile({str(tmp_path / "r.txt")!r}),
                additional_sys_paths=[{str(HERE.parent.parent)!r}], include_sys_path=False))
            print("submitting", flush=True)
            # One worker per instance (no type holds two), so the map uses two instances.
            mc.run_map_sync(ec2_tasks.square_when_released, [(x, {str(gate)!r}) for x in range(6)],
                host=AllocEC2Instance(region_name={REGION!r}, idle_timeout={IDLE_TIMEOUT}),
                resources_per_task=mc.Resources(logical_cpu=96, memory_gb=370,
                                                max_eviction_rate=0),
                deployment=deployment, job_id={job_id!r}, num_concurrent_tasks=2)
            """
        )
    )
    (tmp_path / "r.txt").write_text("six==1.16.0\n")
    caller = subprocess.Popen([sys.executable, str(script)], env=os.environ.copy())
    sqs = boto3.client("sqs", region_name=REGION)

    try:
        # Not "any instance exists": a warm one left by an earlier test would let the
        # caller die before it submitted anything. Wait for both instances to be busy.
        _wait(lambda: _instances_busy(job_id, 2), 150, "both tasks to start", cloud)
    finally:
        caller.send_signal(signal.SIGKILL)
        caller.wait()
    victim, survivor = _serving(job_id)
    cloud.kill(victim)  # dies holding a task: it comes back to the queue, with no caller
    _ec2().terminate_instances(InstanceIds=[victim])
    gate.touch()  # the survivor finishes its task and then the rest of the map

    _wait(
        lambda: not _instances(),
        IDLE_TIMEOUT + 120,
        "the orphaned instances to end themselves",
        cloud,
    )
    record = asyncio.run(_host().get_job(job_id))
    assert record is not None
    assert (record.state, record.num_done, record.num_failed) == ("succeeded", 6, 0)
    queues = sqs.list_queues(QueueNamePrefix="meadow-")
    assert not [url for url in queues.get("QueueUrls", []) if job_id in url]
    results = mc.wait_for_job_sync(job_id, host=_host())
    assert sorted(value for value, _ in results) == [x * x for x in range(6)]
    # The victim may have finished a task before it died; the one it held when killed
    # was run again, by the only instance left.
    assert survivor in {instance for _, instance in results}


def test_resources_larger_than_any_type_fail_before_any_launch(cloud: DevCloud) -> None:
    before = _instances()
    with pytest.raises(UnsatisfiableResourcesError) as error:
        mc.run_function_sync(
            ec2_tasks.instance_id, host=_host(), resources=mc.Resources(logical_cpu=10_000)
        )
    assert "largest" in str(error.value).lower()
    assert _instances() == before


def test_unknown_region_fails_before_any_launch(cloud: DevCloud) -> None:
    with pytest.raises(session.UnknownRegionError, match="us-nowhere-1"):
        mc.run_function_sync(
            ec2_tasks.instance_id,
            host=AllocEC2Instance(region_name="us-nowhere-1"),
            resources=SMALL,
        )
