"""Deployment.git_repo against real git repositories: local bare repositories, and a
private one served by a real sshd on 127.0.0.2 that only accepts a generated key."""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meadow_core import (
    AwsSecret,
    Deployment,
    EnvironmentSecret,
    FileSecret,
    InvalidRequestError,
    LocalHost,
    LocalPipInterpreter,
    PipRequirementsFile,
    run_function_sync,
    run_map_sync,
)

SSHD = "/usr/sbin/sshd"


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A bare repository with one commit on main, and a working clone to push from."""
    monkeypatch.setenv("MEADOW_GIT_CACHE", str(tmp_path / "git-cache"))
    bare = tmp_path / "repo.git"
    git("init", "--bare", "--initial-branch=main", str(bare), cwd=tmp_path)
    work = tmp_path / "work"
    git("clone", "--quiet", str(bare), str(work), cwd=tmp_path)
    git("config", "user.email", "t@example.invalid", cwd=work)
    git("config", "user.name", "t", cwd=work)
    (work / "src" / "gitpkg").mkdir(parents=True)
    (work / "src" / "gitpkg" / "__init__.py").write_text("")
    (work / "src" / "gitpkg" / "version.py").write_text(
        "import os\n\ndef which(_=None):\n    return open('VERSION').read().strip(), os.getcwd()\n"
    )
    (work / "VERSION").write_text("one\n")
    (work / "requirements.txt").write_text("six==1.16.0\n")
    git("add", ".", cwd=work)
    git("commit", "--quiet", "-m", "one", cwd=work)
    git("push", "--quiet", "origin", "main", cwd=work)
    return f"file://{bare}", work


def push_version(work: Path, version: str) -> str:
    (work / "VERSION").write_text(f"{version}\n")
    git("commit", "--quiet", "-am", version, cwd=work)
    git("push", "--quiet", "origin", "main", cwd=work)
    return git("rev-parse", "HEAD", cwd=work)


def test_a_branch_is_resolved_once_so_every_task_runs_one_commit(
    host: LocalHost, repo: tuple[str, Path]
) -> None:
    url, work = repo
    deployment = Deployment.git_repo(url, branch="main", path_to_source="src")
    push_version(work, "two")  # the branch moves after the deployment was made
    results = run_map_sync("gitpkg.version.which", [1, 2, 3], host, deployment=deployment)
    assert {r[0] for r in results} == {"one"}
    # The task ran in the repository root of the shipped commit.
    assert results[0][1].startswith(str(host.place.home / "code"))


def test_a_commit_and_an_interpreter_from_the_repo(host: LocalHost, repo: tuple[str, Path]) -> None:
    url, work = repo
    second = push_version(work, "two")
    push_version(work, "three")
    deployment = Deployment.git_repo(
        url,
        commit=second,
        path_to_source="src",
        interpreter=PipRequirementsFile("requirements.txt"),
    )
    assert run_function_sync("gitpkg.version.which", host, deployment=deployment)[0] == "two"


def test_missing_branch_commit_or_folder_fails_before_anything_runs(
    repo: tuple[str, Path], tmp_path: Path
) -> None:
    url, _ = repo
    with pytest.raises(InvalidRequestError, match="branch 'nope' does not exist"):
        Deployment.git_repo(url, branch="nope")
    with pytest.raises(InvalidRequestError, match="commit 'deadbeef' does not exist"):
        Deployment.git_repo(url, commit="deadbeef")
    with pytest.raises(InvalidRequestError, match="path_to_source"):
        Deployment.git_repo(url, path_to_source="no/such/dir")
    with pytest.raises(InvalidRequestError, match="cannot fetch"):
        Deployment.git_repo(f"file://{tmp_path}/missing.git")


def test_a_local_interpreter_or_a_bad_flag_is_refused_for_a_repo(repo: tuple[str, Path]) -> None:
    url, _ = repo
    with pytest.raises(InvalidRequestError, match="a file from the repository"):
        Deployment.git_repo(url, interpreter=LocalPipInterpreter("/usr/bin/python3"))
    with pytest.raises(InvalidRequestError, match="editable_install"):
        Deployment.git_repo(url, editable_install="yes")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="ssh_key_secret must be"):
        Deployment.git_repo(url, ssh_key_secret="-----BEGIN OPENSSH PRIVATE KEY-----")  # type: ignore[arg-type]
    with pytest.raises(NotImplementedError, match="AwsSecret"):
        Deployment.git_repo(url, ssh_key_secret=AwsSecret("deploy-key"))


# -- a private repository over SSH ----------------------------------------------------------


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _keygen(path: Path) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "meadow-test", "-f", str(path)],
        check=True,
    )
    return (path.parent / (path.name + ".pub")).read_text().strip()


@pytest.fixture
def ssh_repo(
    repo: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, Path]]:
    """The bare repository of ``repo`` served by sshd -D on 127.0.0.2 (reaped after the
    test), accepting only a freshly generated client key; yields its ssh:// URL and the
    client's private key."""
    if not os.path.exists(SSHD):
        message = "sshd is missing: apt-get install -y openssh-server"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    keys = tmp_path / "ssh"
    keys.mkdir()
    host_public = _keygen(keys / "host_key")
    client_public = _keygen(keys / "client_key")
    (keys / "authorized_keys").write_text(client_public + "\n")
    port = _free_port("127.0.0.2")
    (keys / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.2\nHostKey {keys / 'host_key'}\n"
        f"AuthorizedKeysFile {keys / 'authorized_keys'}\nPidFile none\nUsePAM no\n"
        "StrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\n"
    )
    (keys / "known_hosts").write_text(f"[127.0.0.2]:{port} {host_public}\n")
    # The caller's own ssh settings (here: which host key to trust) still apply.
    monkeypatch.setenv(
        "GIT_SSH_COMMAND",
        f"ssh -o UserKnownHostsFile={keys / 'known_hosts'} -o StrictHostKeyChecking=yes",
    )
    server = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(keys / "sshd_config")],
        stdout=subprocess.DEVNULL,
        stderr=open(keys / "sshd.log", "w"),  # noqa: SIM115
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.2", port), timeout=1) as s:
                    if s.recv(64).startswith(b"SSH-"):
                        break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise AssertionError((keys / "sshd.log").read_text()) from None
                time.sleep(0.05)
        bare = repo[0].removeprefix("file://")
        yield f"ssh://{getpass.getuser()}@127.0.0.2:{port}{bare}", keys / "client_key"
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_a_private_repository_is_fetched_with_the_key_of_a_secret(
    host: LocalHost, ssh_repo: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, key = ssh_repo
    # Without the key the server refuses, and the error says what to pass.
    with pytest.raises(
        InvalidRequestError, match=r"(?s)Permission denied.*ssh_key_secret=FileSecret"
    ):
        Deployment.git_repo(url, path_to_source="src")
    # A key file readable by others (ssh itself would refuse it) works: Meadow hands
    # ssh a private copy.
    shared = tmp_path / "shared_key"
    shutil.copy(key, shared)
    shared.chmod(0o644)
    deployment = Deployment.git_repo(
        url, path_to_source="src", ssh_key_secret=FileSecret(str(shared))
    )
    assert run_function_sync("gitpkg.version.which", host, deployment=deployment)[0] == "one"
    # The same key from an environment variable; no key file is left behind.
    monkeypatch.setenv("DEPLOY_KEY", key.read_text())
    before = set(Path(os.environ.get("TMPDIR", "/tmp")).glob("meadow-ssh-*"))
    Deployment.git_repo(url, branch="main", ssh_key_secret=EnvironmentSecret("DEPLOY_KEY"))
    assert set(Path(os.environ.get("TMPDIR", "/tmp")).glob("meadow-ssh-*")) == before
    # A key the server does not know is refused with that said.
    _keygen(tmp_path / "stranger")
    with pytest.raises(InvalidRequestError, match="the key in ssh_key_secret was refused"):
        Deployment.git_repo(url, ssh_key_secret=FileSecret(str(tmp_path / "stranger")))
    with pytest.raises(InvalidRequestError, match="DEPLOY_KEY_MISSING"):
        Deployment.git_repo(url, ssh_key_secret=EnvironmentSecret("DEPLOY_KEY_MISSING"))
