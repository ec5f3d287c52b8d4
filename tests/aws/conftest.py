"""AWS test fixtures: one real moto server per session (reset between tests), the dev cloud."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from meadow_devcloud.ec2 import DevCloud
from meadow_devcloud.ec2.moto import DEFAULT_REGION, MotoServer
from meadow_devcloud.vm import netns

from tests.devcloud_guard import require_vm_host


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """`python -m moto.server` on a free loopback port, with moto's validation turned on."""
    log = Path(tmp_path_factory.mktemp("moto")) / "moto.log"
    server = MotoServer.start(log_path=log)
    try:
        yield server
    finally:
        server.stop()


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


@pytest.fixture(scope="session")
def devcloud(
    moto_server: MotoServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DevCloud]:
    """The VM simulator on the session's moto: boots every Meadow-tagged instance.

    Offers `.env`, `.vms()`, `.console(id)`, `.interrupt(id)`, `.kill(id)`. Use it with
    `aws_env` (which resets moto, so the previous test's VMs are destroyed).
    """
    require_vm_host()
    # The tests' user data runs this venv's Python (boto3 inside); wherever the checkout
    # lives (say under /tmp, which each VM has its own of), the VMs must see it.
    cloud = DevCloud.start(
        tmp_path_factory.mktemp("devcloud"),
        moto_url=moto_server.url,
        shared_paths=(sys.prefix,),
    )
    try:
        yield cloud
    finally:
        cloud.stop()
        leftovers = netns.existing(cloud.prefix)
        assert not leftovers, f"dev cloud left network namespaces: {leftovers}"
