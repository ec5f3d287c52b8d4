"""An asset graph where one heavy asset asks for a bigger machine.

Every asset runs on Meadow (``meadow_executor``); ``features`` asks for 2 CPUs and
3 GB through the ``meadow/resources`` op tag, the others take the executor default.
Outputs travel through ``meadow_io_manager``, Meadow's object store.

    dagster dev -f integrations/dagster/examples/assets_heavy.py
"""

import json

from dagster import Definitions, JobDefinition, asset, define_asset_job
from meadow_dagster import RESOURCES_TAG, meadow_executor, meadow_io_manager


@asset
def raw_events() -> list[dict[str, float]]:
    return [{"user": float(i % 7), "value": float(i)} for i in range(10_000)]


@asset(op_tags={RESOURCES_TAG: json.dumps({"logical_cpu": 2, "memory_gb": 3})})
def features(raw_events: list[dict[str, float]]) -> dict[float, float]:
    """The heavy step: in the cloud this lands on a machine with 2 CPUs and 3 GB."""
    totals: dict[float, float] = {}
    for event in raw_events:
        totals[event["user"]] = totals.get(event["user"], 0.0) + event["value"]
    return totals


@asset
def report(features: dict[float, float]) -> str:
    best = max(features, key=lambda user: features[user])
    return f"user {best:g} leads with {features[best]:g}"


defs = Definitions(
    assets=[raw_events, features, report],
    jobs=[define_asset_job("all_assets")],
    executor=meadow_executor,
    resources={"io_manager": meadow_io_manager},
)


def all_assets_job() -> JobDefinition:
    """For ``execute_job(reconstructable(all_assets_job), ...)`` from Python."""
    return defs.resolve_job_def("all_assets")
