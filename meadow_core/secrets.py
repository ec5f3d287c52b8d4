"""Secrets a deployment needs on the caller, such as the SSH key of a private git repo.

Decision: a secret is read where it is used, which for ``Deployment.git_repo`` is the
caller (the repository is fetched there, see ``git_source``), so the value never
travels to a machine or into the object store. On LocalHost and any caller a secret is
a file (``FileSecret``) or an environment variable (``EnvironmentSecret``); Meadowrun's
cloud secret stores (``AwsSecret``, ``AzureSecret``) are named but not read yet.
"""

from __future__ import annotations

import abc
import dataclasses
import os
from pathlib import Path

from meadow_core.errors import InvalidRequestError


class Secret(abc.ABC):
    """A value Meadow reads when it needs it, e.g. a private SSH key."""

    @abc.abstractmethod
    def read(self) -> str:
        """The secret's value; ``InvalidRequestError`` naming what to fix if absent."""


@dataclasses.dataclass(frozen=True)
class FileSecret(Secret):
    """A secret held in a file on the caller's machine, e.g. ``~/.ssh/id_ed25519``."""

    path: str

    def read(self) -> str:
        path = Path(self.path).expanduser()
        try:
            return path.read_text()
        except OSError as exc:
            raise InvalidRequestError(
                f"FileSecret {self.path!r} cannot be read: {exc.strerror}"
            ) from exc


@dataclasses.dataclass(frozen=True)
class EnvironmentSecret(Secret):
    """A secret held in an environment variable of the caller (CI systems inject
    secrets this way)."""

    name: str

    def read(self) -> str:
        value = os.environ.get(self.name)
        if not value:
            raise InvalidRequestError(
                f"EnvironmentSecret {self.name!r}: the environment variable is not set"
            )
        return value


@dataclasses.dataclass(frozen=True)
class AwsSecret(Secret):
    """A secret in AWS Secrets Manager (Meadowrun's ``AwsSecret``)."""

    secret_name: str

    def read(self) -> str:
        raise NotImplementedError(
            "AwsSecret is not implemented yet; pass the value as a FileSecret or an "
            "EnvironmentSecret on the caller"
        )


@dataclasses.dataclass(frozen=True)
class AzureSecret(Secret):
    """A secret in an Azure Key Vault (Meadowrun's ``AzureSecret``)."""

    secret_name: str
    vault_name: str | None = None

    def read(self) -> str:
        raise NotImplementedError(
            "AzureSecret is not implemented yet; pass the value as a FileSecret or an "
            "EnvironmentSecret on the caller"
        )
