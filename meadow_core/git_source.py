"""Code from a git repository, for ``Deployment.git_repo``.

Decision: the caller resolves the branch to one commit and exports that commit's tree,
which then ships as a content-addressed code snapshot like ``mirror_local``'s. Every
task of a map runs the same commit, the machine needs no git access and no key, and a
second deployment of a nearby commit uploads only the files that changed. The export
is cached per commit; a bare mirror per repository makes later fetches incremental.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import filelock
import platformdirs

from meadow_core.errors import InvalidRequestError


def _git(args: list[str], cwd: Path | None = None) -> str:
    try:
        result = subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=600,
            env=dict(os.environ, GIT_TERMINAL_PROMPT="0"),
        )
    except FileNotFoundError as exc:
        raise InvalidRequestError("Deployment.git_repo needs git on this machine") from exc
    if result.returncode != 0:
        raise _GitError(result.stderr.strip() or result.stdout.strip())
    return result.stdout


class _GitError(Exception):
    pass


def _cache_root() -> Path:
    base = os.environ.get("MEADOW_GIT_CACHE") or platformdirs.user_cache_dir("meadow")
    return Path(base) / "git"


def checkout(repo_url: str, branch: str | None, commit: str | None) -> tuple[Path, str]:
    """Export the tree of ``commit`` (or the tip of ``branch``, default ``main``) of
    ``repo_url`` into a cached folder; return it and the full commit id."""
    if branch and commit:
        raise InvalidRequestError("give Deployment.git_repo a branch or a commit, not both")
    root = _cache_root() / hashlib.sha256(repo_url.encode()).hexdigest()[:24]
    root.mkdir(parents=True, exist_ok=True)
    mirror = root / "mirror.git"
    with filelock.FileLock(str(root) + ".lock", timeout=600):
        try:
            if not (mirror / "HEAD").exists():
                _git(["clone", "--mirror", "--quiet", repo_url, str(mirror)])
            else:
                _git(["fetch", "--prune", "--quiet", "origin"], cwd=mirror)
        except _GitError as exc:
            shutil.rmtree(mirror, ignore_errors=True)
            raise InvalidRequestError(f"cannot fetch {repo_url!r}: {exc}") from exc
        wanted = commit or f"refs/heads/{branch or 'main'}"
        try:
            full = _git(["rev-parse", "--verify", "--quiet", f"{wanted}^{{commit}}"], cwd=mirror)
        except _GitError:
            what = f"commit {commit!r}" if commit else f"branch {branch or 'main'!r}"
            raise InvalidRequestError(f"{what} does not exist in {repo_url}") from None
        full = full.strip()
        export = root / full
        if not export.exists():
            staging = Path(tempfile.mkdtemp(dir=root, prefix=".export-"))
            try:
                archive = subprocess.run(
                    ["git", "archive", "--format=tar", full],
                    cwd=mirror,
                    capture_output=True,
                    check=True,
                ).stdout
                with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
                    tar.extractall(staging, filter="data")
                os.replace(staging, export)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    return export, full
