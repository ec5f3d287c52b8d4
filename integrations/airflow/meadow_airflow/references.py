"""Results Airflow cannot store in XCom stay in Meadow's store; XCom carries a reference.

The reference is a plain dict (any XCom backend stores it, any downstream task can read
it) that names the Meadow job holding the value and says in words what happened. A
downstream Meadow task resolves references found in its arguments to the real values.
"""

from __future__ import annotations

import json
from typing import Any

from meadow_airflow.credentials import connection_scope
from meadow_airflow.hosts import host_from_spec, host_to_spec
from meadow_core import Host, JobNotFoundError, TaskException, wait_for_job_sync

REFERENCE_KEY = "__meadow_result__"


def xcom_can_store(value: Any) -> bool:
    """True if Airflow's serde can write ``value`` to XCom and read it back.

    The read-back matters: serde writes any dataclass but refuses to rebuild classes
    outside ``[core] allowed_deserialization_classes``, so the downstream task would fail.
    """
    from airflow.sdk.serde import deserialize, serialize

    try:
        json.dumps(serialize(value))
        deserialize(serialize(value))
    except Exception:
        return False
    return True


def make_reference(
    job_id: str,
    host: Host,
    value_type: str,
    aws_conn_id: str | None = None,
) -> dict[str, Any]:
    """The XCom stand-in for a value that stays in Meadow's store. It names the host's
    config and the connection the job ran under (never a secret), so a reader in
    another task finds the same store."""
    return {
        REFERENCE_KEY: job_id,
        "host": host_to_spec(host),
        "aws_conn_id": aws_conn_id,
        "type": value_type,
        "message": (
            f"This task returned a {value_type}, which Airflow cannot store in XCom. The "
            f"value stays in Meadow's store as the result of job {job_id}: a downstream "
            "MeadowOperator or @task.meadow receives the value itself; elsewhere call "
            "meadow_airflow.resolve_meadow_results(value) (it needs the class importable)."
        ),
    }


def is_reference(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get(REFERENCE_KEY), str)


def resolve_meadow_results(value: Any) -> Any:
    """Replace Meadow result references in ``value`` (nested lists, tuples, dicts)."""
    if is_reference(value):
        job_id = value[REFERENCE_KEY]
        # An earlier version's reference kept the region beside the host.
        host = host_from_spec(value["host"], region_name=value.get("region_name"))
        try:
            with connection_scope(host, value.get("aws_conn_id")):
                return wait_for_job_sync(job_id, host)
        except JobNotFoundError:
            raise ValueError(
                f"the {value.get('type')} kept by Meadow job {job_id} is gone: the host "
                "forgets finished jobs after MEADOW_RETENTION_DAYS (default 7); rerun the "
                "upstream task"
            ) from None
        except TaskException as exc:
            raise ValueError(
                f"cannot read the {value.get('type')} kept by Meadow job {job_id}: "
                f"{exc.remote_type}: {exc.remote_message}"
            ) from None
    if type(value) in (list, tuple):
        return type(value)(resolve_meadow_results(v) for v in value)
    if isinstance(value, dict):
        return {k: resolve_meadow_results(v) for k, v in value.items()}
    return value
