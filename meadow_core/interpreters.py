"""Interpreters a deployment can ask for, turned into environment specs on the caller.

An ``EnvironmentSpec`` is plain data: the requirements (or a uv project's lock) text,
the Python version and the platform. Its hash names the environment everywhere: the
agent builds it with uv once per key, packs it into the object store, and every other
machine with the same key unpacks instead of building (``envcache``). Everything that
can be checked here is checked here, before a machine is touched.
"""

from __future__ import annotations

import abc
import dataclasses
import platform
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from meadow_core import protocol
from meadow_core.errors import InvalidRequestError


@dataclasses.dataclass(frozen=True)
class EnvironmentSpec:
    """What an environment contains; equal specs share one build."""

    kind: str  # "requirements" | "uv_project"
    requirements: str  # requirements.txt text, or the uv project's pyproject.toml
    lock: str | None  # uv.lock text for "uv_project"
    python_version: str  # "3.11"
    platform: str  # "linux-x86_64"

    def to_bytes(self) -> bytes:
        return protocol.pack(dataclasses.asdict(self))

    @classmethod
    def from_bytes(cls, data: bytes) -> EnvironmentSpec:
        raw = protocol.unpack(data)
        raw.pop("v", None)
        return cls(**raw)

    @property
    def key(self) -> str:
        return protocol.content_key(self.to_bytes(), "envs/specs")


def _python_version(requested: str | None) -> str:
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


def _platform() -> str:
    return f"{sys.platform}-{platform.machine()}"


def _read(path: str, what: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise InvalidRequestError(f"{what} {path!r} cannot be read: {exc.strerror}") from exc


class InterpreterSpec(abc.ABC):
    """An interpreter Meadow builds for the job (Meadowrun's ``InterpreterSpecFile`` and
    ``LocalInterpreter`` families)."""

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


@dataclasses.dataclass(frozen=True)
class PipRequirementsFile(InterpreterSpec):
    """A requirements file (e.g. from ``pip freeze``) installed with uv."""

    path_to_requirements_file: str
    python_version: str | None = None
    additional_software: Any = None

    def environment_spec(self) -> EnvironmentSpec:
        _no_additional_software(self.additional_software)
        text = _read(self.path_to_requirements_file, "the requirements file")
        return EnvironmentSpec(
            "requirements", text, None, _python_version(self.python_version), _platform()
        )


@dataclasses.dataclass(frozen=True)
class UvProjectPath(InterpreterSpec):
    """A uv project: a folder with ``pyproject.toml`` and ``uv.lock``; installs exactly
    the locked versions."""

    path_to_project: str
    python_version: str | None = None
    additional_software: Any = None

    def environment_spec(self) -> EnvironmentSpec:
        _no_additional_software(self.additional_software)
        folder = Path(self.path_to_project)
        pyproject = _read(str(folder / "pyproject.toml"), "the project file")
        lock = _read(str(folder / "uv.lock"), "the lock file")
        for name, text in (("pyproject.toml", pyproject), ("uv.lock", lock)):
            try:
                tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                raise InvalidRequestError(
                    f"{folder / name} is not valid TOML ({exc}); regenerate it with `uv lock`"
                ) from exc
        return EnvironmentSpec(
            "uv_project", pyproject, lock, _python_version(self.python_version), _platform()
        )


@dataclasses.dataclass(frozen=True)
class LocalPipInterpreter(InterpreterSpec):
    """A local interpreter (plain install or virtualenv) rebuilt from its ``pip freeze``;
    editable installs are left out (they travel as code)."""

    path_to_interpreter: str
    python_version: str | None = None
    additional_software: Any = None

    def environment_spec(self) -> EnvironmentSpec:
        _no_additional_software(self.additional_software)
        try:
            frozen = subprocess.run(
                [self.path_to_interpreter, "-m", "pip", "freeze", "--exclude-editable"],
                capture_output=True,
                text=True,
                check=True,
                timeout=120,
            ).stdout
        except (OSError, subprocess.CalledProcessError) as exc:
            raise InvalidRequestError(
                f"could not run pip freeze with {self.path_to_interpreter!r}: {exc}"
            ) from exc
        return EnvironmentSpec(
            "requirements", frozen, None, _python_version(self.python_version), _platform()
        )


def _no_additional_software(value: Any) -> None:
    if value:
        raise NotImplementedError(
            "additional_software (system packages) needs container images, which are not "
            "implemented yet"
        )
