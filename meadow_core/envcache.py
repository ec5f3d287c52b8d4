"""Build each environment once: uv builds, the object store shares, every machine caches.

``ensure_environment`` returns the interpreter of the environment an ``EnvironmentSpec``
names. On this machine it is cached under the agent's home (a complete entry is used
without a lock: a directory lookup); if another machine packed it into the object
store it is unpacked from there; only if neither has it does uv build it. A file lock
makes concurrent tasks on one machine wait for the first build instead of building
twice. Each environment also gets Meadow's own runtime (the ``meadow_core`` package and
its dependencies at the agent's versions), so the worker runs inside it.

A build is one ``uv pip install`` of the user's requirements and the runtime together.
When every requirement is an exact pin, uv's cache is asked first (``--offline``), and
the closest environment already on this machine (same Python, runtime, most pins in
common) is hard-linked as the start, so uv swaps only the packages that differ.

A build happens in a staging directory and is renamed into place only when complete;
uv dies with the agent (``PR_SET_PDEATHSIG``), and the next build removes what a killed
build left, so an interrupted build leaves no half-built entry. The archive (tar +
zstd, or gzip where there is no ``zstd``) goes to the store after the rename, in the
background if the caller wants; the store writes atomically and a marker in the entry
records the upload, so a crash before it only means the next use uploads again. A
preinstalled interpreter gets a thin venv over it (its own site-packages plus Meadow's
runtime), kept on this machine only. Specs with system packages need a container image
and are refused here.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.metadata
import io
import itertools
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import filelock

from meadow_core import _runtime, keys
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
_EXTRA = re.compile(r"\bextra\s*==")


def _requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~; \[(]", requirement.strip(), maxsplit=1)[0]


def meadow_runtime_requirements() -> list[str]:
    """The agent's own versions of what meadow_core imports in a worker, and of what
    those import in turn: a closed set, so a build can install it from uv's cache
    without asking the index (an unpinned dependency could be newer there)."""
    pins: dict[str, str] = {}
    todo = [
        r
        for r in importlib.metadata.requires(_runtime.DISTRIBUTION) or []
        if not _EXTRA.search(r) and _requirement_name(r) not in _NOT_NEEDED_BY_WORKERS
    ]
    while todo:
        name = _normalize(_requirement_name(todo.pop()))
        if name in pins:
            continue
        try:
            pins[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # a dependency behind a marker that does not apply here
        todo += [r for r in importlib.metadata.requires(name) or [] if not _EXTRA.search(r)]
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


#: Requirement-file options that only say where packages come from.
_INDEX_OPTIONS = re.compile(
    r"^(--index-url|-i|--extra-index-url|--find-links|-f|--no-index|--trusted-host|"
    r"--only-binary|--no-binary|--prefer-binary|--pre)\b"
)
_PIN = re.compile(
    r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*===?\s*([A-Za-z0-9._+!-]+)\s*(;.*)?$"
)


def exact_pins(requirements: str) -> dict[str, str] | None:
    """``{name: version}`` if every requirement is an exact ``==`` pin (as ``pip freeze``,
    ``uv export`` and lock files give), else None. Only for such a set can uv's cache
    answer as the index would, and can an environment be derived from a neighbour."""
    pins: dict[str, str] = {}
    for raw in requirements.replace("\\\n", " ").splitlines():
        line = re.sub(r"(^|\s)#.*", "", raw)
        line = re.sub(r"\s--hash[=\s]\S+", "", line).strip()
        if not line or _INDEX_OPTIONS.match(line):
            continue
        match = _PIN.match(line)
        if match is None:
            return None
        pins[_normalize(match[1])] = match[3]
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


def _venv_site_packages(venv: Path) -> Path:
    """A venv's site-packages, found without starting its interpreter."""
    found = sorted(venv.glob("lib/python*/site-packages")) or sorted(venv.glob("Lib/site-packages"))
    return found[0] if found else _site_packages(str(venv / "bin" / "python"))


