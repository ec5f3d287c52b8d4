"""Meadow installed on the session's dev cloud, for one test module at a time."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from meadow_devcloud.ec2 import DevCloud

from meadow_core.clouds.aws import admin, session


@contextlib.contextmanager
def meadow_installed(devcloud: DevCloud, moto_server: Any, region: str) -> Iterator[None]:
    """Reset moto (the previous module's VMs go with it), point boto3 at the dev cloud
    through the environment, install Meadow in ``region``; the environment and the
    session's cached clients are restored afterwards."""
    moto_server.reset()
    with pytest.MonkeyPatch.context() as patch:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE"):
            patch.delenv(name, raising=False)
        for name, value in {**devcloud.env, "MEADOW_AWS_CATALOG": "snapshot"}.items():
            patch.setenv(name, value)
        session.reset()
        admin.install(region)
        try:
            yield
        finally:
            session.reset()
