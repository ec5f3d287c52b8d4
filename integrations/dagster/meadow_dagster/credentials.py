"""``MeadowCredentials``: a Meadow host's credentials as a Dagster resource.

Dagster users keep secrets in resources (values from ``EnvVar``), not in executor
config. ``meadow_executor`` looks this resource up by key (``credentials_resource``,
default ``meadow_credentials``) and builds it in the orchestrating process only: no op
requires it, so Dagster never initializes it on a step's machine, where its environment
variables would not exist (the machine has its own credentials).
"""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import Field


class MeadowCredentials(ConfigurableResource["MeadowCredentials"]):
    """Credentials handed to the Meadow host's own credentials hook.

    For ``ec2`` the keys are ``access_key_id``, ``secret_access_key``,
    ``session_token``, ``region_name``, ``endpoint_url`` and ``profile_name``; values
    may be ``EnvVar("NAME")``.
    """

    values: dict[str, str] = Field(
        default_factory=dict,
        description="Credentials for the host's hook (keys depend on the host type).",
    )

    def for_host(self) -> object:
        """What the host's hook receives: the values. A subclass may return what else
        the hook takes instead (for ``ec2``, a ``boto3.Session``)."""
        return dict(self.values)
