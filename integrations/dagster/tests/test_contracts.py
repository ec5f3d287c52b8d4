"""Contracts Dagster's own executors keep, checked against ``meadow_executor``.

Dagster 1.13's tests of its multiprocess and step-delegating executors
(``engine_tests/``, ``test_retries.py``, ``test_interrupt.py``) are the specification:
op selection, interruption, tag concurrency limits, the checks before a run, and
events that reach the run while a step still runs. Each test runs a real job on the
session's isolated Meadow agent and looks at what a Dagster user would see.
"""

import itertools
import os
import re
import signal
import threading
import time
from pathlib import Path
from typing import Any

import dagster_jobs as jobs
import pytest
from dagster import (
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    DagsterRunStatus,
    execute_job,
    reconstructable,
)
from dagster._core.errors import DagsterUnmetExecutorRequirementsError
from run_records import executor_config, run_events, run_logs


def _wait_for(path: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists(), f"{path.name} never appeared"


def _reset(work_dir: Path, *names: str) -> None:
    for name in names:
        for suffix in ("started", "go"):
            (work_dir / f"{name}-{suffix}").unlink(missing_ok=True)


# -- op selection --------------------------------------------------------------------------


def test_op_selection_runs_only_the_subset_with_its_own_config(
    instance: DagsterInstance, work_dir: Path
) -> None:
    config = executor_config(work_dir)
    config["ops"] = {"scaled": {"config": {"factor": 3}}}  # nothing for "labelled"
    with execute_job(
        reconstructable(jobs.selectable_job),
        instance=instance,
        run_config=config,
        op_selection=["scaled"],
    ) as result:
        assert result.success
        assert result.output_for_node("scaled") == 21
        run_id = result.run_id
    steps = {e.step_key for e in run_events(instance, run_id, DagsterEventType.STEP_SUCCESS)}
    assert steps == {"scaled"}


def test_asset_selection_runs_only_the_selected_assets_with_their_config(
    instance: DagsterInstance, work_dir: Path
) -> None:
    config = executor_config(work_dir)
    config["ops"] = {"base_number": {"config": {"base": 5}}}  # nothing for shifted_number
    with execute_job(
        reconstructable(jobs.number_assets_job),
        instance=instance,
        run_config=config,
        asset_selection=[AssetKey("base_number")],
    ) as result:
        assert result.success
        run_id = result.run_id
    materialized = run_events(instance, run_id, DagsterEventType.ASSET_MATERIALIZATION)
    assert [e.dagster_event.asset_key for e in materialized if e.dagster_event] == [
        AssetKey("base_number")
    ]


# -- dynamic outputs -----------------------------------------------------------------------


def test_dynamic_outputs_fan_out_and_collect_on_meadow(
    instance: DagsterInstance, work_dir: Path
) -> None:
    with execute_job(
        reconstructable(jobs.dynamic_job), instance=instance, run_config=executor_config(work_dir)
    ) as result:
        assert result.success
        assert result.output_for_node("add_up") == 1 + 4 + 9
        run_id = result.run_id
    steps = {e.step_key for e in run_events(instance, run_id, DagsterEventType.STEP_SUCCESS)}
    assert steps == {"fan_out", "square[n1]", "square[n2]", "square[n3]", "add_up"}


# -- interruption --------------------------------------------------------------------------


def test_interrupted_run_fails_every_step_in_flight(
    instance: DagsterInstance, work_dir: Path
) -> None:
    _reset(work_dir, "waits_a", "waits_b")

    def interrupt_when_both_run() -> None:
        _wait_for(work_dir / "waits_a-started")
        _wait_for(work_dir / "waits_b-started")
        os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C or the run worker's SIGTERM does

    thread = threading.Thread(target=interrupt_when_both_run)
    thread.start()
    try:
        with execute_job(
            reconstructable(jobs.two_waiting_job),
            instance=instance,
            run_config=executor_config(work_dir),
            raise_on_error=False,
        ) as result:
            assert not result.success
            run_id = result.run_id
    finally:
        thread.join(timeout=90)
        for name in ("waits_a", "waits_b"):
            (work_dir / f"{name}-go").write_text("")
    failures = run_events(instance, run_id, DagsterEventType.STEP_FAILURE)
    assert sorted(str(f.step_key) for f in failures) == ["waits_a", "waits_b"]
    for failure in failures:
        assert failure.dagster_event is not None
        error = failure.dagster_event.step_failure_data.error
        assert error is not None and error.cls_name == "DagsterExecutionInterruptedError"
    # No step is left "started" in the run's step stats.
    stats = {s.step_key: s.status for s in instance.get_run_step_stats(run_id)}
    assert set(stats) == {"waits_a", "waits_b"}
    assert all(s is not None and s.value == "FAILURE" for s in stats.values()), stats
    run = instance.get_run_by_id(run_id)
    assert run is not None and run.status in (DagsterRunStatus.CANCELED, DagsterRunStatus.FAILURE)


# -- tag concurrency limits ----------------------------------------------------------------


def test_tag_concurrency_limits_keep_tagged_steps_apart(
    instance: DagsterInstance, work_dir: Path
) -> None:
    for name in ("load_a", "load_b", "load_c"):
        (work_dir / f"interval-{name}").unlink(missing_ok=True)
    limits = [{"key": "database", "value": "warehouse", "limit": 1}]
    with execute_job(
        reconstructable(jobs.tagged_job),
        instance=instance,
        run_config=executor_config(work_dir, tag_concurrency_limits=limits),
    ) as result:
        assert result.success
    intervals = sorted(
        tuple(float(x) for x in (work_dir / f"interval-{name}").read_text().split())
        for name in ("load_a", "load_b", "load_c")
    )
    for (_, end), (start, _) in itertools.pairwise(intervals):
        assert start >= end, f"two steps tagged database=warehouse overlapped: {intervals}"


def test_priority_tags_order_steps_when_one_runs_at_a_time(
    instance: DagsterInstance, work_dir: Path
) -> None:
    names = ("low_priority", "default_priority", "high_priority")
    for name in names:
        (work_dir / f"interval-{name}").unlink(missing_ok=True)
    with execute_job(
        reconstructable(jobs.priority_job),
        instance=instance,
        run_config=executor_config(work_dir, max_concurrent=1),
    ) as result:
        assert result.success
    starts = {n: float((work_dir / f"interval-{n}").read_text().split()[0]) for n in names}
    assert sorted(names, key=starts.__getitem__) == [
        "high_priority",
        "default_priority",
        "low_priority",
    ]


def test_pool_limits_of_the_instance_hold_for_steps_on_meadow(
    instance: DagsterInstance, work_dir: Path
) -> None:
    names = ("pooled_a", "pooled_b")
    for name in names:
        (work_dir / f"interval-{name}").unlink(missing_ok=True)
    instance.event_log_storage.set_concurrency_slots("meadow_test_pool", 1)
    with execute_job(
        reconstructable(jobs.pooled_job), instance=instance, run_config=executor_config(work_dir)
    ) as result:
        assert result.success
    intervals = sorted(
        tuple(float(x) for x in (work_dir / f"interval-{n}").read_text().split()) for n in names
    )
    assert intervals[1][0] >= intervals[0][1], f"pooled steps overlapped: {intervals}"
    # Every slot the run claimed is free again.
    info = instance.event_log_storage.get_concurrency_info("meadow_test_pool")
    assert info.active_slot_count == 0


# -- retries -------------------------------------------------------------------------------


def test_disabled_retries_fail_a_step_its_retry_policy_would_retry(
    instance: DagsterInstance, work_dir: Path
) -> None:
    marker = work_dir / "flaky-attempts"  # flaky_step counts its attempts here
    marker.unlink(missing_ok=True)
    try:
        with execute_job(
            reconstructable(jobs.flaky_job),
            instance=instance,
            run_config=executor_config(work_dir, retries={"disabled": {}}),
            raise_on_error=False,
        ) as result:
            assert not result.success
            run_id = result.run_id
    finally:
        marker.unlink(missing_ok=True)
    assert not run_events(instance, run_id, DagsterEventType.STEP_UP_FOR_RETRY)
    [failure] = run_events(instance, run_id, DagsterEventType.STEP_FAILURE)
    assert failure.step_key == "flaky_step"


# -- checks before the run -----------------------------------------------------------------


def test_mem_io_manager_is_rejected_before_the_run(
    instance: DagsterInstance, work_dir: Path
) -> None:
    with pytest.raises(DagsterUnmetExecutorRequirementsError, match="persistent IO manager"):
        execute_job(
            reconstructable(jobs.mem_io_job),
            instance=instance,
            run_config=executor_config(work_dir),
        )
    assert instance.get_runs() == []  # no run was created, so nothing was launched


def test_ephemeral_instance_fails_with_dagsters_requirements_error(work_dir: Path) -> None:
    with (
        DagsterInstance.ephemeral() as ephemeral,
        execute_job(
            reconstructable(jobs.pipeline_job),
            instance=ephemeral,
            run_config=executor_config(work_dir),
            raise_on_error=False,
        ) as result,
    ):
        assert not result.success
        [failure] = run_events(ephemeral, result.run_id, DagsterEventType.RUN_FAILURE)
        assert not run_events(ephemeral, result.run_id, DagsterEventType.STEP_START)
    assert failure.dagster_event is not None
    error = getattr(failure.dagster_event.event_specific_data, "error", None)
    assert error is not None
    assert error.cls_name == "DagsterUnmetExecutorRequirementsError"
    assert "DAGSTER_HOME" in error.to_string()


# -- events while the step runs ------------------------------------------------------------


def test_events_reach_the_run_while_the_step_runs(
    instance: DagsterInstance, work_dir: Path
) -> None:
    _reset(work_dir, "logs_then_waits")
    outcome: dict[str, Any] = {}

    def run() -> None:
        with execute_job(
            reconstructable(jobs.live_job), instance=instance, run_config=executor_config(work_dir)
        ) as result:
            outcome["success"] = result.success

    thread = threading.Thread(target=run)
    thread.start()
    try:
        _wait_for(work_dir / "logs_then_waits-started")
        [run] = instance.get_runs()
        deadline = time.monotonic() + 30
        seen: list[str] = []
        while time.monotonic() < deadline:
            seen = [e.user_message for e in run_logs(instance, run.run_id)]
            if "halfway through the step" in seen:
                break
            time.sleep(0.1)
        kinds = {e.dagster_event_type for e in run_logs(instance, run.run_id)}
        printed = _wait_for_compute_log(instance, run.run_id, b"printed by the step")
    finally:
        (work_dir / "logs_then_waits-go").write_text("")
        thread.join(timeout=60)
    assert "halfway through the step" in seen, "context.log did not arrive while the step ran"
    assert DagsterEventType.STEP_START in kinds
    assert DagsterEventType.STEP_SUCCESS not in kinds  # it was still running
    assert printed, "the step's output did not reach the compute log while it ran"
    assert outcome["success"] is True
    # Each event is in the run once, not once live and again when the step ended.
    logs = run_logs(instance, run.run_id)
    assert [e.user_message for e in logs].count("halfway through the step") == 1
    assert len(run_events(instance, run.run_id, DagsterEventType.STEP_START)) == 1


def _wait_for_compute_log(
    instance: DagsterInstance, run_id: str, text: bytes, seconds: float = 15
) -> bool:
    """Whether ``text`` shows in the run's captured stdout within ``seconds``."""
    manager = instance.compute_log_manager
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for entry in run_events(instance, run_id, DagsterEventType.LOGS_CAPTURED):
            assert entry.dagster_event is not None
            file_key = entry.dagster_event.logs_captured_data.file_key
            data = manager.get_log_data(manager.build_log_key_for_run(run_id, file_key))
            if text in (data.stdout or b""):
                return True
        time.sleep(0.1)
    return False


def test_a_crashed_attempt_keeps_what_it_logged(instance: DagsterInstance, work_dir: Path) -> None:
    (work_dir / "logged-then-crashed").unlink(missing_ok=True)
    with execute_job(
        reconstructable(jobs.logs_then_crashes_job),
        instance=instance,
        run_config=executor_config(work_dir),
    ) as result:
        assert result.success
        run_id = result.run_id
    messages = [e.user_message for e in run_logs(instance, run_id)]
    assert "last words before the crash" in messages
    # The crashed attempt's start is in the run, and the retry's, as with Dagster's
    # own executors (a retry starts with STEP_RESTARTED).
    assert len(run_events(instance, run_id, DagsterEventType.STEP_START)) == 1
    assert len(run_events(instance, run_id, DagsterEventType.STEP_RESTARTED)) == 1
    assert len(run_events(instance, run_id, DagsterEventType.STEP_UP_FOR_RETRY)) == 1


def test_step_output_reaches_dagsters_compute_logs(
    instance: DagsterInstance, work_dir: Path
) -> None:
    with execute_job(
        reconstructable(jobs.pipeline_job), instance=instance, run_config=executor_config(work_dir)
    ) as result:
        assert result.success
        run_id = result.run_id
    captured = run_events(instance, run_id, DagsterEventType.LOGS_CAPTURED)
    texts = []
    for entry in captured:
        assert entry.dagster_event is not None
        file_key = entry.dagster_event.logs_captured_data.file_key
        manager = instance.compute_log_manager
        log_data = manager.get_log_data(manager.build_log_key_for_run(run_id, file_key))
        texts.append((log_data.stdout or b"").decode())
    assert any("doubling on the remote side" in t for t in texts), texts


def test_a_huge_event_lands_once_and_keeps_the_compute_log_clean(
    instance: DagsterInstance, work_dir: Path
) -> None:
    with execute_job(
        reconstructable(jobs.huge_line_job), instance=instance, run_config=executor_config(work_dir)
    ) as result:
        assert result.success
        run_id = result.run_id
    huge = [e for e in run_logs(instance, run_id) if e.user_message.startswith("huge:")]
    assert len(huge) == 1 and len(huge[0].user_message) == len("huge:") + 2 * 1024 * 1024
    [captured] = run_events(instance, run_id, DagsterEventType.LOGS_CAPTURED)
    assert captured.dagster_event is not None
    file_key = captured.dagster_event.logs_captured_data.file_key
    manager = instance.compute_log_manager
    stdout = manager.get_log_data(manager.build_log_key_for_run(run_id, file_key)).stdout or b""
    assert b"after the huge line" in stdout
    # Dagster's console lines (the message is hex) are there, as in a local compute log,
    # but no piece of the base64 event line (Meadow splits lines over 1 MiB).
    pieces = [
        line
        for line in stdout.splitlines()
        if re.fullmatch(rb"[A-Za-z0-9+/=]{1000,}", line) and re.search(rb"[A-Z+/]", line)
    ]
    assert not pieces, f"{len(pieces)} pieces of the event line reached the step's stdout"


def test_context_instance_knows_the_run(instance: DagsterInstance, work_dir: Path) -> None:
    with execute_job(
        reconstructable(jobs.instance_job),
        instance=instance,
        run_config=executor_config(work_dir),
        tags={"team": "analytics"},
    ) as result:
        assert result.success
        seen = result.output_for_node("asks_the_instance")
    assert seen["found"] is True
    assert seen["tags"]["team"] == "analytics"
