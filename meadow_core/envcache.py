"""Build each environment once: uv builds, the object store shares, every machine caches.

``ensure_environment`` returns the interpreter of the environment an ``EnvironmentSpec``
names. On this machine it is cached under the agent's home; if another machine packed
it into the object store it is unpacked from there; only if neither has it does uv
resolve and install it, and the packed result goes to the store. A file lock makes
concurrent tasks on one machine wait for the first build instead of building twice.
Each environment also gets Meadow's own runtime (the ``meadow_core`` package and its
dependencies at the agent's versions), so the worker runs inside it.

A build happens in a staging directory named after its key and is renamed into place
only when complete; uv dies with the agent (``PR_SET_PDEATHSIG``), and the next build
of the key removes what a killed build left, so an interrupted build leaves no
half-built entry. A preinstalled interpreter gets a thin venv over it (its own
site-packages plus Meadow's runtime), kept on this machine only. Specs with system
packages need a container image and are refused here.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import filelock

import meadow_core
from meadow_core.errors import InvalidRequestError
from meadow_core.interpreters import MEADOW_INTERPRETER, EnvironmentSpec
from meadow_core.interpreters import uv_binary as _uv_on_caller
from meadow_core.transport.base import ObjectStore

log = logging.getLogger("meadow.envcache")


class EnvironmentBuildError(RuntimeError):
    """uv could not build the environment; the message carries uv's own words."""


def uv_binary() -> str:
    """uv for a build on the agent (an error here is a build error, not bad input)."""
    try:
        return _uv_on_caller()
    except InvalidRequestError as exc:
        raise EnvironmentBuildError(str(exc)) from exc


def _die_with_agent() -> None:
    """In the child before exec: die when the agent's thread that started us dies, so
    a killed agent leaves no build running."""
    if _PRCTL is not None:
        _PRCTL(1, 9)  # PR_SET_PDEATHSIG, SIGKILL


_PRCTL = None
if sys.platform == "linux":
    with contextlib.suppress(OSError, AttributeError):
        _PRCTL = ctypes.CDLL("libc.so.6", use_errno=True).prctl


def run_uv(args: list[str], cwd: Path | None = None) -> None:
    env = dict(os.environ, UV_PYTHON_DOWNLOADS=os.environ.get("UV_PYTHON_DOWNLOADS", "never"))
    result = subprocess.run(
        [uv_binary(), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        preexec_fn=_die_with_agent if _PRCTL is not None else None,
    )
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise EnvironmentBuildError(f"uv {args[0]} {args[1] if len(args) > 1 else ''}: {tail}")


#: Meadow's dependencies a worker never imports (the CLI's and the builder's own).
_NOT_NEEDED_BY_WORKERS = frozenset({"uv", "click", "rich"})


def meadow_runtime_requirements() -> list[str]:
    """The agent's own versions of what meadow_core imports in a worker."""
    pins = []
    for requirement in importlib.metadata.requires("meadow") or []:
        if "extra ==" in requirement:
            continue
        name = re.split(r"[<>=!~; \[]", requirement, maxsplit=1)[0]
        if name in _NOT_NEEDED_BY_WORKERS:
            continue
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            pins.append(f"{name}=={importlib.metadata.version(name)}")
    return pins


def _python_for(version: str) -> str:
    if version == f"{sys.version_info.major}.{sys.version_info.minor}":
        return sys.executable  # the agent's own interpreter: nothing to look for
    return version


def _site_packages(python: str) -> Path:
    return Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )


def _add_meadow_runtime(target: Path) -> None:
    python = str(target / "bin" / "python")
    run_uv(["pip", "install", "--python", python, *meadow_runtime_requirements()])
    shutil.copytree(
        Path(meadow_core.__file__).parent,
        _site_packages(python) / "meadow_core",
        ignore=shutil.ignore_patterns("__pycache__"),
    )