def _installed(venv: Path) -> set[str]:
    return {
        _normalize(p.name.split("-", 1)[0]) for p in _venv_site_packages(venv).glob("*.dist-info")
    }


def _add_meadow_core(venv: Path) -> None:
    target = _venv_site_packages(venv) / "meadow_core"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(_runtime.PACKAGE_ROOT, target, ignore=shutil.ignore_patterns("__pycache__"))


def _install(
    venv: Path,
    requirements: Path | None,
    runtime: list[str],
    pins: dict[str, str] | None,
    exact: bool = False,
) -> None:
    """One ``uv pip install`` of the user's requirements and Meadow's runtime together.
    With exact pins, uv's cache is asked first (``--offline``): the index could only
    name the same versions, and asking it costs about 0.5 s even with a warm cache."""
    args = ["pip", "install", "--python", str(venv / "bin" / "python")]
    args += ["-r", str(requirements)] if requirements is not None else []
    args += [*runtime, *(["--exact"] if exact else [])]
    if pins is not None:
        try:
            run_uv([*args, "--offline"])
        except EnvironmentBuildError as exc:
            log.debug("not all in uv's cache, asking the index: %s", exc)
        else:
            chosen = (
                _installed(venv) - set(pins) - {_normalize(_requirement_name(r)) for r in runtime}
            )
            if chosen:
                # Dependencies nobody pinned came from the cache: let the index choose them.
                log.debug("unpinned %s: asking the index", sorted(chosen))
                run_uv([*args, "--upgrade"])
            return
    run_uv(args)


def _add_meadow_runtime(target: Path) -> None:
    _install(target, None, meadow_runtime_requirements(), {})
    _add_meadow_core(target)


#: In a cache entry: the entry is complete (every other file is in place).
_COMPLETE = ".complete"
#: In a cache entry: its archive is in the store, or it never goes there.
_SHARED = ".shared"
#: In a built environment: what it was built from, to derive a neighbour from it.
_BUILD_RECORD = ".meadow-build.json"
_MARKERS = frozenset({_COMPLETE, _SHARED, _BUILD_RECORD})


def _requirements_file(spec: EnvironmentSpec, work: Path) -> Path:
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
    return work / "req.txt"


_SAME_IN_NEIGHBOURS = ("python", "platform", "runtime")


def _closest(cache_root: Path, wanted: dict[str, Any]) -> Path | None:
    """The complete environment here sharing the most pins with ``wanted`` (at least
    half of them), built for the same Python, platform and Meadow runtime."""
    pins: dict[str, str] = wanted["pins"]
    best, best_shared = None, 0
    for path in cache_root.iterdir():
        if path.name.startswith(".") or not (path / _COMPLETE).exists():
            continue
        try:
            record = json.loads((path / _BUILD_RECORD).read_text())
        except (OSError, ValueError):
            continue
        if any(record.get(k) != wanted[k] for k in _SAME_IN_NEIGHBOURS):
            continue
        shared = sum(1 for n, v in dict(record.get("pins", {})).items() if pins.get(n) == v)
        if shared * 2 >= len(pins) and shared > best_shared:
            best, best_shared = path, shared
    return best


def _not_seeded(folder: str, names: list[str]) -> set[str]:
    return set(_MARKERS.intersection(names))


