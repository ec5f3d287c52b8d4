"""The dev cloud against real moto and real network namespaces.

Each test launches instances with boto3 exactly as a user would and observes what a
user would: objects the user data wrote to S3, the console, processes and namespaces.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import psutil
import pytest
from meadow_devcloud.ec2 import DevCloud, DevCloudError, cleanup
from meadow_devcloud.vm import netns, procs

pytestmark = [pytest.mark.devcloud, pytest.mark.needs_root]

PYTHON = sys.executable  # has boto3; the VMs see the host's Python read-only
TAGS = [{"ResourceType": "instance", "Tags": [{"Key": "meadow:managed", "Value": "true"}]}]
BUCKET = "devcloud-test"


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@functools.cache
def _first_amazon_ami(url: str) -> str:
    ec2 = boto3.client(
        "ec2",
        endpoint_url=url,
        region_name="us-east-2",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    return str(ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"])


def ami(ec2: Any) -> str:
    """moto's AMI catalogue is fixed, so one (slow) lookup per server is enough."""
    return _first_amazon_ami(ec2.meta.endpoint_url)


def instance_profile() -> dict[str, str]:
    iam = boto3.client("iam")
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "ec2.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    iam.create_role(RoleName="devcloud-test", AssumeRolePolicyDocument=json.dumps(trust))
    iam.create_instance_profile(InstanceProfileName="devcloud-test")
    iam.add_role_to_instance_profile(InstanceProfileName="devcloud-test", RoleName="devcloud-test")
    return {"Name": "devcloud-test"}


def launch(user_data: str, count: int = 1, tagged: bool = True, **extra: Any) -> list[str]:
    ec2 = boto3.client("ec2")
    response = ec2.run_instances(
        ImageId=ami(ec2),
        MinCount=count,
        MaxCount=count,
        InstanceType="t3.micro",
        UserData=user_data,
        TagSpecifications=TAGS if tagged else [],
        **extra,
    )
    return [instance["InstanceId"] for instance in response["Instances"]]


def python_user_data(body: str) -> str:
    """A user data script that runs `body` with the host's Python (boto3 inside)."""
    return f"#!{PYTHON}\n{body}"


def s3_text(key: str) -> str | None:
    s3 = boto3.client("s3")
    try:
        return str(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode())
    except s3.exceptions.NoSuchKey:
        return None


@pytest.fixture
def bucket(aws_env: dict[str, str]) -> str:
    boto3.client("s3").create_bucket(
        Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "us-east-2"}
    )
    return BUCKET


