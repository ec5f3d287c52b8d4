"""Interpreters: poetry projects, conda refusals, preinstalled interpreters, system
packages, caller-side resolution, detection, and builds that are killed half-way."""

from __future__ import annotations

import os
import signal
import stat
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import env_tasks
import psutil
import pytest
from tasks import managed_host, wait_until_gone

from meadow_core import (
    MEADOW_INTERPRETER,
    CondaEnvironmentFile,
    Deployment,
    InvalidRequestError,
    LocalCondaInterpreter,
    LocalHost,
    LocalPipInterpreter,
    PipRequirementsFile,
    PoetryProjectPath,
    PreinstalledInterpreter,
    UvProjectPath,
    _runtime,
    envcache,
    interpreters,
    run_function_sync,
)
from meadow_core.agent.processes import AGENT_HOME_VARIABLE
from meadow_core.cache import cache_entries
from meadow_core.envcache import EnvironmentBuildError, ensure_environment
from meadow_core.interpreters import (
    RESOLVE_VARIABLE,
    EnvironmentSpec,
    detect_local_interpreter,
    uv_binary,
)
from meadow_core.transport.local import LocalObjectStore

PY = f"{sys.version_info.major}.{sys.version_info.minor}"

# Real locks written by poetry 1.8.5 (lock format 2.0: no groups, so the main group is
# found by following dependencies) and poetry 2.5.1 (format 2.1: groups and markers),
# for python-dateutil and a Windows-only colorama in main and iniconfig in dev. Only
# the `files` hashes and the index source were left out.
PYPROJECT = """\
[tool.poetry]
name = "poetrydemo"
version = "0.1.0"
description = ""
authors = ["t <t@example.invalid>"]
package-mode = false

[tool.poetry.dependencies]
python = "^3.11"
python-dateutil = "2.9.0.post0"
colorama = {version = "0.4.6", markers = "sys_platform == 'win32'"}

[tool.poetry.group.dev.dependencies]
iniconfig = "2.0.0"
"""

_PACKAGES = """\
[[package]]
name = "colorama"
version = "0.4.6"
description = "Cross-platform colored terminal text."
optional = false
python-versions = "!=3.0.*,!=3.1.*,!=3.2.*,!=3.3.*,!=3.4.*,!=3.5.*,!=3.6.*,>=2.7"
{colorama}files = []

[[package]]
name = "iniconfig"
version = "2.0.0"
description = "brain-dead simple config-ini parsing"
optional = false
python-versions = ">=3.7"
{dev}files = []

[[package]]
name = "python-dateutil"
version = "2.9.0.post0"
description = "Extensions to the standard Python datetime module"
optional = false
python-versions = "!=3.0.*,!=3.1.*,!=3.2.*,>=2.7"
{main}files = []

[package.dependencies]
six = ">=1.5"

[[package]]
name = "six"
version = "1.17.0"
description = "Python 2 and 3 compatibility utilities"
optional = false
python-versions = ">=2.7, !=3.0.*, !=3.1.*, !=3.2.*"
{main}files = []

[metadata]
lock-version = "{version}"
python-versions = "^3.11"
content-hash = "0"
"""

POETRY_LOCK_2_0 = _PACKAGES.format(colorama="", dev="", main="", version="2.0")
POETRY_LOCK_2_1 = _PACKAGES.format(
    colorama='groups = ["main"]\nmarkers = "sys_platform == \\"win32\\""\n',
    dev='groups = ["dev"]\n',
    main='groups = ["main"]\n',
    version="2.1",
)


