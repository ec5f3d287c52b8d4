"""Jobs in container images on LocalHost, against a real dockerd and docker-registry.

Needs the stack of ``python -m meadow_devcloud.docker_stack up`` (dockerd, the
debootstrap base image ``MEADOW_TEST_BASE_IMAGE``, a registry at
``MEADOW_TEST_REGISTRY``), which ``scripts/test.sh`` starts. Without it the module is
skipped, except under ``CI=true``, where a missing service is a failure.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import env_tasks
import pytest
from tasks import managed_host

from meadow_core import (
    Deployment,
    InvalidRequestError,
    LocalHost,
    PipRequirementsFile,
    TaskException,
    list_jobs_sync,
    run_command_sync,
    run_function_sync,
)
from meadow_core.container_interpreters import ContainerInterpreter

pytestmark = [pytest.mark.docker]

REGISTRY = os.environ.get("MEADOW_TEST_REGISTRY", "127.0.0.1:5000")
BASE_IMAGE = os.environ.get("MEADOW_TEST_BASE_IMAGE", "meadow-base:bookworm")


def _unavailable() -> str | None:
    try:
        import docker
    except ImportError:
        return "the docker SDK is not installed (pip install 'meadow-core[containers]')"
    try:
        client = docker.from_env()
        client.ping()
        client.images.get(BASE_IMAGE)
    except Exception as exc:
        return f"no docker daemon with the image {BASE_IMAGE} ({exc})"
    if shutil.which("docker") is None:
        return "no docker CLI on PATH"
    try:
        urllib.request.urlopen(f"http://{REGISTRY}/v2/", timeout=2).read()
    except OSError as exc:
        return f"no registry at {REGISTRY} ({exc})"
    return None


def _our_containers(client: Any, base: str) -> list[str]:
    """Containers labelled meadow whose agent home is under this test session's temp."""
    found = []
    for container in client.containers.list(all=True, filters={"label": "meadow"}):
        env = container.attrs["Config"].get("Env") or []
        if any(e.startswith("MEADOW_AGENT_HOME=" + base) for e in env):
            found.append(container.name)
    return found


@pytest.fixture(scope="module")
def docker_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    reason = _unavailable()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI runs `python -m meadow_devcloud.docker_stack up` first")
        pytest.skip(f'{reason}; as root: eval "$(python -m meadow_devcloud.docker_stack up)"')
    import docker

    client = docker.from_env()
    yield client
    base = str(tmp_path_factory.getbasetemp())
    deadline = time.monotonic() + 15
    while _our_containers(client, base) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _our_containers(client, base), "containers left behind by the tests"
    client.close()


@pytest.fixture(scope="module")
def host(docker_client: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalHost]:
    """After ``docker_client`` so its leak check runs once this host is shut down."""
    with managed_host(tmp_path_factory.mktemp("containers")) as h:
        yield h


@pytest.fixture(scope="module")
def pushed_base(docker_client: Any) -> tuple[str, str, str]:
    """The debootstrap base image in the registry: (repository, tag, digest)."""
    name, tag = BASE_IMAGE.rsplit(":", 1)
    repository = f"{REGISTRY}/{name}"
    docker_client.images.get(BASE_IMAGE).tag(repository, tag)
    digest = None
    for chunk in docker_client.api.push(repository, tag, stream=True, decode=True):
        assert "error" not in chunk, chunk
        digest = (chunk.get("aux") or {}).get("Digest", digest)
    assert digest
    return repository, tag, digest


