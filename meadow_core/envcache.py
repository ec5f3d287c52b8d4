"""Build each environment once: uv builds, the object store shares, every machine caches.

``ensure_environment`` returns the interpreter of the environment an ``EnvironmentSpec``
names. On this machine it is cached under the agent's home; if another machine packed
it into the object store it is unpacked from there; only if neither has it does uv
resolve and install it, and the packed result goes to the store. A file lock makes
concurrent tasks on one machine wait for the first build instead of building twice.
Each environment also gets Meadow's own runtime (the ``meadow_core`` package and its
dependencies at the agent's versions), so the worker runs inside it.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
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
from meadow_core.interpreters import EnvironmentSpec
from meadow_core.transport.base import ObjectStore

log = logging.getLogger("meadow.envcache")


class EnvironmentBuildError(RuntimeError):
    """uv could not build the environment; the message carries uv's own words."""


def _uv() -> str:
    found = shutil.which("uv")
    if found:
        return found
    try:
        import uv  # the uv wheel ships the binary

        return str(uv.find_uv_bin())
    except (ImportError, FileNotFoundError) as exc:
        raise EnvironmentBuildError(
            "uv is needed to build environments; pip install uv (it comes with meadow)"
        ) from exc


def _run_uv(args: list[str], cwd: Path | None = None) -> None:
    env = dict(os.environ, UV_PYTHON_DOWNLOADS=os.environ.get("UV_PYTHON_DOWNLOADS", "never"))
    result = subprocess.run(
        [_uv(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=1800
    )
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise EnvironmentBuildError(f"uv {args[0]} {args[1] if len(args) > 1 else ''}: {tail}")


#: Meadow's dependencies a worker never imports (the CLI's and the builder's own).
_NOT_NEEDED_BY_WORKERS = frozenset({"uv", "click", "rich"})


def _meadow_runtime_requirements() -> list[str]:
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


def _build(spec: EnvironmentSpec, target: Path) -> None:
    _run_uv(["venv", "--relocatable", "--python", _python_for(spec.python_version), str(target)])
    python = str(target / "bin" / "python")
    with tempfile.TemporaryDirectory(prefix="meadow-env-") as work:
        folder = Path(work)
        if spec.kind == "uv_project":
            (folder / "pyproject.toml").write_text(spec.requirements)
            assert spec.lock is not None
            (folder / "uv.lock").write_text(spec.lock)
            _run_uv(
                ["export", "--frozen", "--no-hashes", "--no-emit-project", "-o", "req.txt"],
                cwd=folder,
            )
        else:
            (folder / "req.txt").write_text(spec.requirements)
        _run_uv(["pip", "install", "--python", python, *_meadow_runtime_requirements()])
        _run_uv(["pip", "install", "--python", python, "-r", str(folder / "req.txt")])
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    shutil.copytree(
        Path(meadow_core.__file__).parent,
        site / "meadow_core",
        ignore=shutil.ignore_patterns("__pycache__"),
    )


def _pack(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        tar.add(folder, arcname=".")
    return buffer.getvalue()


def _unpack(data: bytes, target: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(target, filter="tar")


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
        shutil.rmtree(target, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(dir=cache_root, prefix=".staging-"))
        try:
            packed_key = f"envs/packed/{key}.tar.gz"
            if store.exists(packed_key):
                log.info("unpacking environment %s from the store", key)
                _unpack(store.get(packed_key), staging)
            else:
                spec = EnvironmentSpec.from_bytes(store.get(spec_key))
                started = time.monotonic()
                shutil.rmtree(staging)
                _build(spec, staging)
                log.info("built environment %s in %.1fs", key, time.monotonic() - started)
                store.put(packed_key, _pack(staging))
            (staging / ".complete").touch()
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return str(target / "bin" / "python")
