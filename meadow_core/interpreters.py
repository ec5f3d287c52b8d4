"""Interpreters a deployment can ask for, turned into environment specs on the caller.

An ``EnvironmentSpec`` is plain data: the requirements (or a uv project's lock) text,
the Python version, the platform and any system (apt) packages. Its hash names the
environment everywhere: the agent builds it with uv once per key, packs it into the
object store, and every other machine with the same key unpacks instead of building
(``envcache``); a spec with system packages is built as a container image instead.

Everything that can be checked here is checked here, before a machine is touched:
missing or unparsable files, the Python version, and whether the requirements resolve
at all (``uv pip compile`` for the target Python and platform, remembered per spec key
in the user cache so a repeated deployment costs a file lookup). A poetry project is
turned into pinned requirements from its ``poetry.lock``, so no poetry is needed
anywhere. Conda is refused with a pointer to what works instead.
"""

from __future__ import annotations

import abc
import collections
import dataclasses
import functools
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import platformdirs

from meadow_core import keys, protocol
from meadow_core.errors import InvalidRequestError

#: ``PreinstalledInterpreter(MEADOW_INTERPRETER)``: the agent's own interpreter
#: (Meadowrun's ``MEADOWRUN_INTERPRETER``), for tasks that need nothing but the stdlib.
MEADOW_INTERPRETER = "MEADOW_INTERPRETER"

#: Set to ``0`` to skip the caller-side resolution check (e.g. an index only the
#: machines can reach).
RESOLVE_VARIABLE = "MEADOW_RESOLVE_ON_CALLER"


@dataclasses.dataclass(frozen=True)
class EnvironmentSpec:
    """What an environment contains; equal specs share one build."""

    kind: str  # "requirements" | "uv_project" | "preinstalled"
    requirements: str  # requirements text, a uv project's pyproject.toml, or a path
    lock: str | None  # uv.lock text for "uv_project"
    python_version: str  # "3.11"
    platform: str  # "linux-x86_64"
    system_packages: tuple[str, ...] = ()  # apt packages, sorted; needs a container

    def to_bytes(self) -> bytes:
        data = dataclasses.asdict(self)
        if self.system_packages:
            data["system_packages"] = list(self.system_packages)
        else:
            del data["system_packages"]  # keys of specs without them stay as they were
        return protocol.pack(data)

    @classmethod
    def from_bytes(cls, data: bytes) -> EnvironmentSpec:
        raw = protocol.unpack(data)
        raw.pop("v", None)
        raw["system_packages"] = tuple(raw.get("system_packages", ()))
        return cls(**raw)

    @property
    def key(self) -> str:
        return protocol.content_key(self.to_bytes(), keys.ENV_SPECS)


# -- checks shared by every interpreter ---------------------------------------------------


def python_version_of(requested: str | None) -> str:
    version = requested or f"{sys.version_info.major}.{sys.version_info.minor}"
    parts = version.split(".")
    if not (2 <= len(parts) <= 3 and all(p.isdigit() for p in parts)):
        raise InvalidRequestError(f"python_version {version!r} must look like '3.11' or '3.11.7'")
    if ".".join(parts[:2]) != f"{sys.version_info.major}.{sys.version_info.minor}":
        # cloudpickle needs the same minor version on both ends.
        raise InvalidRequestError(
            f"python_version {version!r} differs from the caller's Python "
            f"{sys.version_info.major}.{sys.version_info.minor}; functions pickled here only "
            "load on the same minor version"
        )
    return ".".join(parts[:2])


def target_platform() -> str:
    return f"{sys.platform}-{platform.machine()}"


_UV_PLATFORMS = {
    "linux-x86_64": "x86_64-unknown-linux-gnu",
    "linux-aarch64": "aarch64-unknown-linux-gnu",
    "darwin-arm64": "aarch64-apple-darwin",
    "darwin-x86_64": "x86_64-apple-darwin",
    "win32-AMD64": "x86_64-pc-windows-msvc",
}

