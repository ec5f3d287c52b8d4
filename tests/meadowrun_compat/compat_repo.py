"""The git repository the compatibility suite deploys from (a module with a name of
its own, so test modules can import its types next to ``tests/core``'s helpers)."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


@dataclasses.dataclass(frozen=True)
class GitRepo:
    url: str
    #: The commit the tests pin; main has moved on since (its data file changed).
    pinned: str
