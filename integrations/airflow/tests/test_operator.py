"""MeadowOperator and @task.meadow under ``dag.test()``, as an Airflow user sees them."""

from __future__ import annotations

from conftest import load_dag, run_dag


def test_classic_decorator_command_and_xcom_to_plain_task() -> None:
    run = run_dag(load_dag("meadow_basic"))
    assert run.state == "success", run.states
    assert run.xcom[("classic", -1)] == 5  # 2 + templated "{{ params.b }}"
    assert run.xcom[("double", -1)] == {"doubled": 10}
    assert run.xcom[("command", -1)] == "last line"
    assert run.xcom[("plain", -1)] == "10|last line"
    # Remote output is in each task's own log, while it ran.
    assert "[meadow] adding 2 and 3 on pid" in run.task_log("classic")
    assert "[meadow] doubling 5 in the remote worker" in run.task_log("double")
    assert "[meadow] hello from meadow_basic" in run.task_log("command")


def test_deferrable_mode() -> None:
    run = run_dag(load_dag("meadow_deferrable"))
    assert run.states[("classic", -1)] == "success"
    assert run.xcom[("classic", -1)] == 49
    assert run.xcom[("plain", -1)] == 50
    classic_log = run.task_log("classic")
    assert "running trigger in line" in classic_log  # it really deferred
    assert "[meadow] squaring 7 after a nap" in classic_log
    # A remote failure while deferred fails the task with the remote traceback.
    assert run.states[("fails", -1)] == "failed"
    fails_log = run.task_log("fails")
    assert "KeyError" in fails_log and "missing while deferred" in fails_log
    assert "raise KeyError" in fails_log


def test_dynamic_task_mapping() -> None:
    run = run_dag(load_dag("meadow_mapped"))
    assert run.state == "success", run.states
    assert [run.xcom[("square", i)] for i in range(4)] == [1, 4, 9, 16]
    assert run.xcom[("total", -1)] == 30
    assert [run.xcom[("cube", i)] for i in range(3)] == [1, 8, 27]
    assert run.xcom[("total_cubes", -1)] == 36
    assert "[meadow] squaring 3" in run.log


def test_value_xcom_cannot_hold_stays_in_meadow() -> None:
    run = run_dag(load_dag("meadow_values"))
    assert run.states[("make_point", -1)] == "success"
    reference = run.xcom[("make_point", -1)]
    assert reference["type"] == "Point"
    assert "Airflow cannot store in XCom" in reference["message"]
    assert "Airflow cannot store in XCom" in run.task_log("make_point")
    # A Meadow task downstream receives the Point itself.
    assert run.xcom[("norm2", -1)] == 25
    assert "[meadow] got a Point with x=3" in run.task_log("norm2")
    # A plain task downstream receives the reference and its explanation.
    assert "MeadowOperator or @task.meadow receives the value" in run.xcom[("plain_sees", -1)]
    # A value that cannot even be pickled fails its task and says why.
    assert run.states[("make_lock", -1)] == "failed"
    assert "lock" in run.task_log("make_lock").lower()