@pytest.fixture
def build_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Where built images go and start from (what a user configures)."""
    monkeypatch.setenv("MEADOW_REGISTRY", REGISTRY)
    monkeypatch.setenv("MEADOW_BASE_IMAGE", BASE_IMAGE)
    mirror = os.environ.get("MEADOW_TEST_APT_MIRROR")
    if mirror:
        monkeypatch.setenv("MEADOW_APT_MIRROR", mirror)
    monkeypatch.setenv("MEADOW_CACHE_DIR", str(tmp_path / "cache"))


def test_a_function_and_a_command_run_in_the_image(
    host: LocalHost, pushed_base: tuple[str, str, str]
) -> None:
    repository, tag, digest = pushed_base

    def where(x: int) -> tuple[int, bool, bool, str]:
        import os
        import sys

        print("inside", flush=True)
        # /.dockerenv exists only in a container; this checkout only on the host.
        return x + 1, os.path.exists("/.dockerenv"), os.path.isdir("/work/main"), sys.executable

    deployment = Deployment.container_image(repository, tag, environment_variables={"K": "v"})
    assert run_function_sync(where, host, deployment=deployment, args=[1]) == (
        2,
        True,
        False,
        "/usr/bin/python3",
    )
    completion = run_command_sync(
        ["sh", "-c", "test -f /.dockerenv && echo inside-$K-$MEADOW_TASK_ID"],
        host,
        deployment=deployment,
    )
    assert completion.return_code == 0 and "inside-v-0" in completion.log
    at_digest = Deployment.container_image_at_digest(repository, digest)
    assert run_function_sync(where, host, deployment=at_digest, args=[5])[:2] == (6, True)
    with pytest.raises(TaskException, match="CommandFailed"):
        run_command_sync(["sh", "-c", "exit 3"], host, deployment=deployment)


def test_a_missing_image_fails_before_anything_runs(host: LocalHost) -> None:
    before = len(list_jobs_sync(host))
    missing = f"{REGISTRY}/meadow-no-such-image"
    with pytest.raises(InvalidRequestError, match="meadow-no-such-image:nope"):
        run_function_sync(
            len, host, deployment=Deployment.container_image(missing, "nope"), args=[[]]
        )
    with pytest.raises(InvalidRequestError, match="meadow-no-such-image"):
        run_command_sync(
            "true",
            host,
            deployment=Deployment.mirror_local(interpreter=ContainerInterpreter(missing, "x")),
        )
    assert len(list_jobs_sync(host)) == before


def test_a_timed_out_task_takes_its_container_with_it(
    host: LocalHost, pushed_base: tuple[str, str, str], docker_client: Any
) -> None:
    repository, tag, _ = pushed_base
    marker = uuid.uuid4().hex
    deployment = Deployment.container_image(
        repository, tag, environment_variables={"MEADOW_TEST_CASE": marker}
    )

    def sleepy() -> None:
        import time

        time.sleep(120)

    with pytest.raises(TaskException, match="TaskTimeout"):
        run_function_sync(sleepy, host, deployment=deployment, timeout_seconds=2)

    def ours() -> list[str]:
        return [
            c.name
            for c in docker_client.containers.list(all=True, filters={"label": "meadow"})
            if f"MEADOW_TEST_CASE={marker}" in (c.attrs["Config"].get("Env") or [])
        ]

    deadline = time.monotonic() + 10
    while ours() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not ours()


def test_requirements_and_additional_software_build_an_image_another_home_pulls(
    tmp_path: Path,
    docker_client: Any,
    build_settings: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="meadow.containers")

    def _env_with_jq() -> tuple[tuple[str, str], str, str]:  # by value: pytest stays here
        import shutil
        import subprocess

        jq = subprocess.run(["jq", "--version"], capture_output=True, text=True, check=True)
        # env_tasks comes from the code snapshot mounted into the container.
        return env_tasks.report_environment(), jq.stdout.strip(), str(shutil.which("jq"))

    requirements = tmp_path / "requirements.txt"
    # A spec of its own, so this run builds even if the registry has older builds.
    requirements.write_text(f"six==1.16.0\n# {uuid.uuid4().hex}\n")
    interpreter = PipRequirementsFile(str(requirements), additional_software=["jq"])
    with managed_host(tmp_path / "first") as first:
        deployment = asyncio.run(Deployment.mirror_local(interpreter=interpreter))
        (executable, six_version), jq, jq_path = run_function_sync(
            _env_with_jq, first, deployment=deployment
        )
    assert six_version == "1.16.0" and executable.startswith("/opt/meadow/env/")
    assert jq.startswith("jq-") and jq_path == "/usr/bin/jq"
    built = [r.getMessage() for r in caplog.records if "built image" in r.getMessage()]
    assert len(built) == 1
    reference = built[0].split()[2]
    first_id = docker_client.images.get(reference).id
    # The image carries no apt mirror of the machine that built it.
    sources = docker_client.containers.run(
        reference,
        ["sh", "-c", "cat /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null; true"],
        remove=True,
        labels={"meadow": ""},
    ).decode()
    assert "http" not in sources

    # Another machine: the image is not local there, so it comes from the registry.
    docker_client.images.remove(reference)
    caplog.clear()
    with managed_host(tmp_path / "second") as second:
        deployment = asyncio.run(Deployment.mirror_local(interpreter=interpreter))
        (_, six_version), jq, _ = run_function_sync(_env_with_jq, second, deployment=deployment)
    assert six_version == "1.16.0" and jq.startswith("jq-")
    messages = [r.getMessage() for r in caplog.records]
    assert any("pulled image" in m for m in messages) and not any("built" in m for m in messages)
    assert docker_client.images.get(reference).id == first_id


def test_the_machine_cache_folder_inside_an_image_is_the_machines(
    host: LocalHost, pushed_base: tuple[str, str, str]
) -> None:
    """Meadowrun's MACHINE_CACHE_FOLDER read inside a container task names the folder
    the machine keeps between jobs: what a task leaves there is on the machine after."""
    repository, tag, _ = pushed_base

    def leave(name: str) -> str:
        import os

        import meadow_core

        path = os.path.join(meadow_core.MACHINE_CACHE_FOLDER, name)
        with open(path, "w") as f:
            f.write("left by a container")
        return path

    name = f"from-a-container-{os.getpid()}"
    deployment = Deployment.container_image(repository, tag)
    path = Path(run_function_sync(leave, host, deployment=deployment, args=[name]))
    try:
        assert path.read_text() == "left by a container"
    finally:
        path.unlink(missing_ok=True)
