"""The hosts the conformance suite runs on. A host joins with a fixture that yields a
``harness.HostUnderTest`` and one line in ``HOSTS``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from meadow_devcloud.ec2 import DevCloud

from meadow_core.clouds.aws import admin
from tests.devcloud_install import meadow_installed
from tests.hosts.harness import (
    Ec2DevCloudUnderTest,
    HostUnderTest,
    LocalHostUnderTest,
    build_deployment,
)

HOSTS = [
    pytest.param("local_host", id="local"),
    pytest.param("ec2_devcloud_host", id="ec2-devcloud", marks=pytest.mark.devcloud),
    # Azure and Kubernetes join here, one line each, naming their fixture.
]

#: The pinned requirement every scenario's environment is built from. The caller's
#: venv has another version of six, so a task that reports this one ran in the built
#: environment; uv finds it in its cache (the machines have no package index).
REQUIREMENT = "six==1.16.0"


@pytest.fixture(scope="module", params=HOSTS)
def host_under_test(request: pytest.FixtureRequest) -> HostUnderTest:
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def local_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalHostUnderTest]:
    under_test = LocalHostUnderTest(tmp_path_factory.mktemp("meadow-home"))
    try:
        yield under_test
    finally:
        under_test.close()


#: Short, so the module's end (every instance idles out) comes quickly; the scenarios
#: follow each other well within it, so they reuse warm instances.
EC2_IDLE_TIMEOUT = 20.0
EC2_REGION = "us-east-2"


@pytest.fixture(scope="module")
def ec2_devcloud_host(
    devcloud: DevCloud, moto_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Ec2DevCloudUnderTest]:
    """The session's dev cloud, reset, with Meadow installed and boto3 pointed at it."""
    with meadow_installed(devcloud, moto_server, EC2_REGION):
        requirements = tmp_path_factory.mktemp("ec2-reqs") / "requirements.txt"
        requirements.write_text(f"{REQUIREMENT}\n")
        under_test = Ec2DevCloudUnderTest(
            devcloud, EC2_REGION, build_deployment(requirements), EC2_IDLE_TIMEOUT
        )
        try:
            yield under_test
            under_test.close()
        finally:
            admin.uninstall(EC2_REGION)