_APT_NAME = re.compile(r"^[a-z0-9][a-z0-9+.\-]+(=[A-Za-z0-9.+~:\-]+)?$")


def system_packages(additional_software: str | Iterable[str] | None) -> tuple[str, ...]:
    """``additional_software`` (apt package names, a string or a list) as the sorted
    tuple an ``EnvironmentSpec`` keys on."""
    if not additional_software:
        return ()
    names = (
        additional_software.split()
        if isinstance(additional_software, str)
        else [str(n).strip() for n in additional_software]
    )
    for name in names:
        if not _APT_NAME.match(name):
            raise InvalidRequestError(
                f"additional_software entry {name!r} is not an apt package name "
                "(like 'libpq5' or 'libpq5=15.6-0+deb12u1')"
            )
    return tuple(sorted(set(names)))


def _read(path: str | Path, what: str, hint: str = "") -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise InvalidRequestError(
            f"{what} {str(path)!r} cannot be read: {exc.strerror}{hint}"
        ) from exc


def _toml(path: Path, text: str, regenerate: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidRequestError(
            f"{path} is not valid TOML ({exc}); regenerate it with `{regenerate}`"
        ) from exc


@functools.cache
def uv_binary() -> str:
    """The uv executable: the one the ``uv`` wheel (a Meadow dependency) ships, else the
    one on PATH. The wheel's comes first: it is the version Meadow declares, and a
    ``uv`` on PATH may be a shim (pyenv's costs about 0.2 s a call, and Meadow makes
    several calls per environment)."""
    try:
        import uv

        return str(uv.find_uv_bin())
    except (ImportError, FileNotFoundError):
        pass
    found = shutil.which("uv")
    if found:
        return found
    raise InvalidRequestError("uv is needed to resolve and build environments; pip install uv")


def _resolution_cache() -> Path:
    base = os.environ.get("MEADOW_CACHE_DIR") or platformdirs.user_cache_dir("meadow")
    return Path(base) / "resolved"


def _uv_offline_first(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run uv with ``--offline`` first: if uv's cache alone answers, the requirements
    resolve (asking the index costs about 0.5 s even with a warm cache); otherwise ask
    the index, whose answer (and error message) is the one that counts."""
    env = dict(os.environ, UV_PYTHON_DOWNLOADS=os.environ.get("UV_PYTHON_DOWNLOADS", "never"))
    result = subprocess.CompletedProcess[str](args, 1, "", "")
    for extra in (["--offline"], []):
        result = subprocess.run(
            [uv_binary(), *args, *extra],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if result.returncode == 0:
            break
    return result


def check_resolvable(spec: EnvironmentSpec, source: str) -> EnvironmentSpec:
    """Refuse a spec uv cannot resolve for its Python version and platform, with uv's
    own words; a spec that resolved once is remembered (per key) and not checked again."""
    if spec.kind == "preinstalled" or os.environ.get(RESOLVE_VARIABLE, "1") == "0":
        return spec
    marker = _resolution_cache() / spec.key.rsplit("/", 1)[-1]
    if marker.exists():
        return spec
    with tempfile.TemporaryDirectory(prefix="meadow-resolve-") as work:
        folder = Path(work)
        if spec.kind == "uv_project":
            (folder / "pyproject.toml").write_text(spec.requirements)
            (folder / "uv.lock").write_text(spec.lock or "")
            args = ["export", "--frozen", "--no-hashes", "--no-emit-project", "-o", "out.txt"]
        else:
            (folder / "requirements.in").write_text(spec.requirements)
            args = ["pip", "compile", "requirements.in", "--python-version"]
            args += [spec.python_version, "--no-header", "--quiet", "-o", "out.txt"]
            if spec.platform in _UV_PLATFORMS:
                args += ["--python-platform", _UV_PLATFORMS[spec.platform]]
            if spec.python_version == f"{sys.version_info.major}.{sys.version_info.minor}":
                # Our own interpreter: spares uv a search of PATH (shims can be slow).
                args += ["--python", sys.executable]
        result = _uv_offline_first(args, folder)
        if result.returncode != 0:
            words = (result.stderr or result.stdout).strip()
            raise InvalidRequestError(
                f"{source} does not resolve for Python {spec.python_version} on "
                f"{spec.platform}:\n{words}\n(set {RESOLVE_VARIABLE}=0 to skip this check "
                "if only the machines can reach your package index)"
            )
        marker.parent.mkdir(parents=True, exist_ok=True)
        staged = marker.with_name(f".{marker.name}.{os.getpid()}")
        shutil.copyfile(folder / "out.txt", staged)
        os.replace(staged, marker)
    return spec


_EDITABLE_PATH = re.compile(r"^\s*(-e|--editable)[\s=]+(?!\S*://)(?!git\+)")


def _without_local_editables(text: str) -> str:
    """Drop ``-e ./path`` lines: that code is the caller's own and travels as code
    (a remote ``-e git+https://...`` stays)."""
    return "".join(
        line for line in text.splitlines(keepends=True) if not _EDITABLE_PATH.match(line)
    )


# -- the interpreter classes --------------------------------------------------------------


class InterpreterSpec(abc.ABC):
    """An interpreter a deployment asks for (Meadowrun's interpreter families)."""

    @abc.abstractmethod
    def environment_spec(self) -> EnvironmentSpec:
        """Read and check the local files; raise ``InvalidRequestError`` naming the fix."""

    def in_folder(self, folder: Path) -> InterpreterSpec:
        """The same spec with its file paths relative to ``folder`` (a git checkout)."""
        changes = {
            f.name: str(folder / getattr(self, f.name))
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
            if f.name.startswith("path_to_") and f.name != "path_to_interpreter"
        }
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


class LocalInterpreter(InterpreterSpec):
    """An interpreter on the caller's machine, rebuilt on the machine from what it has
    installed; it makes no sense inside a git repository."""


class InterpreterSpecFile(InterpreterSpec):
    """A file (requirements, lock, environment.yml) describing an environment; with
    ``Deployment.git_repo`` its path is relative to the repository."""


@dataclasses.dataclass(frozen=True)
class PipRequirementsFile(InterpreterSpecFile):
    """A requirements file (e.g. from ``pip freeze``) installed with uv. Local editable
    lines (``-e ./pkg``) are dropped: that code travels as code."""

    path_to_requirements_file: str
    python_version: str | None = None
    additional_software: str | Iterable[str] | None = None

    def environment_spec(self) -> EnvironmentSpec:
        packages = system_packages(self.additional_software)
        text = _read(self.path_to_requirements_file, "the requirements file")
        spec = EnvironmentSpec(
            "requirements",
            _without_local_editables(text),
            None,
            python_version_of(self.python_version),
            target_platform(),
            packages,
        )
        return check_resolvable(spec, self.path_to_requirements_file)


@dataclasses.dataclass(frozen=True)
class PipRequirementsString(InterpreterSpecFile):
    """Requirements written in code instead of a file (Meadowrun's class of this name):
    ``packages_to_install`` is a list of requirement lines, joined with newlines into a
    requirements file, or that file's text as one string. Installed with uv like
    ``PipRequirementsFile``; local editable lines are dropped."""

    packages_to_install: str | Sequence[str]
    python_version: str | None = None
    additional_software: str | Iterable[str] | None = None

    def environment_spec(self) -> EnvironmentSpec:
        packages = system_packages(self.additional_software)
        lines = self.packages_to_install
        if not isinstance(lines, str):
            if not all(isinstance(line, str) for line in lines):
                raise InvalidRequestError(
                    "PipRequirementsString(packages_to_install=...) must be a list of "
                    "requirement strings like ['pandas==2.2.2'], or a requirements text"
                )
            lines = "\n".join(lines) + "\n"
        spec = EnvironmentSpec(
            "requirements",
            _without_local_editables(lines),
            None,
            python_version_of(self.python_version),
            target_platform(),
            packages,
        )
        return check_resolvable(spec, "PipRequirementsString")


@dataclasses.dataclass(frozen=True)
class UvProjectPath(InterpreterSpecFile):
    """A uv project: a folder with ``pyproject.toml`` and ``uv.lock``; installs exactly
    the locked versions (not the project itself: it travels as code)."""

    path_to_project: str
    python_version: str | None = None
    additional_software: str | Iterable[str] | None = None

    def environment_spec(self) -> EnvironmentSpec:
        packages = system_packages(self.additional_software)
        folder = Path(self.path_to_project)
        pyproject = _read(folder / "pyproject.toml", "the project file")
        lock = _read(folder / "uv.lock", "the lock file", "; create it with `uv lock`")
        _toml(folder / "pyproject.toml", pyproject, "uv lock")
        _toml(folder / "uv.lock", lock, "uv lock")
        spec = EnvironmentSpec(
            "uv_project",
            pyproject,
            lock,
            python_version_of(self.python_version),
            target_platform(),
            packages,
        )
        return check_resolvable(spec, str(folder / "uv.lock"))


@dataclasses.dataclass(frozen=True)
class PoetryProjectPath(InterpreterSpecFile):
    """A poetry project: a folder with ``pyproject.toml`` and ``poetry.lock``. The lock's
    main-group packages become pinned requirements (markers kept), installed with uv,
    so neither the caller nor the machine needs poetry."""

    path_to_project: str
    python_version: str | None = None
    additional_software: str | Iterable[str] | None = None

    def environment_spec(self) -> EnvironmentSpec:
        packages = system_packages(self.additional_software)
        folder = Path(self.path_to_project)
        pyproject_path, lock_path = folder / "pyproject.toml", folder / "poetry.lock"
        pyproject = _toml(pyproject_path, _read(pyproject_path, "the project file"), "poetry lock")
        lock_text = _read(lock_path, "the lock file", "; create it with `poetry lock`")
        lock = _toml(lock_path, lock_text, "poetry lock")
        requirements = poetry_requirements(pyproject, lock, lock_path)
        spec = EnvironmentSpec(
            "requirements",
            requirements,
            None,
            python_version_of(self.python_version),
            target_platform(),
            packages,
        )
        return check_resolvable(spec, str(lock_path))


@dataclasses.dataclass(frozen=True)
class LocalPipInterpreter(LocalInterpreter):
    """A local interpreter (plain install or virtualenv) rebuilt from what it has
    installed (``uv pip freeze``, which needs no pip in it); editable installs are left
    out (they travel as code). The environment is that interpreter's Python version
    (asked of it), not the caller's; ``python_version``, if given, must agree with it."""

    path_to_interpreter: str
    python_version: str | None = None
    additional_software: str | Iterable[str] | None = None

    def environment_spec(self) -> EnvironmentSpec:
        packages = system_packages(self.additional_software)
        if not os.path.exists(self.path_to_interpreter):
            raise InvalidRequestError(
                f"LocalPipInterpreter: {self.path_to_interpreter!r} does not exist"
            )
        version = self._python_version()
        try:
            frozen = subprocess.run(
                [
                    uv_binary(),
                    "pip",
                    "freeze",
                    "--exclude-editable",
                    "--python",
                    self.path_to_interpreter,
                ],
                capture_output=True,
                text=True,
                check=True,
                timeout=120,
            ).stdout
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = getattr(exc, "stderr", None) or exc
            raise InvalidRequestError(
                f"could not list the packages of {self.path_to_interpreter!r}: {detail}"
            ) from exc
        spec = EnvironmentSpec("requirements", frozen, None, version, target_platform(), packages)
        return check_resolvable(spec, f"the packages of {self.path_to_interpreter}")

    def _python_version(self) -> str:
        """The interpreter's own major.minor, checked like any requested version."""
        try:
            actual = subprocess.run(
                [
                    self.path_to_interpreter,
                    "-c",
                    "import sys; print(*sys.version_info[:3], sep='.')",
                ],
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            detail = getattr(exc, "stderr", None) or exc
            raise InvalidRequestError(
                f"LocalPipInterpreter: cannot run {self.path_to_interpreter!r} to ask its "
                f"Python version: {detail}"
            ) from exc
        minor = ".".join(actual.split(".")[:2])
        if self.python_version and ".".join(self.python_version.split(".")[:2]) != minor:
            raise InvalidRequestError(
                f"LocalPipInterpreter: python_version {self.python_version!r} is not the "
                f"version of {self.path_to_interpreter!r}, which is Python {actual}; leave "
                "python_version out"
            )
        try:
            return python_version_of(self.python_version or actual)
        except InvalidRequestError as exc:
            raise InvalidRequestError(
                f"LocalPipInterpreter({self.path_to_interpreter!r}) is Python {actual}: {exc}"
            ) from exc


@dataclasses.dataclass(frozen=True)
class LocalCurrentInterpreter(LocalInterpreter):
    """The caller's own environment, as ``mirror_local`` uses by default (Meadowrun's
    class of this name); useful to add ``additional_software`` (apt packages, which
    make the environment a container image). What it is rebuilt from is found by
    ``detect_local_interpreter``: a uv or poetry project around the working directory,
    else this interpreter's installed packages."""

    additional_software: str | Iterable[str] | None = None

    def environment_spec(self) -> EnvironmentSpec:
        found = detect_local_interpreter()
        if self.additional_software:
            found = dataclasses.replace(  # type: ignore[type-var]
                found, additional_software=self.additional_software
            )
        return found.environment_spec()


_CONDA_INSTEAD = (
    "run in a container image instead (Deployment.container_image), or describe the "
    "environment for pip/uv (PipRequirementsFile, UvProjectPath, PoetryProjectPath or "
    "LocalPipInterpreter)"
)


def _conda_unavailable(what: str) -> NoReturn:
    if shutil.which("conda") is None:
        raise InvalidRequestError(
            f"{what} needs conda, which is not on PATH here; {_CONDA_INSTEAD}"
        )
    raise NotImplementedError(
        f"{what}: building conda environments is not implemented yet; {_CONDA_INSTEAD}"
    )


@dataclasses.dataclass(frozen=True)
class LocalCondaInterpreter(LocalInterpreter):
    """A local conda environment (name or path), to be rebuilt from ``conda env
    export``. Not built yet: refused on the caller with what to use instead."""

    environment_name_or_path: str
    additional_software: str | Iterable[str] | None = None

    def environment_spec(self) -> EnvironmentSpec:
        system_packages(self.additional_software)
        _conda_unavailable(f"LocalCondaInterpreter({self.environment_name_or_path!r})")


@dataclasses.dataclass(frozen=True)
class CondaEnvironmentFile(InterpreterSpecFile):
    """A conda ``environment.yml`` (or ``conda list --explicit`` file). Not built yet:
    refused on the caller with what to use instead."""

    path_to_yml_file: str
    file_format: str | None = None  # None | "env_export" | "list"
    additional_software: str | Iterable[str] | None = None

    def environment_spec(self) -> EnvironmentSpec:
        system_packages(self.additional_software)
        if self.file_format not in (None, "env_export", "list"):
            raise InvalidRequestError(
                f"file_format {self.file_format!r} must be None, 'env_export' or 'list'"
            )
        _read(self.path_to_yml_file, "the conda environment file")
        _conda_unavailable(f"CondaEnvironmentFile({self.path_to_yml_file!r})")


@dataclasses.dataclass(frozen=True)
class PreinstalledInterpreter(InterpreterSpec):
    """An interpreter that already exists on the machine (e.g. in a custom image);
    nothing is built. ``MEADOW_INTERPRETER`` means the agent's own interpreter."""

    path_to_interpreter: str

    def environment_spec(self) -> EnvironmentSpec:
        path = self.path_to_interpreter
        if path != MEADOW_INTERPRETER and not os.path.isabs(path):
            raise InvalidRequestError(
                f"PreinstalledInterpreter path {path!r} must be absolute (it names a file "
                "on the machine, not on the caller)"
            )
        return EnvironmentSpec(
            "preinstalled", path, None, python_version_of(None), target_platform()
        )


def detect_local_interpreter(cwd: str | None = None) -> InterpreterSpec:
    """What the caller's own environment is, to rebuild it elsewhere (Meadowrun's
    ``LocalCurrentInterpreter``): an activated conda environment; else the nearest
    enclosing project with ``uv.lock`` or ``poetry.lock`` next to its
    ``pyproject.toml``; else this interpreter's installed packages."""
    conda_prefix = os.environ.get("CONDA_PREFIX")
    if conda_prefix and os.path.realpath(conda_prefix) == os.path.realpath(sys.prefix):
        return LocalCondaInterpreter(conda_prefix)
    folder = Path(cwd or os.getcwd()).resolve()
    for candidate in (folder, *folder.parents):
        if (candidate / "pyproject.toml").is_file():
            if (candidate / "uv.lock").is_file():
                return UvProjectPath(str(candidate))
            if (candidate / "poetry.lock").is_file():
                return PoetryProjectPath(str(candidate))
    return LocalPipInterpreter(sys.executable)


# -- poetry.lock to pinned requirements ---------------------------------------------------


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _and(left: str | None, right: str | None) -> str | None:
    if not left or left == right:
        return right or left
    if not right:
        return left
    return f"({left}) and ({right})"


_PEP508 = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?[^;]*(?:;(.*))?$")


def _root_dependencies(pyproject: dict[str, Any]) -> list[tuple[str, set[str], str | None]]:
    """The main group: ``[project].dependencies`` (poetry 2) and
    ``[tool.poetry.dependencies]``, without ``python`` and without optional extras."""
    roots: list[tuple[str, set[str], str | None]] = []
    for requirement in pyproject.get("project", {}).get("dependencies", []):
        match = _PEP508.match(requirement)
        if match:
            extras = {e.strip() for e in (match.group(2) or "").split(",") if e.strip()}
            roots.append((match.group(1), extras, (match.group(3) or "").strip() or None))
    poetry = pyproject.get("tool", {}).get("poetry", {}).get("dependencies", {})
    for name, constraint in poetry.items():
        if name.lower() == "python":
            continue
        for optional, marker, extras in _constraints(constraint):
            if not optional:
                roots.append((name, extras, marker))
    return roots


def _constraints(constraint: Any) -> list[tuple[bool, str | None, set[str]]]:
    """(optional, markers, extras) of each alternative of a poetry dependency."""
    alternatives = constraint if isinstance(constraint, list) else [constraint]
    result = []
    for alternative in alternatives:
        if isinstance(alternative, dict):
            result.append(
                (
                    bool(alternative.get("optional", False)),
                    alternative.get("markers") or None,
                    set(alternative.get("extras", [])),
                )
            )
        else:
            result.append((False, None, set()))
    return result


def poetry_requirements(pyproject: dict[str, Any], lock: dict[str, Any], lock_path: Path) -> str:
    """Pinned requirements for the main group of a poetry project, from its lock."""
    packages: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for package in lock.get("package", []):
        if not isinstance(package, dict) or "name" not in package or "version" not in package:
            raise InvalidRequestError(f"{lock_path} has a [[package]] without name and version")
        packages[_normalize(package["name"])].append(package)
    if any("groups" in p for ps in packages.values() for p in ps):
        # Lock format 2.1 (poetry 2): poetry wrote each package's groups and markers.
        chosen: dict[str, set[str | None]] = {}
        for name, versions in packages.items():
            for package in versions:
                if "main" in package.get("groups", []) and not package.get("optional"):
                    markers = package.get("markers")
                    if isinstance(markers, dict):
                        markers = markers.get("main")
                    chosen.setdefault(name, set()).add(markers or None)
    else:
        chosen = _walk(_root_dependencies(pyproject), packages, lock_path)
    lines: list[str] = []
    indexes: set[str] = set()
    for name in sorted(chosen):
        markers = chosen[name]
        marker = None if None in markers else " or ".join(f"({m})" for m in sorted(markers))  # type: ignore[type-var]
        for package in packages[name]:
            requirement = _pinned(package, lock_path, indexes)
            if requirement:
                lines.append(requirement + (f" ; {marker}" if marker else ""))
    header = [f"--extra-index-url {url}" for url in sorted(indexes)]
    return "\n".join(header + lines) + "\n"


def _walk(
    roots: list[tuple[str, set[str], str | None]],
    packages: dict[str, list[dict[str, Any]]],
    lock_path: Path,
) -> dict[str, set[str | None]]:
    """Lock formats 1.x and 2.0 do not say which group a package is in: follow the
    dependencies from the main group, combining markers along the way."""
    chosen: dict[str, set[str | None]] = {}
    extras_of: dict[str, set[str]] = collections.defaultdict(set)
    queue = collections.deque(roots)
    while queue:
        raw_name, extras, marker = queue.popleft()
        name = _normalize(raw_name)
        if name not in packages:
            raise InvalidRequestError(
                f"{raw_name} is a dependency but has no entry in {lock_path}; "
                "run `poetry lock` to update the lock"
            )
        seen = chosen.setdefault(name, set())
        new_extras = extras - extras_of[name]
        if (None in seen or marker in seen) and not new_extras:
            continue
        seen.add(marker)
        if marker is None or len(seen) > 8:  # unconditional, or too many alternatives
            seen.clear()
            seen.add(None)
            marker = None
        extras_of[name] |= extras
        for package in packages[name]:
            wanted_optionals = {
                _normalize(re.split(r"[\s(\[;<>=!~]", entry.strip(), maxsplit=1)[0])
                for extra in extras_of[name]
                for entry in package.get("extras", {}).get(extra, [])
            }
            for dep_name, constraint in package.get("dependencies", {}).items():
                for optional, dep_marker, dep_extras in _constraints(constraint):
                    if optional and _normalize(dep_name) not in wanted_optionals:
                        continue
                    queue.append((dep_name, dep_extras, _and(marker, dep_marker)))
    return chosen


def _pinned(package: dict[str, Any], lock_path: Path, indexes: set[str]) -> str | None:
    name, version = package["name"], package["version"]
    source = package.get("source") or {}
    kind = source.get("type")
    if kind == "git":
        ref = source.get("resolved_reference") or source.get("reference") or ""
        sub = f"#subdirectory={source['subdirectory']}" if source.get("subdirectory") else ""
        return f"{name} @ git+{source['url']}@{ref}{sub}"
    if kind == "url":
        return f"{name} @ {source['url']}"
    if kind in ("directory", "file"):
        if package.get("develop"):
            return None  # an editable path dependency: the caller's own code, shipped as code
        raise InvalidRequestError(
            f"{lock_path}: {name} comes from the local path {source.get('url')!r}, which "
            "another machine cannot install; publish it, use a git dependency, or put its "
            "folder on additional_sys_paths"
        )
    if kind == "legacy" and source.get("url"):
        indexes.add(source["url"])
    return f"{name}=={version}"