@pytest.fixture(autouse=True)
def resolution_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test starts with an empty resolution cache of its own."""
    monkeypatch.setenv("MEADOW_CACHE_DIR", str(tmp_path / "user-cache"))
    return tmp_path / "user-cache" / "resolved"


def _poetry_project(folder: Path, lock: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "pyproject.toml").write_text(PYPROJECT)
    (folder / "poetry.lock").write_text(lock)
    return folder


# -- poetry -----------------------------------------------------------------------------


@pytest.mark.parametrize("lock", [POETRY_LOCK_2_0, POETRY_LOCK_2_1], ids=["lock2.0", "lock2.1"])
def test_a_poetry_lock_becomes_the_main_groups_pins_with_markers(tmp_path: Path, lock: str) -> None:
    project = _poetry_project(tmp_path / "p", lock)
    spec = PoetryProjectPath(str(project)).environment_spec()
    lines = spec.requirements.splitlines()
    assert "python-dateutil==2.9.0.post0" in lines
    assert "six==1.17.0" in lines  # only a dependency of a dependency
    (colorama,) = [line for line in lines if line.startswith("colorama")]
    assert colorama.startswith("colorama==0.4.6 ; ") and "win32" in colorama
    assert not any(line.startswith("iniconfig") for line in lines)  # the dev group


def test_a_poetry_project_runs_in_its_locked_environment(host: LocalHost, tmp_path: Path) -> None:
    project = _poetry_project(tmp_path / "p", POETRY_LOCK_2_1)
    deployment = Deployment.mirror_local(interpreter=PoetryProjectPath(str(project)))
    dateutil_version, six_version = run_function_sync(
        env_tasks.report_dateutil, host, deployment=deployment
    )
    assert (dateutil_version, six_version) == ("2.9.0.post0", "1.17.0")


def test_bad_poetry_projects_fail_before_anything_runs(tmp_path: Path) -> None:
    project = tmp_path / "p"
    project.mkdir()
    (project / "pyproject.toml").write_text(PYPROJECT)
    with pytest.raises(InvalidRequestError, match=r"poetry\.lock.*cannot be read.*poetry lock"):
        PoetryProjectPath(str(project)).environment_spec()
    (project / "poetry.lock").write_text("[[package]\nname = ")
    with pytest.raises(InvalidRequestError, match=r"poetry\.lock is not valid TOML"):
        PoetryProjectPath(str(project)).environment_spec()
    # The lock does not know a dependency pyproject.toml asks for: it is out of date.
    (project / "poetry.lock").write_text(POETRY_LOCK_2_0.replace('"six"', '"not-six"'))
    with pytest.raises(InvalidRequestError, match=r"six.*poetry lock"):
        PoetryProjectPath(str(project)).environment_spec()


# -- system packages --------------------------------------------------------------------


def test_additional_software_is_part_of_the_key(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("six==1.16.0\n")
    plain = PipRequirementsFile(str(requirements)).environment_spec()
    with_apt = PipRequirementsFile(
        str(requirements), additional_software="libpq5 curl"
    ).environment_spec()
    as_list = PipRequirementsFile(
        str(requirements), additional_software=["curl", "libpq5"]
    ).environment_spec()
    assert plain.system_packages == ()
    assert with_apt.system_packages == ("curl", "libpq5") == as_list.system_packages
    assert with_apt.key == as_list.key != plain.key
    assert EnvironmentSpec.from_bytes(with_apt.to_bytes()) == with_apt
    assert EnvironmentSpec.from_bytes(plain.to_bytes()) == plain
    with pytest.raises(InvalidRequestError, match="not an apt package name"):
        PipRequirementsFile(str(requirements), additional_software="rm -rf /").environment_spec()


def test_an_environment_with_system_packages_is_refused_outside_containers(
    tmp_path: Path,
) -> None:
    store = LocalObjectStore(tmp_path / "store")
    spec = EnvironmentSpec("requirements", "six\n", None, PY, "linux-x86_64", ("libpq5",))
    store.put(spec.key, spec.to_bytes())
    with pytest.raises(EnvironmentBuildError, match=r"additional_software.*container image"):
        ensure_environment(spec.key, store, tmp_path / "envs")
    assert not any((tmp_path / "envs").iterdir()) or all(
        p.name.endswith(".lock") for p in (tmp_path / "envs").iterdir()
    )


# -- conda ------------------------------------------------------------------------------


def test_conda_without_conda_suggests_a_container_or_pip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    environment_yml = tmp_path / "environment.yml"
    environment_yml.write_text("name: x\ndependencies:\n  - python=3.11\n")
    for interpreter in (LocalCondaInterpreter("base"), CondaEnvironmentFile(str(environment_yml))):
        with pytest.raises(InvalidRequestError, match=r"conda.*not on PATH") as caught:
            interpreter.environment_spec()
        assert "container" in str(caught.value) and "PipRequirementsFile" in str(caught.value)
    with pytest.raises(InvalidRequestError, match=r"conda environment file.*cannot be read"):
        CondaEnvironmentFile(str(tmp_path / "missing.yml")).environment_spec()


def test_conda_with_conda_says_what_is_not_built_yet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "conda").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "conda").chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(NotImplementedError, match="building conda environments"):
        LocalCondaInterpreter("base").environment_spec()


# -- caller-side resolution -------------------------------------------------------------


def test_a_version_that_does_not_exist_fails_on_the_caller_with_uvs_words(
    tmp_path: Path, resolution_cache: Path
) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("six==99.0.0\n")
    with pytest.raises(InvalidRequestError) as caught:
        PipRequirementsFile(str(requirements)).environment_spec()
    message = str(caught.value)
    assert "six==99.0.0" in message and "unsatisfiable" in message
    assert "Traceback" not in message
    assert not resolution_cache.exists() or not any(resolution_cache.iterdir())


def test_a_resolution_is_checked_once_per_spec(
    tmp_path: Path, resolution_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("six==1.16.0\n")
    spec = PipRequirementsFile(str(requirements)).environment_spec()
    assert (resolution_cache / spec.key.rsplit("/", 1)[-1]).read_text().startswith("six==1.16.0")

    def no_uv() -> str:
        raise AssertionError("a spec already checked must not run uv again")

    monkeypatch.setattr(interpreters, "uv_binary", no_uv)
    assert PipRequirementsFile(str(requirements)).environment_spec() == spec


def test_an_unparsable_uv_lock_fails_on_the_caller(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    (project / "pyproject.toml").write_text("[project]\nname = 'x'\nversion = '0'\n")
    (project / "uv.lock").write_text("version = 1\n[[package]]\nname = 3\n")  # TOML, not a lock
    with pytest.raises(InvalidRequestError, match=r"uv\.lock does not resolve"):
        UvProjectPath(str(project)).environment_spec()


def test_local_editable_lines_travel_as_code(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("-e ./mypackage\n--editable=/abs/other\nsix==1.16.0\n")
    spec = PipRequirementsFile(str(requirements)).environment_spec()
    assert spec.requirements == "six==1.16.0\n"


def test_a_local_pip_interpreter_is_rebuilt_from_its_packages(tmp_path: Path) -> None:
    venv = _venv_with_six(tmp_path / "venv")
    spec = LocalPipInterpreter(str(venv / "bin" / "python")).environment_spec()
    assert spec.requirements.splitlines() == ["six==1.16.0"]
    with pytest.raises(InvalidRequestError, match="does not exist"):
        LocalPipInterpreter(str(tmp_path / "nope" / "python")).environment_spec()


# -- detection --------------------------------------------------------------------------


def test_the_callers_environment_is_detected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CONDA_PREFIX", raising=False)
    poetry = _poetry_project(tmp_path / "poetry", POETRY_LOCK_2_1)
    (poetry / "src" / "pkg").mkdir(parents=True)
    assert detect_local_interpreter(str(poetry / "src" / "pkg")) == PoetryProjectPath(str(poetry))
    uv_project = tmp_path / "uvp"
    uv_project.mkdir()
    (uv_project / "pyproject.toml").write_text("")
    (uv_project / "uv.lock").write_text("")
    assert detect_local_interpreter(str(uv_project)) == UvProjectPath(str(uv_project))
    plain = tmp_path / "plain"
    plain.mkdir()
    assert detect_local_interpreter(str(plain)) == LocalPipInterpreter(sys.executable)


# -- preinstalled interpreters ----------------------------------------------------------


def _venv_with_six(venv: Path) -> Path:
    import subprocess

    subprocess.run([uv_binary(), "venv", "-q", "--python", sys.executable, str(venv)], check=True)
    subprocess.run(
        [
            uv_binary(),
            "pip",
            "install",
            "-q",
            "--python",
            str(venv / "bin" / "python"),
            "six==1.16.0",
        ],
        check=True,
    )
    return venv


def test_a_preinstalled_interpreter_runs_with_its_own_packages(
    host: LocalHost, tmp_path: Path
) -> None:
    venv = _venv_with_six(tmp_path / "preinstalled")
    site = next((venv / "lib").glob("python3.*/site-packages"))
    # A module only this interpreter has: nothing is shipped with this deployment.
    (site / "preinstalled_probe.py").write_text(
        textwrap.dedent(
            """
            import sys
            import six

            def where():
                return sys.prefix, six.__file__
            """
        )
    )
    deployment = Deployment.preinstalled_interpreter(str(venv / "bin" / "python"))
    prefix, six_file = run_function_sync("preinstalled_probe.where", host, deployment=deployment)
    assert six_file.startswith(str(venv))
    assert prefix.startswith(str(host.place.home / "envs"))  # a thin venv over it
    assert not (host.place.home / "store" / "envs" / "packed").exists() or not any(
        p.name.startswith(deployment.environment.key.rsplit("/", 1)[-1])  # type: ignore[union-attr]
        for p in (host.place.home / "store" / "envs" / "packed").iterdir()
    )
    import platform

    agents_own = Deployment.preinstalled_interpreter(MEADOW_INTERPRETER)
    assert run_function_sync("platform.python_version", host, deployment=agents_own) == (
        platform.python_version()
    )


def test_a_preinstalled_interpreter_that_does_not_exist(host: LocalHost, tmp_path: Path) -> None:
    missing = str(tmp_path / "no" / "python")
    deployment = Deployment.preinstalled_interpreter(missing)
    with pytest.raises(InvalidRequestError, match="does not exist on this machine"):
        deployment.check_on_this_machine()
    # Without that check (a host that cannot look), the machine says the same.
    with pytest.raises(Exception, match="does not exist on this machine"):
        run_function_sync("platform.python_version", host, deployment=deployment)
    with pytest.raises(InvalidRequestError, match="must be absolute"):
        PreinstalledInterpreter("python3").environment_spec()


# -- an interrupted build ---------------------------------------------------------------

SLOW_BACKEND = '''
"""A PEP 517 backend that waits while a gate file exists, so a test can kill a build."""
import base64, hashlib, os, time, zipfile

HERE = os.path.dirname(os.path.abspath(__file__))

def get_requires_for_build_wheel(config_settings=None):
    return []

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    open(os.path.join(HERE, "STARTED"), "w").close()
    deadline = time.time() + 180
    while os.path.exists(os.path.join(HERE, "GATE")) and time.time() < deadline:
        time.sleep(0.05)
    name = "slowpkg-0.1-py3-none-any.whl"
    files = {
        "slowpkg.py": b"VALUE = 'built'\\n",
        "slowpkg-0.1.dist-info/METADATA": (
            b"Metadata-Version: 2.1\\nName: slowpkg\\nVersion: 0.1\\n"
        ),
        "slowpkg-0.1.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"
        ),
    }
    record = []
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as wheel:
        for path, data in files.items():
            wheel.writestr(path, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{path},sha256={digest.decode()},{len(data)}")
        record.append("slowpkg-0.1.dist-info/RECORD,,")
        wheel.writestr("slowpkg-0.1.dist-info/RECORD", "\\n".join(record) + "\\n")
    return name
'''


def _processes_of_home(home: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(AGENT_HOME_VARIABLE) == str(home):
                found.append(process)
        except psutil.Error:
            continue
    return found


def _wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_killing_the_agent_mid_build_leaves_no_half_built_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "slowpkg"
    package.mkdir()
    (package / "slow_backend.py").write_text(SLOW_BACKEND)
    (package / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "slow_backend"\nbackend-path = ["."]\n'
        '[project]\nname = "slowpkg"\nversion = "0.1"\n'
    )
    (package / "GATE").touch()
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"six==1.16.0\nslowpkg @ file://{package}\n")
    # The caller's resolution check would build the package's metadata through the gate.
    monkeypatch.setenv(RESOLVE_VARIABLE, "0")
    home = tmp_path / "home"
    outcome: dict[str, Any] = {}

    def call(host: LocalHost, deployment: Deployment) -> None:
        try:
            outcome["value"] = run_function_sync(
                env_tasks.report_environment, host, deployment=deployment
            )
        except BaseException as exc:
            outcome["error"] = exc

    try:
        with managed_host(home) as host:
            deployment = Deployment.mirror_local(interpreter=PipRequirementsFile(str(requirements)))
            caller = threading.Thread(target=call, args=(host, deployment), daemon=True)
            caller.start()
            try:
                _wait_for((package / "STARTED").exists, 180, "the build to reach the slow package")
                agent = host.agent_pid()
                assert agent is not None
                envs = home / "envs"
                assert list(envs.glob(".staging-*")), "the build should be staging"
                os.kill(agent, signal.SIGKILL)
                assert not wait_until_gone([agent])
                # uv died with the agent (the build step it started ends on its own).
                _wait_for(
                    lambda: not [p for p in _processes_of_home(home) if p.name() == "uv"],
                    10,
                    "uv to die with the agent",
                )
                # Nothing under a cache name: no environment, no packed archive.
                assert not [
                    p
                    for p in envs.iterdir()
                    if not p.name.startswith(".") and not p.name.endswith(".lock")
                ]
                packed = home / "store" / "envs" / "packed"
                assert not packed.exists() or not list(packed.iterdir())
                assert not [e for e in cache_entries(host.place) if "environment" in e.kind]
            finally:
                # Let every build finish, and the caller (which restarts the agent and so
                # retries the task) return, before the host is shut down and checked.
                (package / "GATE").unlink(missing_ok=True)
                caller.join(timeout=240)
            assert not caller.is_alive()
            assert "error" not in outcome, outcome.get("error")
            executable, version = outcome["value"]
            assert version == "1.16.0"
            (built,) = [p for p in envs.iterdir() if (p / ".complete").exists()]
            assert executable.startswith(str(built))
            assert not list(envs.glob(".staging-*"))  # the killed build's leftovers
            assert len(list(packed.iterdir())) == 1
    finally:
        stragglers = _processes_of_home(home)
        for process in stragglers:
            process.kill()
        assert not wait_until_gone([p.pid for p in stragglers])


def test_staging_leftovers_are_not_mistaken_for_an_environment(tmp_path: Path) -> None:
    """A killed build's staging folder (here: made by hand) is removed by the next
    build of its key, and a packed archive only ever appears complete."""
    store = LocalObjectStore(tmp_path / "store")
    spec = EnvironmentSpec("requirements", "six==1.16.0\n", None, PY, "linux-x86_64")
    store.put(spec.key, spec.to_bytes())
    key = spec.key.rsplit("/", 1)[-1]
    leftover = tmp_path / "envs" / f".staging-{key}-dead"
    (leftover / "venv" / "bin").mkdir(parents=True)
    python = ensure_environment(spec.key, store, tmp_path / "envs")
    assert not leftover.exists()
    assert Path(python).exists() and os.stat(python).st_mode & stat.S_IXUSR


def test_an_environment_built_by_another_meadow_is_not_reused_as_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An environment carries a copy of meadow_core: after an upgrade (here: another
    digest of it) the old entry and archive stay untouched, and the new runtime gets its
    own, derived from the old one rather than built again from nothing."""
    store = LocalObjectStore(tmp_path / "store")
    spec = EnvironmentSpec("requirements", "six==1.16.0\n", None, PY, "linux-x86_64")
    store.put(spec.key, spec.to_bytes())
    old_python = ensure_environment(spec.key, store, tmp_path / "envs")
    old_archive = envcache.stored_archive(spec.key, store)
    assert old_archive is not None

    monkeypatch.setattr(_runtime, "runtime_id", lambda: "f" * 64)
    assert envcache.stored_archive(spec.key, store) is None, "the old archive is not offered"
    with caplog.at_level("INFO", logger="meadow.envcache"):
        new_python = ensure_environment(spec.key, store, tmp_path / "envs")
    assert new_python != old_python and Path(new_python).exists()
    assert "derived the environment" in caplog.text
    assert envcache.stored_archive(spec.key, store) not in (None, old_archive)
    # Both archives belong to the spec (pruning keeps or drops them with it).
    assert envcache.packed_spec(old_archive) == spec.key


def test_keep_recent_removes_the_least_recently_used_environments(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "store")
    names = []
    for i, version in enumerate(("1.15.0", "1.16.0", "1.17.0")):
        spec = EnvironmentSpec("requirements", f"six=={version}\n", None, PY, "linux-x86_64")
        store.put(spec.key, spec.to_bytes())
        python = ensure_environment(spec.key, store, tmp_path / "envs")
        entry = Path(python).parent.parent
        os.utime(entry / ".complete", (1000.0 + i, 1000.0 + i))
        names.append(entry.name)
    assert envcache.keep_recent(tmp_path / "envs", 2) == [names[0]]
    left = sorted(p.name for p in (tmp_path / "envs").iterdir() if not p.name.startswith("."))
    assert [n for n in left if not n.endswith(".lock")] == sorted(names[1:])
    assert f"{names[0]}.lock" not in left
