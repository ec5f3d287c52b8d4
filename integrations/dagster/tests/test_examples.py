"""The examples run as written (on the test session's isolated Meadow agent)."""

import sys
from pathlib import Path

from dagster import DagsterInstance, execute_job, reconstructable

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

import assets_heavy  # noqa: E402
import per_op_resources  # noqa: E402


def test_heavy_asset_graph(instance: DagsterInstance) -> None:
    with execute_job(reconstructable(assets_heavy.all_assets_job), instance=instance) as result:
        assert result.success
        assert result.output_for_node("report").startswith("user ")
        events = result.get_asset_materialization_events()
    materialized = {e.asset_key.to_user_string() for e in events if e.asset_key is not None}
    assert materialized == {"raw_events", "features", "report"}
    # The materializations are in the instance, as if the assets had run locally.
    assert instance.get_latest_materialization_event(assets_heavy.features.key) is not None


def test_per_op_resources_job(instance: DagsterInstance) -> None:
    with execute_job(reconstructable(per_op_resources.train), instance=instance) as result:
        assert result.success
        assert result.output_for_node("publish") == "mean = 499.5"
