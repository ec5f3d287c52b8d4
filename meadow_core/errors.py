"""Exceptions Meadow raises to its callers.

Every error says what to change; the classes let orchestrator adapters tell a bad
request (fail fast, do not retry) from a failed task (the user's code raised).
"""

from __future__ import annotations


class MeadowError(Exception):
    """Base class of every error Meadow itself raises."""


class InvalidRequestError(MeadowError, ValueError):
    """The request can never succeed as written: fix the arguments and try again."""


class UnsatisfiableResourcesError(InvalidRequestError):
    """No machine this host can provide has the requested resources."""


class SerializationError(InvalidRequestError, TypeError):
    """A function, argument or result could not be pickled or unpickled."""


class JobNotFoundError(MeadowError, KeyError):
    """No job with this id is known to the host."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "job not found"


class JobCancelledError(MeadowError):
    """The job was cancelled before it finished."""


class AgentUnavailableError(MeadowError):
    """The Meadow agent for a host could not be started or reached."""


class UnsafeHomeError(MeadowError, PermissionError):
    """A Meadow home another user owns or may write: jobs planted there would run as
    its owner. The message says how to fix the folder or which home to use instead."""


class CorruptDatabaseError(MeadowError):
    """The home's queue database is damaged (a full disk mid-write, a bad copy, a
    crash of the file system): the message names the file and how to start afresh."""