def _link_or_copy(source: str, destination: str) -> None:
    """Hard links, as uv installs from its own cache: nothing writes into an installed
    file (uv replaces files, Python writes bytecode beside them)."""
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def _build(spec: EnvironmentSpec, target: Path, work: Path, cache_root: Path) -> None:
    """Build ``target``: from the closest environment on this machine when the
    requirements are exact pins (uv then swaps only what differs), else from scratch."""
    requirements = _requirements_file(spec, work)
    text = requirements.read_text()
    pins = exact_pins(text)
    named = {
        _normalize(_requirement_name(line))
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith(("#", "-"))
    }
    # A package the user names is theirs to pin, as when the runtime went in first.
    runtime = [
        r for r in meadow_runtime_requirements() if _normalize(_requirement_name(r)) not in named
    ]
    record = {
        "python": spec.python_version,
        "platform": spec.platform,
        "runtime": runtime,
        "pins": pins,
    }
    seed = _closest(cache_root, record) if pins else None
    if seed is not None:
        try:
            shutil.copytree(
                seed, target, symlinks=True, ignore=_not_seeded, copy_function=_link_or_copy
            )
            _install(target, requirements, runtime, pins, exact=True)
            log.info("derived the environment from %s", seed.name)
        except (EnvironmentBuildError, OSError) as exc:
            log.info("deriving from %s failed (%s); building from scratch", seed.name, exc)
            shutil.rmtree(target, ignore_errors=True)
            seed = None
    if seed is None:
        run_uv(["venv", "--relocatable", "--python", _python_for(spec.python_version), str(target)])
        try:
            _install(target, requirements, runtime, pins)
        except EnvironmentBuildError:
            # The runtime's pins and the user's requirements disagree (or the latter do
            # not install at all): runtime first, then the user's versions win.
            _install(target, None, runtime, {})
            _install(target, requirements, [], None)
    _add_meadow_core(target)  # a neighbour's copy may be another Meadow's
    if pins is not None:
        (target / _BUILD_RECORD).write_text(json.dumps(record, sort_keys=True))


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


#: Archive formats, newest first: zstd through the ``tar`` and ``zstd`` programs where
#: both exist (packs and unpacks several times faster), else gzip (every older store).
_ZSTD, _GZIP = ".tar.zst", ".tar.gz"


def entry_name(spec_key: str) -> str:
    """An environment's name in caches and the store: its spec's hash and the Meadow
    runtime it carries. An environment holds a copy of ``meadow_core``, so after an
    upgrade an old one would run an old worker beside a new agent; instead the new
    runtime gets its own entry (derived from the old one when the pins are exact)."""
    return f"{spec_key.rsplit('/', 1)[-1]}-{_runtime.runtime_id()[:16]}"


def packed_key(spec_key: str, suffix: str = _ZSTD) -> str:
    """Where an environment's archive is stored (``suffix`` names the format)."""
    return f"{keys.ENV_PACKED}/{entry_name(spec_key)}{suffix}"


def packed_spec(archive_key: str) -> str | None:
    """The spec an archive in the store was built from, whatever its runtime."""
    if not archive_key.startswith(keys.ENV_PACKED + "/"):
        return None
    name = archive_key.rsplit("/", 1)[-1].split(".", 1)[0]
    return f"{keys.ENV_SPECS}/{name.rsplit('-', 1)[0]}"


@functools.cache
def _zstd_tar() -> bool:
    return shutil.which("tar") is not None and shutil.which("zstd") is not None


def stored_archive(spec_key: str, store: ObjectStore) -> str | None:
    """The key of an archive of this environment in ``store`` that this machine can
    unpack, newest format first; None if there is none."""
    for suffix in (_ZSTD, _GZIP) if _zstd_tar() else (_GZIP,):
        if store.exists(packed_key(spec_key, suffix)):
            return packed_key(spec_key, suffix)
    return None


def _tar(args: list[str], data: bytes | None = None, packing: bool = False) -> bytes:
    result = subprocess.run(
        ["tar", *args],
        input=data,
        capture_output=True,
        timeout=1800,
        preexec_fn=_die_with_agent if _PRCTL is not None else None,
    )
    # 1 while packing: a file changed while it was read (a task writing bytecode); the
    # archive is whole. Anything else is a failure.
    if result.returncode not in (0, 1) or (result.returncode == 1 and not packing):
        words = result.stderr.decode(errors="replace").strip()
        raise EnvironmentBuildError(f"tar {' '.join(args[:2])}: {words}")
    return result.stdout


