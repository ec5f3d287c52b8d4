"""``PipesMeadowClient``: an asset whose script runs on Meadow and reports through Pipes."""

import sys
from pathlib import Path

from dagster import DagsterEventType, DagsterInstance, materialize

from meadow_core import LocalHost

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

import pipes_asset  # noqa: E402
from meadow_dagster import PipesMeadowClient  # noqa: E402


def test_pipes_asset_materializes_with_the_remote_reports(
    instance: DagsterInstance, host: LocalHost
) -> None:
    result = materialize(
        [pipes_asset.crunched], instance=instance, resources={"pipes": PipesMeadowClient(host)}
    )
    assert result.success
    [materialization] = result.asset_materializations_for_node("crunched")
    assert materialization.metadata["total"].value == sum(range(1000))
    assert materialization.metadata["rows"].value == 1000
    [check] = result.get_asset_check_evaluations()
    assert check.passed and check.check_name == "total_is_positive"
    logs = [e.user_message for e in instance.all_logs(result.run_id) if e.dagster_event is None]
    assert any(m.startswith("crunching 1000 rows in pid") for m in logs), logs
    assert "a plain print from the script" in logs  # stdout reaches the step log


def test_pipes_script_failure_fails_the_step(
    instance: DagsterInstance, host: LocalHost, tmp_path: Path
) -> None:
    from dagster import AssetExecutionContext, asset

    script = tmp_path / "broken.py"
    script.write_text(
        "from dagster_pipes import open_dagster_pipes\n"
        "with open_dagster_pipes() as pipes:\n"
        "    pipes.log.info('going down')\n"
        "    raise SystemExit(3)\n"
    )

    @asset
    def broken(context: AssetExecutionContext, pipes: PipesMeadowClient) -> None:
        pipes.run(context=context, command=[sys.executable, str(script)])

    result = materialize(
        [broken],
        instance=instance,
        resources={"pipes": PipesMeadowClient(host)},
        raise_on_error=False,
    )
    assert not result.success
    [failure] = [
        e
        for e in instance.all_logs(result.run_id)
        if e.dagster_event_type == DagsterEventType.STEP_FAILURE
    ]
    assert failure.dagster_event is not None
    error = failure.dagster_event.step_failure_data.error
    assert error is not None and "exit code 3" in error.to_string()
    logs = [e.user_message for e in instance.all_logs(result.run_id) if e.dagster_event is None]
    assert "going down" in logs
