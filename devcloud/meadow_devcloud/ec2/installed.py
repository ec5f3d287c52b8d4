"""A dev cloud with Meadow installed, for a block of code: what a test (or a demo) of
code that uses ``AllocEC2Instance`` needs, and its cleanup, in one place.

The orchestrator adapters' tests all need the same setup (start moto and the VM
simulator, install Meadow, and at the end uninstall, stop, and check that no network
namespace is left), with boto3 pointed at it either through the environment or only
through explicit credentials (an Airflow connection).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from meadow_core.clouds.aws import admin, session
from meadow_devcloud.ec2.devcloud import DevCloud
from meadow_devcloud.ec2.moto import DEFAULT_REGION
from meadow_devcloud.vm import netns
from meadow_devcloud.vm.simulator import DevCloudError


def credentials(cloud: DevCloud, region: str = DEFAULT_REGION) -> session.AwsCredentials:
    """The dev cloud as explicit credentials (what a connection would hold)."""
    env = cloud.env
    return session.AwsCredentials(
        access_key_id=env["AWS_ACCESS_KEY_ID"],
        secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=region,
    )


@contextlib.contextmanager
def _environment(variables: dict[str, str], drop: tuple[str, ...]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in (*variables, *drop)}
    for name in drop:
        os.environ.pop(name, None)
    os.environ.update(variables)
    session.reset()
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        session.reset()


@contextlib.contextmanager
def installed_devcloud(
    state_dir: Path,
    region: str = DEFAULT_REGION,
    *,
    via_environment: bool = True,
    shared_paths: tuple[str, ...] = (),
) -> Iterator[DevCloud]:
    """Start a dev cloud under ``state_dir`` and install Meadow in ``region``.

    With ``via_environment`` the block sees boto3's variables pointing at it (and the
    shipped price catalog); otherwise nothing in the environment changes and the block
    reaches it only through ``credentials(cloud)``. On exit: uninstall (terminating
    every instance), stop, and raise ``DevCloudError`` if a namespace is left.
    """
    cloud = DevCloud.start(state_dir, shared_paths=shared_paths)
    variables = {**cloud.env, "MEADOW_AWS_CATALOG": "snapshot"} if via_environment else {}
    explicit = None if via_environment else credentials(cloud, region)
    try:
        with _environment(variables, ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE")):
            with session.using(explicit):
                admin.install(region)
            try:
                yield cloud
            finally:
                with session.using(explicit):
                    admin.uninstall(region)
    finally:
        cloud.stop()
    left = netns.existing(cloud.prefix)
    if left:
        raise DevCloudError(f"the dev cloud left network namespaces: {left}")
