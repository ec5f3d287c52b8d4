"""``MeadowJobTrigger``: wait in the triggerer for a Meadow job, with async calls only.

It imports nothing but ``meadow_core`` and Airflow's SDK, so the triggerer can load it
without the DAG's code. For a host that takes credentials it reads the connection
``aws_conn_id`` names itself (only the id travels in its kwargs) and waits under them.
It does not hand the result over: the event says the job ended, and
``MeadowOperator.execute_complete`` reads the value and the log from Meadow's store on
the worker, where the user's classes can be unpickled.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from meadow_airflow.credentials import credentials_async
from meadow_airflow.hosts import host_from_spec
from meadow_core import Host, JobNotFoundError, JobState, cancel_job, wait_for_job


class MeadowJobTrigger(BaseTrigger):
    """Fires once the Meadow job ``job_id`` on the host described by ``host`` has ended."""

    def __init__(
        self,
        job_id: str,
        host: dict[str, Any],
        aws_conn_id: str | None = None,
        region_name: str | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.job_id = job_id
        self.host = host
        self.aws_conn_id = aws_conn_id  # the id only: the trigger reads the connection
        #: Only in triggers an earlier version serialized; now a host setting.
        self.region_name = region_name

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "job_id": self.job_id,
                "host": self.host,
                "aws_conn_id": self.aws_conn_id,
            },
        )

    async def _host(self) -> tuple[Host, object | None]:
        """The host, and the credentials to use with it (``None``: the SDK's chain)."""
        host = host_from_spec(self.host, region_name=self.region_name)
        return host, await credentials_async(host, self.aws_conn_id)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Wait with ``wait_for_job``, which never cancels the job if the triggerer stops."""
        event: dict[str, Any] = {"job_id": self.job_id, "status": "done"}
        try:
            # Nothing is unpickled here: the value is read on the worker, where the user's
            # classes can be imported.
            host, credentials = await self._host()
            with host.credentials(credentials):
                record = await wait_for_job(self.job_id, host, fetch_result=False)
            if record.state != JobState.SUCCEEDED:
                event["status"] = "failed"
        except JobNotFoundError as exc:
            event = {"job_id": self.job_id, "status": "error", "message": str(exc)}
        except Exception as exc:
            event = {
                "job_id": self.job_id,
                "status": "error",
                "message": f"waiting for Meadow job {self.job_id} failed: {exc!r}",
            }
        yield TriggerEvent(event)  # type: ignore[no-untyped-call]

    async def on_kill(self) -> None:
        """A user killed the deferred task (mark failed/success, clear): cancel the job."""
        host, credentials = await self._host()
        with contextlib.suppress(JobNotFoundError), host.credentials(credentials):
            await cancel_job(self.job_id, host)