def _pack(folder: Path, archive: Path) -> str:
    """Write the environment into ``archive`` (a file, never memory: an environment can
    be gigabytes), without this machine's markers and bytecode; returns the suffix."""
    if _zstd_tar():
        excludes = [f"--exclude=./{name}" for name in (_COMPLETE, _SHARED)]
        excludes.append("--exclude=__pycache__")
        _tar(["--zstd", "-c", "-C", str(folder), *excludes, "-f", str(archive), "."], packing=True)
        return _ZSTD

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        name = Path(info.name)
        if name.name == "__pycache__" or str(name) in (_COMPLETE, _SHARED):
            return None
        return info

    with tarfile.open(archive, mode="w:gz", compresslevel=1) as tar:
        tar.add(folder, arcname=".", filter=keep)
    return _GZIP


def _unpack(suffix: str, source: bytes | Path, target: Path) -> None:
    """Unpack with the ``tar`` program where there is one (Python's tarfile takes
    several times as long for an environment's hundreds of small files), from the
    stored file itself when there is one (a gigabyte archive never enters memory). The
    store is trusted as it is for pickled functions."""
    target.mkdir()
    if shutil.which("tar") is not None:
        flags = ["--zstd" if suffix == _ZSTD else "-z", "-x", "-C", str(target), "-f"]
        if isinstance(source, Path):
            _tar([*flags, str(source)])
        else:
            _tar([*flags, "-"], source)
        return
    with (
        tarfile.open(source, mode="r:gz")
        if isinstance(source, Path)
        else tarfile.open(fileobj=io.BytesIO(source), mode="r:gz") as tar
    ):
        tar.extractall(target, filter="tar")


# -- sharing with the store, off the task's path --------------------------------------------

_uploads: dict[str, threading.Thread] = {}
_failed_uploads: set[str] = set()
_uploads_lock = threading.Lock()


def _upload(spec_key: str, store: ObjectStore, target: Path) -> None:
    """Pack ``target`` into the store, under its key's lock (so one process packs it);
    the store writes atomically, so it never holds part of an archive."""
    try:
        with filelock.FileLock(str(target) + ".lock"):
            if (target / _SHARED).exists() or not (target / _COMPLETE).exists():
                return
            if any(store.exists(packed_key(spec_key, s)) for s in (_ZSTD, _GZIP)):
                (target / _SHARED).touch()  # another machine (or an older Meadow) packed it
                return
            started = time.monotonic()
            # One scratch place per key, under its lock: what a killed packer left there
            # is cleared by the next one instead of filling the disk.
            scratch = target.parent / f".pack-{target.name}"
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir()
            try:
                archive = scratch / "environment.tar"
                suffix = _pack(target, archive)
                size = archive.stat().st_size
                store.put_file(packed_key(spec_key, suffix), archive)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            (target / _SHARED).touch()
            log.info(
                "packed environment %s into the store (%.1f MB, %.2fs)",
                target.name,
                size / 1e6,
                time.monotonic() - started,
            )
    except Exception:
        log.warning("could not pack environment %s into the store", target.name, exc_info=True)
        with _uploads_lock:
            _failed_uploads.add(str(target))


def _share(spec_key: str, store: ObjectStore, target: Path, wait: bool) -> None:
    """Make sure ``target``'s archive is in the store or on its way there."""
    if (target / _SHARED).exists():
        return
    with _uploads_lock:
        thread = _uploads.get(str(target))
        if thread is None or not thread.is_alive():
            if str(target) in _failed_uploads and not wait:
                return  # logged once; a waiting caller tries again
            _failed_uploads.discard(str(target))
            thread = threading.Thread(
                target=_upload,
                args=(spec_key, store, target),
                name=f"meadow-pack-{target.name[:12]}",
                daemon=True,
            )
            _uploads[str(target)] = thread
            thread.start()
    if wait:
        thread.join()
        if not (target / _SHARED).exists():
            raise EnvironmentBuildError(
                f"environment {target.name} was built but could not be packed into the "
                "store (see the log)"
            )


