"""The host conformance suite: what every host must do, asserted as a user sees it.

Each scenario runs once per host in ``conftest.HOSTS`` (LocalHost, EC2 on the dev cloud;
Azure and Kubernetes join by adding a fixture). After every scenario the host must hold
nothing beyond the warm pool it keeps on purpose (``HostUnderTest.leftovers``), and the
last scenario waits for the host to wind down by itself and checks nothing at all is left.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import meadow_core as mc
from meadow_core.errors import UnsatisfiableResourcesError
from tests.hosts import scenario_tasks as tasks
from tests.hosts.conftest import REQUIREMENT
from tests.hosts.harness import HostUnderTest, build_deployment, job_ids, wait_for

pytestmark = pytest.mark.timeout(300)

#: How long a host may take to settle after a scenario (release allocations, delete
#: queues, record the job) before what it still holds counts as left behind.
SETTLE_SECONDS = 30.0


@pytest.fixture(autouse=True)
def nothing_left_behind(host_under_test: HostUnderTest) -> Iterator[None]:
    yield
    left = host_under_test.leftovers()
    deadline = time.monotonic() + SETTLE_SECONDS
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = host_under_test.leftovers()
    assert not left, f"{host_under_test.name} left behind: {left}"


def _run(hut: HostUnderTest, function: Any, **kwargs: Any) -> Any:
    kwargs.setdefault("resources", hut.resources)
    return mc.run_function_sync(function, host=hut.host, deployment=hut.deployment, **kwargs)


def _map_kwargs(hut: HostUnderTest, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("resources_per_task", hut.resources)
    kwargs.setdefault("num_concurrent_tasks", 2)
    return {"host": hut.host, "deployment": hut.deployment, **kwargs}


def _marker() -> str:
    return f"mdw{uuid.uuid4().hex[:10]}"


class _Killer(threading.Thread):
    """Kills the process named ``marker`` as soon as it shows up (once)."""

    def __init__(self, hut: HostUnderTest, marker: str) -> None:
        super().__init__(daemon=True)
        self.hut, self.marker = hut, marker
        self.killed = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.hut.start_timeout
        while not self.stop.is_set() and time.monotonic() < deadline:
            if self.hut.kill_task_process(self.marker):
                self.killed.set()
                return
            time.sleep(0.1)


# -- function and command ------------------------------------------------------------------


def test_function_returns_its_value_and_raises_its_exception(
    host_under_test: HostUnderTest,
) -> None:
    hut = host_under_test
    assert _run(hut, tasks.add, args=(2, 3), kwargs={"times": 4}) == 20
    offset = 7  # a closure pickled by value, not importable remotely
    assert _run(hut, lambda x: x + offset, args=(35,)) == 42

    message = f"record {uuid.uuid4().hex} is malformed"
    with pytest.raises(mc.TaskException) as info:
        _run(hut, tasks.raise_value_error, args=(message,))
    assert info.value.remote_type == "ValueError"
    assert info.value.outcome == "failed"
    assert message in str(info.value)
    assert "raise_value_error" in info.value.remote_traceback


def test_command_returns_its_exit_code_and_output(
    host_under_test: HostUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    hut = host_under_test
    caplog.set_level(logging.INFO, logger="meadow")
    tag = uuid.uuid4().hex
    completion = mc.run_command_sync(
        ["sh", "-c", f"echo out {tag}; echo err {tag} >&2; exit 3"],
        host=hut.host,
        resources=hut.resources,
        deployment=hut.deployment,
        check=False,
    )
    assert completion.return_code == 3
    assert f"out {tag}" in completion.log and f"err {tag}" in completion.log
    # The output also streams to the `meadow` logger as it is printed.
    streamed = [r.getMessage() for r in caplog.records if r.name.startswith("meadow")]
    assert any(f"out {tag}" in m for m in streamed), streamed
    with pytest.raises(mc.TaskException) as info:
        mc.run_command_sync(
            ["sh", "-c", "exit 5"],
            host=hut.host,
            resources=hut.resources,
            deployment=hut.deployment,
        )
    assert info.value.completion.return_code == 5  # type: ignore[attr-defined]
    ok = mc.run_command_sync(
        ["true"], host=hut.host, resources=hut.resources, deployment=hut.deployment
    )
    assert ok.return_code == 0


# -- maps ----------------------------------------------------------------------------------


def test_map_returns_results_in_input_order_and_names_failed_tasks(
    host_under_test: HostUnderTest,
) -> None:
    hut = host_under_test
    assert mc.run_map_sync(tasks.square, list(range(6)), **_map_kwargs(hut)) == [
        x * x for x in range(6)
    ]
    with pytest.raises(mc.RunMapTasksFailedException) as info:
        mc.run_map_sync(tasks.fail_on, list(range(5)), **_map_kwargs(hut))
    failed = {t.task_id: t for t in info.value.failed_tasks}
    assert sorted(failed) == [1, 3]
    assert all(t.exception is not None and t.exception[0] == "ValueError" for t in failed.values())
    assert "bad item 3" in failed[3].exception[1]  # type: ignore[index]
    assert [info.value.results[i] for i in (0, 2, 4)] == [0, 200, 400]


def test_as_completed_yields_every_task_once(host_under_test: HostUnderTest) -> None:
    hut = host_under_test
    results = list(mc.run_map_as_completed_sync(tasks.square, list(range(7)), **_map_kwargs(hut)))
    assert sorted(r.task_id for r in results) == list(range(7))
    assert all(r.is_success and r.outcome == "succeeded" for r in results)
    assert {r.task_id: r.result for r in results} == {x: x * x for x in range(7)}


# -- retries -------------------------------------------------------------------------------


def test_a_failed_task_is_retried_and_knows_its_attempt(host_under_test: HostUnderTest) -> None:
    hut = host_under_test
    results = list(
        mc.run_map_as_completed_sync(
            tasks.flaky,
            [(x, x in (1, 2)) for x in range(4)],
            **_map_kwargs(hut, max_num_task_attempts=3),
        )
    )
    by_task = {r.task_id: r for r in results}
    assert len(by_task) == len(results) == 4, "a task was reported twice"
    assert all(r.is_success for r in results), [r.exception for r in results]
    assert {i: r.attempt for i, r in by_task.items()} == {0: 1, 1: 2, 2: 2, 3: 1}
    # What current_task() says inside the task matches what the caller is told.
    assert {i: r.result for i, r in by_task.items()} == {
        0: (0, 1),
        1: (10, 2),
        2: (20, 2),
        3: (30, 1),
    }

    with pytest.raises(mc.RunMapTasksFailedException) as info:
        mc.run_map_sync(tasks.flaky, [(7, True)], **_map_kwargs(hut, max_num_task_attempts=1))
    (failed,) = info.value.failed_tasks
    assert (failed.attempt, failed.outcome) == (1, "failed")
    assert "transient failure of item 7" in failed.exception[1]  # type: ignore[index]


def test_retry_with_more_memory(host_under_test: HostUnderTest) -> None:
    hut = host_under_test
    asked = 0.15
    assert asked * 3 <= hut.max_task_memory_gb
    resources = mc.Resources(
        logical_cpu=1, memory_gb=asked, max_eviction_rate=hut.resources.max_eviction_rate
    )
    (result,) = mc.run_map_as_completed_sync(
        tasks.allocate,
        [(250, 1.0)],
        **_map_kwargs(
            hut,
            resources_per_task=resources,
            max_num_task_attempts=4,
            retry_with_more_memory=True,
        ),
    )
    assert result.is_success, result.exception
    assert result.result == 250
    assert result.attempt in (2, 3)
    assert result.max_memory_used_gb is not None and result.max_memory_used_gb > 0.2

    with pytest.raises(mc.RunMapTasksFailedException) as info:
        mc.run_map_sync(
            tasks.allocate,
            [(250, 1.0)],
            **_map_kwargs(hut, resources_per_task=resources, max_num_task_attempts=1),
        )
    (failed,) = info.value.failed_tasks
    assert failed.exception is not None and failed.exception[0] == "meadow.MemoryLimitExceeded"


# -- a worker killed, timeouts, cancel -----------------------------------------------------


def test_a_killed_worker_costs_a_retry_or_reports_a_crash(host_under_test: HostUnderTest) -> None:
    hut = host_under_test
    if not hut.can_kill_task_processes:
        pytest.skip(f"{hut.name} does not let a test kill a task's process")
    victim, bystander = _marker(), _marker()
    killer = _Killer(hut, victim)
    killer.start()
    try:
        results = list(
            mc.run_map_as_completed_sync(
                tasks.marked_sleep,
                [(victim, 3.0), (bystander, 0.5)],
                **_map_kwargs(hut, max_num_task_attempts=2),
            )
        )
    finally:
        killer.stop.set()
    assert killer.killed.is_set(), "the victim's process was never seen"
    by_task = {r.task_id: r for r in results}
    assert all(r.is_success for r in results), [r.exception for r in results]
    assert (by_task[0].attempt, by_task[1].attempt) == (2, 1)
    assert by_task[0].result == (victim, 2)

    victim = _marker()
    killer = _Killer(hut, victim)
    killer.start()
    try:
        with pytest.raises(mc.TaskException) as info:
            _run(hut, tasks.marked_sleep, args=((victim, 30.0),))
    finally:
        killer.stop.set()
    assert killer.killed.is_set()
    assert info.value.outcome == "crashed"
    assert info.value.remote_type == "meadow.WorkerCrashed"
    assert "SIGKILL" in info.value.remote_message


def test_a_timeout_kills_the_task(host_under_test: HostUnderTest) -> None:
    hut = host_under_test
    marker = _marker()
    started = time.monotonic()
    with pytest.raises(mc.TaskException) as info:
        _run(hut, tasks.marked_sleep, args=((marker, 120.0),), timeout_seconds=2)
    assert info.value.remote_type == "meadow.TaskTimeout"
    assert info.value.outcome == "timeout"
    assert time.monotonic() - started < hut.start_timeout + 30
    wait_for(lambda: not hut.task_process_exists(marker), 15, "the timed-out task to die")

    with pytest.raises(mc.RunMapTasksFailedException) as map_info:
        mc.run_map_sync(tasks.marked_sleep, [(marker, 60.0)], **_map_kwargs(hut, timeout_seconds=1))
    (failed,) = map_info.value.failed_tasks
    assert failed.outcome == "timeout"
    assert failed.exception is not None and failed.exception[0] == "meadow.TaskTimeout"


def test_cancel_stops_a_running_map(host_under_test: HostUnderTest) -> None:
    hut = host_under_test
    markers = [_marker(), _marker()]
    handle = mc.run_map_sync(
        tasks.marked_sleep,
        [(m, 120.0) for m in markers],
        **_map_kwargs(hut),
        wait_for_result=False,
    )
    # One running is enough (a one-CPU machine runs them one at a time): the other is
    # then running or queued, and both must end up cancelled.
    wait_for(
        lambda: any(hut.task_process_exists(m) for m in markers),
        hut.start_timeout,
        "a task to run",
    )
    started = time.monotonic()
    assert handle.cancel_sync()
    # Waiting on the cancelled job ends at once, every task reported cancelled.
    with pytest.raises(mc.RunMapTasksFailedException) as info:
        handle.wait_sync()
    assert time.monotonic() - started < 30
    assert sorted(t.task_id for t in info.value.failed_tasks) == [0, 1]
    assert {t.outcome for t in info.value.failed_tasks} == {"cancelled"}
    assert mc.get_job_sync(handle.job_id, host=hut.host).state == "cancelled"
    wait_for(
        lambda: not any(hut.task_process_exists(m) for m in markers),
        30,
        "the cancelled tasks' processes to end",
    )


# -- logs ----------------------------------------------------------------------------------


def test_logs_reach_the_caller(host_under_test: HostUnderTest) -> None:
    hut = host_under_test
    tag = uuid.uuid4().hex
    job_id = f"logs-{tag}"
    received: list[logging.LogRecord] = []
    with mc.route_logs(job_id, received.append):
        assert _run(hut, tasks.chatty, args=(tag,), job_id=job_id) == tag
    lines = [r.getMessage() for r in received]
    for expected in (f"stdout line {tag}", f"stderr line {tag}", f"fd line {tag}"):
        assert any(expected in line for line in lines), f"{expected!r} not in {lines}"
        assert expected in mc.read_task_log_sync(job_id, 0, hut.host)
    assert all(getattr(r, "meadow_job_id", None) == job_id for r in received)

    map_id = f"map-logs-{tag}"
    received.clear()
    with mc.route_logs(map_id, received.append):
        mc.run_map_sync(
            tasks.chatty_item, [(tag, i) for i in range(3)], **_map_kwargs(hut), job_id=map_id
        )
    by_task = {
        r.meadow_task_id: r.getMessage()  # type: ignore[attr-defined]
        for r in received
        if f"of {tag}" in r.getMessage()
    }
    assert sorted(by_task) == [0, 1, 2]
    assert all(f"item {i} of {tag}" in line for i, line in by_task.items())


# -- reattach ------------------------------------------------------------------------------


def test_a_deterministic_job_id_reattaches_instead_of_running_again(
    host_under_test: HostUnderTest,
) -> None:
    hut = host_under_test
    job_id = mc.deterministic_job_id("conformance", uuid.uuid4().hex, 1)
    handle = _run(hut, tasks.once_token, args=(2.0,), job_id=job_id, wait_for_result=False)
    # A restarted orchestrator submits the same job while it runs, then after it ended.
    while_running = _run(hut, tasks.once_token, args=(2.0,), job_id=job_id)
    after = _run(hut, tasks.once_token, args=(2.0,), job_id=job_id)
    assert while_running == after == handle.wait_sync()
    assert mc.wait_for_job_sync(job_id, host=hut.host) == after
    record = mc.get_job_sync(job_id, host=hut.host)
    assert (record.state, record.num_tasks, record.num_done) == ("succeeded", 1, 1)
    assert sorted(job_ids(hut.host)).count(job_id) == 1


# -- large payloads ------------------------------------------------------------------------


def test_large_arguments_and_results_round_trip(host_under_test: HostUnderTest) -> None:
    hut = host_under_test
    data = os.urandom(3 * 2**20 + 17)
    digest, reversed_data = _run(hut, tasks.digest_and_reverse, args=(data,))
    assert digest == hashlib.sha256(data).hexdigest()
    assert reversed_data == data[::-1]

    items = [os.urandom(2**20 + i) for i in range(3)]
    results = mc.run_map_sync(tasks.digest_and_reverse, items, **_map_kwargs(hut))
    assert [d for d, _ in results] == [hashlib.sha256(item).hexdigest() for item in items]
    assert [r for _, r in results] == [item[::-1] for item in items]


# -- deployments ---------------------------------------------------------------------------


def test_a_requirements_file_deployment(host_under_test: HostUnderTest, tmp_path: Path) -> None:
    hut = host_under_test
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"{REQUIREMENT}\n")
    version, prefix = mc.run_function_sync(
        tasks.installed_version,
        host=hut.host,
        resources=hut.resources,
        deployment=build_deployment(requirements),
        args=("six",),
    )
    assert version == REQUIREMENT.split("==")[1]
    assert prefix != sys.prefix


# -- bad input -----------------------------------------------------------------------------


def test_bad_input_fails_before_anything_launches(host_under_test: HostUnderTest) -> None:
    hut = host_under_test
    jobs_before, launched_before = job_ids(hut.host), hut.launched()
    lock = threading.Lock()

    def uses_a_lock() -> bool:
        with lock:
            return True

    with pytest.raises(mc.SerializationError):
        _run(hut, uses_a_lock)
    with pytest.raises(mc.SerializationError, match="argument"):
        _run(hut, tasks.square, args=(threading.Lock(),))
    with pytest.raises(mc.SerializationError, match="argument 1"):
        mc.run_map_sync(tasks.square, [1, threading.Lock()], **_map_kwargs(hut))  # type: ignore[arg-type]
    with pytest.raises(UnsatisfiableResourcesError):
        _run(hut, tasks.square, args=(2,), resources=mc.Resources(logical_cpu=10_000))
    with pytest.raises(mc.InvalidRequestError, match="job_id"):
        _run(hut, tasks.square, args=(2,), job_id="has space")
    with pytest.raises(mc.InvalidRequestError, match="max_num_task_attempts"):
        mc.run_map_sync(tasks.square, [1], **_map_kwargs(hut, max_num_task_attempts=0))
    assert job_ids(hut.host) == jobs_before, "a job was created for a rejected request"
    assert hut.launched() <= launched_before, "something was launched for a rejected request"


# -- nothing left behind -------------------------------------------------------------------


def test_nothing_is_left_once_the_host_winds_down(host_under_test: HostUnderTest) -> None:
    """Last in the module: with no work, the host ends its warm pool by itself."""
    host_under_test.close()