def _build(spec: EnvironmentSpec, target: Path, work: Path) -> None:
    run_uv(["venv", "--relocatable", "--python", _python_for(spec.python_version), str(target)])
    python = str(target / "bin" / "python")
    work.mkdir(exist_ok=True)
    if spec.kind == "uv_project":
        (work / "pyproject.toml").write_text(spec.requirements)
        assert spec.lock is not None
        (work / "uv.lock").write_text(spec.lock)
        run_uv(
            ["export", "--frozen", "--no-hashes", "--no-emit-project", "-o", "req.txt"],
            cwd=work,
        )
    else:
        (work / "req.txt").write_text(spec.requirements)
    _add_meadow_runtime(target)
    run_uv(["pip", "install", "--python", python, "-r", str(work / "req.txt")], cwd=work)


def _build_over_preinstalled(spec: EnvironmentSpec, target: Path) -> None:
    """A venv on the preinstalled interpreter whose path ends with that interpreter's
    own site-packages (with their ``.pth`` files), plus Meadow's runtime first."""
    interpreter = spec.requirements
    if not os.access(interpreter, os.X_OK) or os.path.isdir(interpreter):
        raise EnvironmentBuildError(
            f"the preinstalled interpreter {interpreter!r} does not exist on this machine "
            "(or is not executable); give the path of a python on the machine"
        )
    try:
        probe = subprocess.run(
            [
                interpreter,
                "-c",
                "import json, site, sys; print(json.dumps([sys.version_info[:2], "
                "site.getsitepackages()]))",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        (major, minor), site_dirs = json.loads(probe.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise EnvironmentBuildError(
            f"the preinstalled interpreter {interpreter!r} does not run as Python: {exc}"
        ) from exc
    if f"{major}.{minor}" != spec.python_version:
        raise EnvironmentBuildError(
            f"the preinstalled interpreter {interpreter!r} is Python {major}.{minor}, the "
            f"caller is Python {spec.python_version}; functions pickled on the caller only "
            "load on the same minor version"
        )
    run_uv(["venv", "--python", interpreter, str(target)])
    lines = "".join(f"import site; site.addsitedir({d!r})\n" for d in site_dirs)
    (_site_packages(str(target / "bin" / "python")) / "_meadow_preinstalled.pth").write_text(lines)
    _add_meadow_runtime(target)


def _pack(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        tar.add(folder, arcname=".")
    return buffer.getvalue()


def _unpack(data: bytes, target: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(target, filter="tar")


def _staging_prefix(key: str) -> str:
    return f".staging-{key}-"


def ensure_environment(spec_key: str, store: ObjectStore, cache_root: Path) -> str:
    """The interpreter of the environment named by ``spec_key`` (an object holding an
    ``EnvironmentSpec``), built, downloaded or cached as needed."""
    key = spec_key.rsplit("/", 1)[-1]
    target = cache_root / key
    cache_root.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(target) + ".lock"):
        if (target / ".complete").exists():
            os.utime(target / ".complete")  # for least-recently-used pruning
            return str(target / "bin" / "python")
        # We hold the key's lock, so staging folders of this key are from a build that
        # was killed: remove them along with any incomplete entry.
        for leftover in cache_root.glob(_staging_prefix(key) + "*"):
            shutil.rmtree(leftover, ignore_errors=True)
        shutil.rmtree(target, ignore_errors=True)
        spec = EnvironmentSpec.from_bytes(store.get(spec_key))
        if spec.system_packages:
            raise EnvironmentBuildError(
                f"additional_software {list(spec.system_packages)} needs a container image; "
                "this machine builds plain virtualenvs only (run the job where containers "
                "are available)"
            )
        if spec.kind == "preinstalled" and spec.requirements == MEADOW_INTERPRETER:
            return sys.executable
        staging = Path(tempfile.mkdtemp(dir=cache_root, prefix=_staging_prefix(key)))
        try:
            venv = staging / "venv"
            packed_key = f"envs/packed/{key}.tar.gz"
            started = time.monotonic()
            if spec.kind == "preinstalled":  # machine-specific: never shared via the store
                _build_over_preinstalled(spec, venv)
            elif store.exists(packed_key):
                log.info("unpacking environment %s from the store", key)
                _unpack(store.get(packed_key), venv)
            else:
                _build(spec, venv, staging / "work")
                log.info("built environment %s in %.1fs", key, time.monotonic() - started)
                store.put(packed_key, _pack(venv))
            (venv / ".complete").touch()
            os.replace(venv, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return str(target / "bin" / "python")
