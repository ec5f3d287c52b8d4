"""``Deployment``: the code and Python environment a job runs with.

``mirror_local`` runs with the caller's own interpreter (its ``sys.path`` in place, or a
content-addressed snapshot of its code), or with an environment built from a
requirements file, a uv or poetry project, a local pip interpreter, or an interpreter
preinstalled on the machine (``interpreters``). ``git_repo`` ships one commit of a
repository, fetched on the caller (with an SSH key from a ``secrets.Secret`` if it is
private). ``preinstalled_interpreter`` runs an interpreter the machine already has.
Conda environments are refused on the caller with what to use instead.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from meadow_core.code_snapshot import DEFAULT_EXTENSIONS, code_roots_of_sys_path
from meadow_core.errors import InvalidRequestError
from meadow_core.git_source import checkout
from meadow_core.interpreters import (
    MEADOW_INTERPRETER,
    EnvironmentSpec,
    InterpreterSpec,
    LocalCurrentInterpreter,
    LocalInterpreter,
    PreinstalledInterpreter,
)
from meadow_core.secrets import Secret

_NOT_YET = (
    "is not implemented yet: Meadow currently runs tasks with the caller's own interpreter, "
    "with its sys.path or a snapshot of its code (Deployment.mirror_local)"
)


@dataclasses.dataclass(frozen=True)
class CodeSelection:
    """Which of the caller's code ``mirror_local`` ships: roots in sys.path order, the
    file extensions taken from them (``None``: every file), and globs relative to the
    working directory."""

    roots: tuple[str, ...]
    extensions: tuple[str, ...] | None
    globs: tuple[str, ...]
    working_directory: str
    #: Per root, the folder of it that goes on sys.path ("" or absent: the root).
    path_subdirs: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Deployment:
    """Where a job's code and libraries come from.

    ``code`` is ``None`` for the caller's own interpreter and ``sys.path`` used in
    place (LocalHost, default ``mirror_local()``); otherwise a snapshot of the selected
    code is shipped and materialized on the machine.
    """

    kind: str = "mirror_local"
    environment_variables: Mapping[str, str] = dataclasses.field(default_factory=dict)
    code: CodeSelection | None = None
    environment: EnvironmentSpec | None = None  # None: the caller's own interpreter

    @classmethod
    async def mirror_local(
        cls,
        include_sys_path: bool = True,
        additional_sys_paths: str | Iterable[str] = (),
        include_sys_path_contents: bool | str | Iterable[str] = True,
        interpreter: Any = None,
        globs: str | Iterable[str] | None = None,
        environment_variables: Mapping[str, str] | None = None,
    ) -> Deployment:
        """Mirror the caller's code (and, later, interpreter) to the machine.

        With every argument at its default the caller's ``sys.path`` is used as it is
        (on LocalHost there is nothing to copy). Otherwise the code on ``sys.path``
        outside the interpreter (if ``include_sys_path``) and ``additional_sys_paths``
        is snapshotted: ``.py``/``.so`` files, or the extensions given by
        ``include_sys_path_contents`` (``False``: none), plus files matching ``globs``
        relative to the working directory, which the task runs in.
        """
        environment: EnvironmentSpec | None = None
        if isinstance(interpreter, LocalCurrentInterpreter) and not interpreter.additional_software:
            interpreter = None  # what mirror_local does by default, as on Meadowrun
        if interpreter is not None:
            if not isinstance(interpreter, InterpreterSpec):
                raise NotImplementedError(
                    f"mirror_local(interpreter={type(interpreter).__name__}(...)) {_NOT_YET}; "
                    "PipRequirementsFile, UvProjectPath, PoetryProjectPath, "
                    "LocalPipInterpreter and PreinstalledInterpreter work"
                )
            environment = interpreter.environment_spec()
        env = dict(environment_variables or {})
        extra = (
            (additional_sys_paths,)
            if isinstance(additional_sys_paths, str)
            else tuple(additional_sys_paths)
        )
        pattern_list = (globs,) if isinstance(globs, str) else tuple(globs or ())
        code_defaults = include_sys_path and not extra and include_sys_path_contents is True
        if code_defaults and not globs and environment is None:
            return cls(environment_variables=env)  # the caller's sys.path, in place
        for path in extra:
            if not os.path.isdir(path):
                raise InvalidRequestError(f"additional_sys_paths entry {path!r} is not a directory")
        if include_sys_path_contents is True:
            extensions: tuple[str, ...] | None = DEFAULT_EXTENSIONS
        elif include_sys_path_contents is False:
            extensions = ()
        elif isinstance(include_sys_path_contents, str):
            extensions = (include_sys_path_contents,)
        else:
            extensions = tuple(include_sys_path_contents)
        roots = code_roots_of_sys_path(sys.path) if include_sys_path else []
        roots += [os.path.realpath(p) for p in extra if os.path.realpath(p) not in roots]
        return cls(
            environment_variables=env,
            code=CodeSelection(tuple(roots), extensions, pattern_list, os.getcwd()),
            environment=environment,
        )

    @classmethod
    def git_repo(
        cls,
        repo_url: str,
        branch: str | None = None,
        commit: str | None = None,
        path_to_source: str | None = None,
        interpreter: Any = None,
        environment_variables: Mapping[str, str] | None = None,
        ssh_key_secret: Secret | None = None,
        editable_install: bool = True,
    ) -> Deployment:
        """The code of one commit of a git repository (``branch`` defaults to ``main``).

        The branch is resolved here, once, so every task runs the same commit; the
        commit's whole tree (dotfiles included) ships as a code snapshot and is the
        task's working directory, with only ``path_to_source`` (default: the root) on
        ``sys.path``, as on Meadowrun. An
        ``interpreter`` file path (requirements, uv or poetry project) is read from the
        repository. The caller's own git credentials are used, or only the private key
        of ``ssh_key_secret`` (e.g. ``FileSecret("~/.ssh/deploy_key")``).

        ``editable_install`` (decision): the repository's own package is importable
        from ``path_to_source`` either way, which is what an editable install gives
        imports; it is not pip-installed, so its entry points and
        ``importlib.metadata`` are not there. Local ``-e ./path`` lines of a
        requirements file are dropped in both cases, since that code travels as code.
        """
        if not isinstance(editable_install, bool):
            raise InvalidRequestError("editable_install must be True or False")
        if isinstance(interpreter, LocalInterpreter):
            raise InvalidRequestError(
                f"git_repo(interpreter={type(interpreter).__name__}(...)): a local "
                "interpreter describes this machine, not the repository; use a file from the "
                "repository (PipRequirementsFile, UvProjectPath, PoetryProjectPath)"
            )
        export, _ = checkout(repo_url, branch, commit, ssh_key_secret)
        export = export.resolve()
        source = (export / (path_to_source or "")).resolve()
        if not source.is_relative_to(export):
            raise InvalidRequestError(
                f"path_to_source {path_to_source!r} leaves the checkout of {repo_url}: name "
                "a folder inside the repository"
            )
        if not source.is_dir():
            raise InvalidRequestError(
                f"path_to_source {path_to_source!r} is not a folder of {repo_url} at that commit"
            )
        # The whole tree ships as the working directory; only path_to_source goes on
        # sys.path (a folder of the same root, so it is not shipped twice).
        subdir = source.relative_to(export).as_posix()
        environment: EnvironmentSpec | None = None
        if interpreter is not None:
            if not isinstance(interpreter, InterpreterSpec):
                raise NotImplementedError(
                    f"git_repo(interpreter={type(interpreter).__name__}(...)) {_NOT_YET}"
                )
            environment = interpreter.in_folder(export).environment_spec()
        return cls(
            kind="git_repo",
            environment_variables=dict(environment_variables or {}),
            code=CodeSelection((str(export),), None, (), str(export), (subdir,)),
            environment=environment,
        )

    @classmethod
    def container_image(
        cls,
        repository: str,
        tag: str = "latest",
        username_password_secret: Secret | None = None,
        environment_variables: Mapping[str, str] | None = None,
    ) -> Deployment:
        """Run in the image ``repository:tag``, with its own code and libraries (its
        ``python3`` must be the caller's minor version; Meadow mounts its own worker
        runtime). The tag is resolved to a digest when a job is submitted: a missing
        image fails then, before anything runs, and every task runs the same image."""
        from meadow_core.container_interpreters import ContainerInterpreter

        spec = ContainerInterpreter(repository, tag, username_password_secret).environment_spec()
        return cls(
            kind="container_image",
            environment_variables=dict(environment_variables or {}),
            environment=spec,
        )

    @classmethod
    def container_image_at_digest(
        cls,
        repository: str,
        digest: str,
        username_password_secret: Secret | None = None,
        environment_variables: Mapping[str, str] | None = None,
    ) -> Deployment:
        """Like ``container_image``, for the image ``repository@digest``."""
        from meadow_core.container_interpreters import ContainerAtDigestInterpreter

        interpreter = ContainerAtDigestInterpreter(repository, digest, username_password_secret)
        return cls(
            kind="container_image",
            environment_variables=dict(environment_variables or {}),
            environment=interpreter.environment_spec(),
        )

    @classmethod
    def preinstalled_interpreter(
        cls, path_to_interpreter: str, environment_variables: Mapping[str, str] | None = None
    ) -> Deployment:
        """Run with a Python the machine already has (e.g. baked into its image); no
        environment is built and no code is shipped, so functions must be importable
        there or pickled by value. ``MEADOW_INTERPRETER`` is the agent's own Python."""
        return cls(
            kind="preinstalled_interpreter",
            environment_variables=dict(environment_variables or {}),
            code=CodeSelection((), (), (), os.getcwd()),
            environment=PreinstalledInterpreter(path_to_interpreter).environment_spec(),
        )

    def check_on_this_machine(self) -> None:
        """For hosts that run on the caller's machine (LocalHost): refuse, before
        anything runs, a preinstalled interpreter that does not exist here."""
        spec = self.environment
        if spec is None or spec.kind != "preinstalled":
            return
        path = spec.requirements
        if path != MEADOW_INTERPRETER and (not os.access(path, os.X_OK) or os.path.isdir(path)):
            raise InvalidRequestError(
                f"the preinstalled interpreter {path!r} does not exist on this machine (or "
                "is not executable)"
            )