def wait_for_uploads(timeout: float | None = None) -> bool:
    """Wait for every background upload of this process; False if some still run."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with _uploads_lock:
        threads = list(_uploads.values())
    for thread in threads:
        thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
    return not any(t.is_alive() for t in threads)


@contextlib.contextmanager
def _staging(cache_root: Path, python_version: str) -> Iterator[Path]:
    """An empty staging folder, at one of a few paths that are used again and again:
    uv remembers an interpreter by its path, so a venv built where an earlier one was
    spares uv starting the new venv's Python to ask it (about 60 ms a build). What a
    killed build left in the folder is removed first."""
    for slot in itertools.count():
        lock = filelock.FileLock(str(cache_root / f".slot-{python_version}-{slot}.lock"))
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            continue
        try:
            staging = cache_root / f".staging-{python_version}-{slot}"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            try:
                yield staging
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        finally:
            lock.release()
        return


def ensure_environment(
    spec_key: str, store: ObjectStore, cache_root: Path, wait_for_upload: bool = True
) -> str:
    """The interpreter of the environment named by ``spec_key`` (an object holding an
    ``EnvironmentSpec``), built, downloaded or cached as needed.

    A build's archive goes to the store after the environment is in place; with
    ``wait_for_upload`` (the default) this returns once it is stored, else it is packed
    in the background (``wait_for_uploads`` waits for it) and a task can start at once.
    """
    target = cache_root / entry_name(spec_key)
    python = str(target / "bin" / "python")
    try:  # a complete entry never changes: no lock needed to use it
        os.utime(target / _COMPLETE)  # for least-recently-used pruning
    except FileNotFoundError:
        pass
    else:
        _share(spec_key, store, target, wait_for_upload)
        return python
    cache_root.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(target) + ".lock"):
        if (target / _COMPLETE).exists():
            os.utime(target / _COMPLETE)
        else:
            built = _make(spec_key, store, cache_root, target)
            if built is not None:
                return built
    _share(spec_key, store, target, wait_for_upload)
    return python


def keep_recent(cache_root: Path, keep: int) -> list[str]:
    """Remove all but the ``keep`` most recently used complete entries (one in use by a
    build or upload here is skipped); returns the names removed. For caches nobody
    prunes by hand, like the copies a caller builds only to pack into a bucket."""
    entries = sorted(
        (p for p in cache_root.iterdir() if (p / _COMPLETE).exists()),
        key=lambda p: (p / _COMPLETE).stat().st_mtime,
        reverse=True,
    )
    removed = []
    for path in entries[keep:]:
        lock = filelock.FileLock(str(path) + ".lock")
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            continue
        try:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
        finally:
            lock.release()
            Path(str(path) + ".lock").unlink(missing_ok=True)
    return removed


def _make(spec_key: str, store: ObjectStore, cache_root: Path, target: Path) -> str | None:
    """Under the key's lock: put a complete entry at ``target`` (None), or name an
    interpreter that needs none."""
    key = spec_key.rsplit("/", 1)[-1]
    # We hold the key's lock: an incomplete entry is from a build that was killed (as
    # are staging folders named after the key, from Meadow before staging slots).
    for leftover in cache_root.glob(f".staging-{key}-*"):
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
    with _staging(cache_root, spec.python_version) as staging:
        venv = staging / "venv"
        started = time.monotonic()
        archive = None if spec.kind == "preinstalled" else stored_archive(spec_key, store)
        if spec.kind == "preinstalled":  # machine-specific: never shared via the store
            _build_over_preinstalled(spec, venv)
            (venv / _SHARED).touch()
        elif archive is not None:
            log.info("unpacking environment %s from the store", key)
            local_file = store.local_path(archive)
            _unpack(archive[archive.index(".tar") :], local_file or store.get(archive), venv)
            (venv / _SHARED).touch()
        else:
            _build(spec, venv, staging / "work", cache_root)
            log.info("built environment %s in %.1fs", key, time.monotonic() - started)
        (venv / _COMPLETE).touch()
        os.replace(venv, target)
    return None
