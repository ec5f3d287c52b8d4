"""Which Meadow this is: its version, where its package lives, and a digest of its files.

Modules that need to know import this one instead of the ``meadow_core`` package, whose
``__init__`` is the caller's API.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

#: The distribution that installs ``meadow_core`` (its metadata names Meadow's own
#: dependencies and version). Not "meadow": another project owns that name on PyPI.
DISTRIBUTION = "meadow-core"

#: The ``meadow_core`` directory these modules were imported from.
PACKAGE_ROOT = Path(__file__).resolve().parent

#: The version when no ``meadow-core`` distribution is installed (the package is only on
#: ``sys.path``, as in a worker's copy); the same as ``version`` in pyproject.toml.
_FALLBACK_VERSION = "0.1.0"

#: The installed distribution's version. Looked up on first use (``__getattr__`` below):
#: importing ``importlib.metadata`` costs tens of milliseconds.
__version__: str


@functools.cache
def _installed_version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return _FALLBACK_VERSION


#: What of the package ships to a machine: code, the price snapshots, ``py.typed``.
SHIPPED_SUFFIXES = (".py", ".json", ".typed")


def package_files() -> list[Path]:
    """The package's files that ship in an agent bundle, in a stable order."""
    return sorted(
        path
        for path in PACKAGE_ROOT.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix in SHIPPED_SUFFIXES
    )


@functools.cache
def package_digest() -> str:
    """A digest of every shipped file (what an agent bundle's key is made of, with the
    Python version and the pinned dependencies)."""
    digest = hashlib.sha256()
    for path in package_files():
        digest.update(str(path.relative_to(PACKAGE_ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@functools.cache
def runtime_id() -> str:
    """A digest of ``meadow_core``'s ``*.py`` files: a copy of the package (in a built
    environment, in an instance's agent bundle) has the same one as its caller."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        digest.update(f"{path.relative_to(PACKAGE_ROOT)}\0".encode() + path.read_bytes())
    return digest.hexdigest()


if not TYPE_CHECKING:  # type checkers see the annotation above and nothing unknown

    def __getattr__(name: str) -> str:
        if name == "__version__":
            return _installed_version()
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
