"""``Deployment``: the code and Python environment a job runs with.

This issue ships the default, the caller's own interpreter and ``sys.path`` (what
``Deployment.mirror_local()`` means on ``LocalHost``), with ``environment_variables``.
Mirroring code to another machine, building environments from lock files, git
repositories and containers are the deployment issue's work: those constructors raise
``NotImplementedError`` saying so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

_NOT_YET = (
    "is not implemented yet: Meadow currently runs tasks with the caller's own interpreter "
    "and sys.path (Deployment.mirror_local() with default arguments)"
)


@dataclasses.dataclass(frozen=True)
class Deployment:
    """Where a job's code and libraries come from."""

    kind: str = "mirror_local"
    environment_variables: Mapping[str, str] = dataclasses.field(default_factory=dict)

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
        """Mirror the caller's interpreter and code (here: use them directly)."""
        if (
            not include_sys_path
            or additional_sys_paths
            or include_sys_path_contents is not True
            or interpreter is not None
            or globs is not None
        ):
            raise NotImplementedError(
                "mirror_local with include_sys_path, additional_sys_paths, "
                f"include_sys_path_contents, interpreter or globs {_NOT_YET}"
            )
        return cls(environment_variables=dict(environment_variables or {}))

    @classmethod
    def git_repo(cls, repo_url: str, *args: Any, **kwargs: Any) -> Deployment:
        raise NotImplementedError(f"Deployment.git_repo {_NOT_YET}")

    @classmethod
    def container_image(cls, repository: str, *args: Any, **kwargs: Any) -> Deployment:
        raise NotImplementedError(f"Deployment.container_image {_NOT_YET}")

    @classmethod
    def container_image_at_digest(cls, repository: str, *args: Any, **kwargs: Any) -> Deployment:
        raise NotImplementedError(f"Deployment.container_image_at_digest {_NOT_YET}")

    @classmethod
    def preinstalled_interpreter(
        cls, path_to_interpreter: str, *args: Any, **kwargs: Any
    ) -> Deployment:
        raise NotImplementedError(f"Deployment.preinstalled_interpreter {_NOT_YET}")