def in_vm(cloud: DevCloud, instance_id: str, code: str) -> str:
    """Run Python inside the VM's network namespace (the view a process on it has)."""
    result = subprocess.run(
        ["ip", "netns", "exec", cloud.vm_netns(instance_id), PYTHON, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


IMDS_GET = """
import sys, urllib.request, urllib.error
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
put = urllib.request.Request("http://169.254.169.254/latest/api/token", method="PUT",
    headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
token = opener.open(put, timeout=5).read().decode()
get = urllib.request.Request("http://169.254.169.254/latest/meta-data/" + sys.argv[1],
    headers={"X-aws-ec2-metadata-token": token})
try:
    print(opener.open(get, timeout=5).read().decode())
except urllib.error.HTTPError as error:
    print("HTTP", error.code)
"""


def imds(cloud: DevCloud, instance_id: str, key: str) -> str:
    code = f"import sys; sys.argv = ['', {key!r}]\n" + IMDS_GET
    return in_vm(cloud, instance_id, code).strip()


def test_user_data_runs_in_a_vm_and_reaches_moto(devcloud: DevCloud, bucket: str) -> None:
    boto3.client("s3").put_object(Bucket=bucket, Key="input.txt", Body=b"hello")
    script = python_user_data(
        f"""
import json, os, socket, boto3, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({{}}))
put = urllib.request.Request("http://169.254.169.254/latest/api/token", method="PUT",
    headers={{"X-aws-ec2-metadata-token-ttl-seconds": "60"}})
token = opener.open(put).read().decode()
def meta(key):
    get = urllib.request.Request("http://169.254.169.254/latest/meta-data/" + key,
        headers={{"X-aws-ec2-metadata-token": token}})
    return opener.open(get).read().decode()
s3 = boto3.client("s3")  # credentials: the instance profile, through IMDS
body = s3.get_object(Bucket="{bucket}", Key="input.txt")["Body"].read().decode()
result = {{
    "instance_id": meta("instance-id"),
    "instance_type": meta("instance-type"),
    "zone": meta("placement/availability-zone"),
    "region": meta("placement/region"),
    "keys": [o["Key"] for o in s3.list_objects_v2(Bucket="{bucket}")["Contents"]],
    "input": body,
    "uid": os.getuid(),
    "home": os.environ["HOME"],
    "hostname": socket.gethostname(),
}}
s3.put_object(Bucket="{bucket}", Key="result-" + result["instance_id"], Body=json.dumps(result))
print("uploaded")
"""
    )
    profile = instance_profile()
    ami(boto3.client("ec2"))  # the slow first lookup is not part of booting
    launched = time.monotonic()
    [instance_id] = launch(script, IamInstanceProfile=profile)
    wait_for(
        lambda: (
            instance_id in devcloud.vms() and "running user data" in devcloud.console(instance_id)
        ),
        what="the boot",
    )
    booted = time.monotonic() - launched
    text = wait_for(lambda: s3_text(f"result-{instance_id}"), what="the user data's result")
    result = json.loads(text)
    assert result["instance_id"] == instance_id
    assert result["instance_type"] == "t3.micro"
    assert result["zone"].startswith("us-east-2") and result["region"] == "us-east-2"
    assert result["keys"] == ["input.txt"] and result["input"] == "hello"
    assert result["uid"] == 0 and result["home"] == "/root"
    assert result["hostname"].startswith("ip-10-")
    wait_for(lambda: "uploaded" in devcloud.console(instance_id), what="the console output")
    assert devcloud.boot_seconds(instance_id) < 0.5
    print(
        f"boot {devcloud.boot_seconds(instance_id):.3f}s, user data ran {booted:.3f}s after launch"
    )


def test_untagged_instances_are_not_booted(devcloud: DevCloud, aws_env: dict[str, str]) -> None:
    [tagged] = launch("#!/bin/sh\n")
    [untagged] = launch("#!/bin/sh\n", tagged=False)
    wait_for(lambda: tagged in devcloud.vms(), what="the tagged VM")
    time.sleep(2 * devcloud.poll_interval)
    assert untagged not in devcloud.vms()


def test_vms_have_private_filesystems(devcloud: DevCloud, bucket: str) -> None:
    marker = f"devcloud-marker-{os.getpid()}"
    script = python_user_data(
        f"""
import os, time, boto3, urllib.request
me = urllib.request.build_opener(urllib.request.ProxyHandler({{}})).open(
    "http://169.254.169.254/latest/meta-data/instance-id").read().decode()
dirs = ("/tmp", "/opt", "/var/lib/meadow", "/root")
for directory in dirs:
    with open(os.path.join(directory, "{marker}"), "w") as f:
        f.write(me)
time.sleep(1.0)  # both VMs have written by now
seen = {{d: open(os.path.join(d, "{marker}")).read() for d in dirs}}
try:
    open("/usr/{marker}", "w")
    host_writable = True
except OSError:
    host_writable = False
boto3.client("s3").put_object(Bucket="{bucket}", Key="seen-" + me,
    Body=repr((seen, sorted(os.listdir("/tmp")), host_writable)))
"""
    )
    ids = launch(script, count=2, IamInstanceProfile=instance_profile())
    for instance_id in ids:
        text = wait_for(lambda i=instance_id: s3_text(f"seen-{i}"), what="the VMs' reports")
        seen, tmp_listing, host_writable = eval(text)
        assert set(seen.values()) == {instance_id}, seen  # never the other VM's file
        # Only its own file, besides the mount points of shared paths under /tmp (the
        # tests' venv when the checkout is there, the tests' gate folder).
        shared = {Path(p).parts[2] for p in devcloud.shared_paths if Path(p).parts[1:2] == ("tmp",)}
        assert [name for name in tmp_listing if name not in shared] == [marker]
        assert host_writable is False
    for directory in ("/tmp", "/opt", "/var/lib/meadow", "/root", "/usr"):
        assert not os.path.exists(os.path.join(directory, marker))


def test_vm_reaches_only_moto_and_imds(devcloud: DevCloud, bucket: str) -> None:
    accepted: list[object] = []
    host_service = socket.socket()
    host_service.bind(("127.0.0.1", 0))
    host_service.listen()
    host_service.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                accepted.append(host_service.accept()[0])
            except TimeoutError:
                continue

    server = threading.Thread(target=serve)
    server.start()
    try:
        port = host_service.getsockname()[1]
        moto_port = devcloud.moto.port
        script = python_user_data(
            f"""
import socket, boto3
def reach(host, port):
    try:
        socket.create_connection((host, port), timeout=2).close()
        return "ok"
    except OSError as error:
        return type(error).__name__
results = {{
    "host_service": reach("127.0.0.1", {port}),
    "moto": reach("127.0.0.1", {moto_port}),
    "imds": reach("169.254.169.254", 80),
    "private_network": reach("10.0.0.1", 80),
}}
boto3.client("s3").put_object(Bucket="{bucket}", Key="reach", Body=repr(results))
"""
        )
        launch(script, IamInstanceProfile=instance_profile())
        results = eval(wait_for(lambda: s3_text("reach"), what="the reachability report"))
        assert results["moto"] == "ok" and results["imds"] == "ok"
        assert results["host_service"] == "ConnectionRefusedError"
        assert results["private_network"] == "OSError"  # ENETUNREACH: no route out
        assert accepted == []
    finally:
        stop.set()
        server.join()
        host_service.close()


def test_interrupt_announces_through_imds_then_terminates(
    devcloud: DevCloud, aws_env: dict[str, str]
) -> None:
    [instance_id] = launch("#!/bin/sh\nsleep 1000\n", InstanceMarketOptions={"MarketType": "spot"})
    wait_for(lambda: instance_id in devcloud.vms(), what="the VM")
    assert imds(devcloud, instance_id, "instance-id") == instance_id
    assert imds(devcloud, instance_id, "instance-life-cycle") == "spot"
    assert imds(devcloud, instance_id, "spot/instance-action") == "HTTP 404"
    devcloud.interrupt(instance_id, terminate_after=1.0)
    notice = json.loads(imds(devcloud, instance_id, "spot/instance-action"))
    assert notice["action"] == "terminate" and notice["time"].endswith("Z")
    ec2 = boto3.client("ec2")

    def state() -> str:
        reservations = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        return str(reservations[0]["Instances"][0]["State"]["Name"])

    wait_for(lambda: state() in ("shutting-down", "terminated"), what="AWS to reclaim it")
    wait_for(lambda: instance_id not in devcloud.vms(), what="the VM to be destroyed")


def test_interrupt_of_an_unknown_instance_is_a_clear_error(devcloud: DevCloud) -> None:
    with pytest.raises(DevCloudError, match="i-0000"):
        devcloud.interrupt("i-0000")


def vm_processes(cloud: DevCloud, instance_id: str) -> list[int]:
    return procs.pids_in_netns(netns.path(cloud.vm_netns(instance_id)))


def test_terminate_destroys_the_vm(devcloud: DevCloud, aws_env: dict[str, str]) -> None:
    script = "#!/bin/sh\n(setsid sleep 1000 &)\nnohup sleep 1001 >/dev/null 2>&1 &\nsleep 1002\n"
    [instance_id] = launch(script)
    wait_for(lambda: instance_id in devcloud.vms(), what="the VM")
    name = devcloud.vm_netns(instance_id)
    # unshare, init, the script and its three sleeps
    wait_for(lambda: len(vm_processes(devcloud, instance_id)) >= 6, what="the processes")
    pids = vm_processes(devcloud, instance_id)
    boto3.client("ec2").terminate_instances(InstanceIds=[instance_id])
    wait_for(lambda: instance_id not in devcloud.vms(), what="the VM to be destroyed")
    assert not [pid for pid in pids if psutil.pid_exists(pid) and not _zombie(pid)]
    assert name not in netns.existing()
    assert "machine destroyed (instance ended)" in devcloud.console(instance_id)


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def test_kill_is_a_machine_dying_behind_ec2s_back(
    devcloud: DevCloud, aws_env: dict[str, str]
) -> None:
    [instance_id] = launch("#!/bin/sh\nsleep 1000\n")
    wait_for(lambda: instance_id in devcloud.vms(), what="the VM")
    name = devcloud.vm_netns(instance_id)
    devcloud.kill(instance_id)
    assert instance_id not in devcloud.vms() and name not in netns.existing()
    time.sleep(3 * devcloud.poll_interval)  # the simulator must not boot it again
    assert instance_id not in devcloud.vms()
    reservations = boto3.client("ec2").describe_instances(InstanceIds=[instance_id])
    assert reservations["Reservations"][0]["Instances"][0]["State"]["Name"] == "running"


def test_a_reset_destroys_every_vm(devcloud: DevCloud, aws_env: dict[str, str]) -> None:
    ids = launch("#!/bin/sh\nsleep 1000\n", count=2)
    wait_for(lambda: set(ids) <= set(devcloud.vms()), what="the VMs")
    devcloud.moto.reset()
    wait_for(lambda: not set(ids) & set(devcloud.vms()), what="the VMs to go")
    assert not netns.existing(devcloud.prefix)


@pytest.fixture
def own_state_dir(vm_host: None, tmp_path: Path) -> Iterator[Path]:
    """A state dir for a dev cloud of the test's own; reaped whatever happens."""
    state_dir = tmp_path / "cloud"
    try:
        yield state_dir
    finally:
        cleanup(state_dir)


def cli(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "meadow_devcloud", *args, "--state-dir", str(state_dir)],
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_cli_start_interrupt_stop_leaves_nothing(own_state_dir: Path) -> None:
    started = cli(own_state_dir, "start")
    assert started.returncode == 0, started.stderr
    env = dict(line.removeprefix("export ").split("=", 1) for line in started.stdout.splitlines())
    assert env["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
    state = json.loads((own_state_dir / "devcloud.json").read_text())
    daemon, moto = state["daemon"], state["moto"]
    ec2 = boto3.client(
        "ec2",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
    )
    response = ec2.run_instances(
        ImageId=ami(ec2),
        MinCount=2,
        MaxCount=2,
        InstanceType="t3.micro",
        UserData="#!/bin/sh\necho booted\nsleep 1000\n",
        TagSpecifications=TAGS,
    )
    ids = [instance["InstanceId"] for instance in response["Instances"]]
    consoles = [own_state_dir / "vms" / i / "console.log" for i in ids]
    wait_for(
        lambda: all(c.exists() and "booted" in c.read_text() for c in consoles), what="the VMs"
    )
    status = cli(own_state_dir, "status")
    assert "running" in status.stdout and all(i in status.stdout for i in ids)
    assert cli(own_state_dir, "interrupt", ids[0]).returncode == 0
    notice = json.loads((own_state_dir / "vms" / ids[0] / "spot-instance-action.json").read_text())
    assert notice["action"] == "terminate"
    unknown = cli(own_state_dir, "interrupt", "i-0123")
    assert unknown.returncode != 0 and "i-0123" in unknown.stderr
    prefix = state["prefix"]
    pids = [p for name in netns.existing(prefix) for p in procs.pids_in_netns(netns.path(name))]
    assert len(netns.existing(prefix)) == 2 and pids

    stopped = cli(own_state_dir, "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert netns.existing(prefix) == []
    assert not [pid for pid in pids if psutil.pid_exists(pid) and not _zombie(pid)]
    assert procs.same_process(daemon) is None and procs.same_process(moto) is None
    assert "not running" in cli(own_state_dir, "status").stdout


def test_a_crashed_simulator_takes_its_vms_along_and_stop_reaps_the_rest(
    own_state_dir: Path,
) -> None:
    started = cli(own_state_dir, "start")
    assert started.returncode == 0, started.stderr
    state = json.loads((own_state_dir / "devcloud.json").read_text())
    url = state["url"]
    ec2 = boto3.client(
        "ec2",
        endpoint_url=url,
        region_name="us-east-2",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    response = ec2.run_instances(
        ImageId=ami(ec2),
        MinCount=1,
        MaxCount=1,
        InstanceType="t3.micro",
        UserData="#!/bin/sh\nsleep 1000\n",
        TagSpecifications=TAGS,
    )
    instance_id = response["Instances"][0]["InstanceId"]
    vm_file = own_state_dir / "vms" / instance_id / "vm.json"
    record = wait_for(
        lambda: (
            vm_file.exists()
            and json.loads(vm_file.read_text())["state"] == "running"
            and json.loads(vm_file.read_text())
        ),
        what="the VM",
    )
    pids = wait_for(lambda: procs.pids_in_netns(netns.path(record["netns"])), what="processes")
    os.kill(state["daemon"]["pid"], 9)  # the simulator crashes
    wait_for(
        lambda: not [p for p in pids if psutil.pid_exists(p) and not _zombie(p)],
        what="the VM's processes to die with the simulator",
    )
    assert record["netns"] in netns.existing()  # only the namespace is left ...
    stopped = cli(own_state_dir, "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert netns.existing(state["prefix"]) == []  # ... and stop reaps it
    assert procs.same_process(state["moto"]) is None


def test_second_start_on_a_running_state_dir_is_refused(devcloud: DevCloud) -> None:
    with pytest.raises(DevCloudError, match="already runs"):
        DevCloud.start(devcloud.state_dir, moto_url=devcloud.url)
    with pytest.raises(DevCloudError, match="at least one region"):
        DevCloud.start(devcloud.state_dir / "other", regions=())


IMDS_V1 = """
import urllib.request, urllib.error
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
try:
    print(opener.open("http://169.254.169.254/latest/meta-data/instance-id", timeout=5).read())
except urllib.error.HTTPError as error:
    print("HTTP", error.code)
"""


def test_imds_honours_a_token_requirement(devcloud: DevCloud, aws_env: dict[str, str]) -> None:
    [optional] = launch("#!/bin/sh\nsleep 1000\n")
    [required] = launch("#!/bin/sh\nsleep 1000\n", MetadataOptions={"HttpTokens": "required"})
    wait_for(lambda: {optional, required} <= set(devcloud.vms()), what="the VMs")
    assert in_vm(devcloud, optional, IMDS_V1).strip() == repr(optional.encode())
    assert in_vm(devcloud, required, IMDS_V1).strip() == "HTTP 401"
    assert imds(devcloud, required, "instance-id") == required  # with a token it answers
