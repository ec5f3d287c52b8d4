"""Container images as interpreters: ``ContainerInterpreter`` and
``ContainerAtDigestInterpreter`` (Meadowrun's ``ContainerInterpreterBase`` family).

An image the user names is an environment Meadow does not build: its spec
(``ContainerImageSpec``) holds the image reference, which the API resolves to a digest
before anything runs (``containers.resolve_image``), so every task of a job runs the
same image. Nothing here imports docker; only the reference's shape is checked.
"""

from __future__ import annotations

import dataclasses
import re

from meadow_core.errors import InvalidRequestError
from meadow_core.interpreters import (
    EnvironmentSpec,
    InterpreterSpec,
    python_version_of,
    target_platform,
)
from meadow_core.secrets import Secret

#: ``EnvironmentSpec.kind`` of an image named by the user.
CONTAINER_KIND = "container"

# Docker's reference grammar, loosely: [host[:port]/]path[:tag], lower-case path.
_REPOSITORY = re.compile(
    r"^(?:[A-Za-z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:[._-]+[a-z0-9]+)*(?:/[a-z0-9]+(?:[._-]+[a-z0-9]+)*)*$"
)
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclasses.dataclass(frozen=True)
class ContainerImageSpec(EnvironmentSpec):
    """An environment that is an existing image: ``requirements`` holds its reference
    (``repo:tag`` or ``repo@sha256:...``). Never uploaded: the API resolves it."""

    username_password_secret: Secret | None = None
    always_use_local: bool = False

    @property
    def reference(self) -> str:
        return self.requirements

    def to_bytes(self) -> bytes:
        # The secret object never travels; the key names the reference and its options.
        return EnvironmentSpec(
            self.kind,
            self.requirements,
            "local" if self.always_use_local else None,
            self.python_version,
            self.platform,
        ).to_bytes()


def _repository(repository_name: str) -> str:
    if not isinstance(repository_name, str) or not _REPOSITORY.match(repository_name):
        raise InvalidRequestError(
            f"container repository {repository_name!r} is not an image repository name "
            "(like 'python' or 'registry.example.com:5000/team/image', lower case)"
        )
    return repository_name


def _spec(reference: str, secret: Secret | None, always_use_local: bool) -> ContainerImageSpec:
    if secret is not None and not isinstance(secret, Secret):
        raise InvalidRequestError(
            "username_password_secret must be a meadow_core.secrets.Secret holding "
            '"user:password" or {"username": ..., "password": ...}'
        )
    return ContainerImageSpec(
        kind=CONTAINER_KIND,
        requirements=reference,
        lock=None,
        python_version=python_version_of(None),
        platform=target_platform(),
        username_password_secret=secret,
        always_use_local=bool(always_use_local),
    )


class ContainerInterpreterBase(InterpreterSpec):
    """An existing container image as the interpreter (Meadowrun's base class of
    ``ContainerInterpreter`` and ``ContainerAtDigestInterpreter``): Meadow runs the
    task in it and builds nothing."""


@dataclasses.dataclass(frozen=True)
class ContainerInterpreter(ContainerInterpreterBase):
    """An image by tag; ``python3`` in it must be the caller's Python minor version.
    Meadow's worker runtime is mounted into it, so it needs nothing of Meadow's."""

    repository_name: str
    tag: str = "latest"
    username_password_secret: Secret | None = None
    always_use_local: bool = False

    def environment_spec(self) -> EnvironmentSpec:
        repository = _repository(self.repository_name)
        if not isinstance(self.tag, str) or not _TAG.match(self.tag):
            raise InvalidRequestError(f"container image tag {self.tag!r} is not a valid tag")
        return _spec(
            f"{repository}:{self.tag}", self.username_password_secret, self.always_use_local
        )


@dataclasses.dataclass(frozen=True)
class ContainerAtDigestInterpreter(ContainerInterpreterBase):
    """An image by digest (``sha256:...``), immune to a tag being moved."""

    repository_name: str
    digest: str
    username_password_secret: Secret | None = None
    always_use_local: bool = False

    def environment_spec(self) -> EnvironmentSpec:
        repository = _repository(self.repository_name)
        if not isinstance(self.digest, str) or not _DIGEST.match(self.digest):
            raise InvalidRequestError(
                f"container image digest {self.digest!r} must look like 'sha256:' followed "
                "by 64 hex digits"
            )
        return _spec(
            f"{repository}@{self.digest}", self.username_password_secret, self.always_use_local
        )
