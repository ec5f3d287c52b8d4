"""AWS test fixtures: a freshly reset moto per test (`aws_env`) and the VM guard. The
session's moto server and dev cloud live in ``tests/conftest.py``, shared with the host
conformance suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from meadow_devcloud.ec2.moto import DEFAULT_REGION, MotoServer

from tests.devcloud_guard import require_vm_host


@pytest.fixture
def aws_env(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Point boto3 (via its normal chain) at a freshly reset moto."""
    moto_server.reset()
    env = {**moto_server.env(DEFAULT_REGION), "MEADOW_AWS_CATALOG": "snapshot"}
    for name in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_CONFIG_FILE",
        "AWS_SHARED_CREDENTIALS_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    yield env


@pytest.fixture
def vm_host() -> None:
    require_vm_host()
