"""Code from a git repository, for ``Deployment.git_repo``.

Decision: the caller resolves the branch to one commit and exports that commit's tree,
which then ships as a content-addressed code snapshot like ``mirror_local``'s. Every
task of a map runs the same commit, the machine needs no git access and no key, and a
second deployment of a nearby commit uploads only the files that changed. The export
is cached per commit; a bare mirror per repository makes later fetches incremental.

A private repository over SSH is fetched with the key of ``ssh_key_secret`` only (a
temporary 0600 copy, ``IdentitiesOnly``, no agent, ``BatchMode``), appended to the
caller's own ``GIT_SSH_COMMAND`` so its known-hosts settings still apply.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shlex
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import filelock
import platformdirs

from meadow_core.errors import InvalidRequestError
from meadow_core.secrets import Secret


def _git(args: list[str], cwd: Path | None = None, ssh_key: Path | None = None) -> str:
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0")
    if ssh_key is not None:
        base = os.environ.get("GIT_SSH_COMMAND") or "ssh"
        env["GIT_SSH_COMMAND"] = (
            f"{base} -i {shlex.quote(str(ssh_key))} -o IdentitiesOnly=yes "
            "-o IdentityAgent=none -o BatchMode=yes"
        )
    try:
        result = subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
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


@contextlib.contextmanager
def _key_file(ssh_key_secret: Secret | None) -> Iterator[Path | None]:
    """The secret's private key in a 0600 file (ssh refuses others) for as long as
    git needs it."""
    if ssh_key_secret is None:
        yield None
        return
    if not isinstance(ssh_key_secret, Secret):
        raise InvalidRequestError(
            "ssh_key_secret must be a meadow_core.secrets Secret such as "
            f"FileSecret('~/.ssh/id_ed25519'), got {type(ssh_key_secret).__name__}"
        )
    key = ssh_key_secret.read()
    with tempfile.TemporaryDirectory(prefix="meadow-ssh-") as folder:
        path = Path(folder) / "key"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key if key.endswith("\n") else key + "\n")
        yield path


def _fetch_failure(repo_url: str, error: _GitError, with_key: bool) -> InvalidRequestError:
    text = str(error)
    hint = ""
    if "Permission denied" in text or "publickey" in text:
        hint = (
            "; the key in ssh_key_secret was refused"
            if with_key
            else "; for a private repository pass ssh_key_secret=FileSecret(<private key>)"
        )
    elif "Host key verification failed" in text:
        hint = "; add the server to known_hosts (ssh-keyscan) or set GIT_SSH_COMMAND"
    return InvalidRequestError(f"cannot fetch {repo_url!r}: {text}{hint}")


def checkout(
    repo_url: str,
    branch: str | None,
    commit: str | None,
    ssh_key_secret: Secret | None = None,
) -> tuple[Path, str]:
    """Export the tree of ``commit`` (or the tip of ``branch``, default ``main``) of
    ``repo_url`` into a cached folder; return it and the full commit id."""
    if branch and commit:
        raise InvalidRequestError("give Deployment.git_repo a branch or a commit, not both")
    with _key_file(ssh_key_secret) as key:
        return _checkout(repo_url, branch, commit, key)


def _checkout(
    repo_url: str, branch: str | None, commit: str | None, key: Path | None
) -> tuple[Path, str]:
    root = _cache_root() / hashlib.sha256(repo_url.encode()).hexdigest()[:24]
    root.mkdir(parents=True, exist_ok=True)
    mirror = root / "mirror.git"
    with filelock.FileLock(str(root) + ".lock", timeout=600):
        try:
            if not (mirror / "HEAD").exists():
                _git(["clone", "--mirror", "--quiet", "--", repo_url, str(mirror)], ssh_key=key)
            else:
                _git(["fetch", "--prune", "--quiet", "origin"], cwd=mirror, ssh_key=key)
        except _GitError as exc:
            shutil.rmtree(mirror, ignore_errors=True)
            raise _fetch_failure(repo_url, exc, key is not None) from exc
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
