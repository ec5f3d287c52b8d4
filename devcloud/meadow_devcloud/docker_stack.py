"""The container test stack: Debian's dockerd, a base image built offline with
debootstrap, and Debian's docker-registry on loopback.

    eval "$(python -m meadow_devcloud.docker_stack up)"   # exports MEADOW_TEST_...
    python -m meadow_devcloud.docker_stack down

`up` prints `export MEADOW_TEST_...=...` lines on stdout (everything else goes to
stderr) and exits non-zero if the stack could not be brought up. It is idempotent and
fast once everything runs: it installs only missing packages, starts dockerd only if no
daemon answers (and remembers that it did), builds the base image only if it is missing
(the debootstrap rootfs is cached under /var/cache/meadow-test/, so that costs ~5 s
instead of ~60 s) and starts the registry only if it is not already answering. `down`
stops the registry, removes every container labelled `meadow` and stops dockerd only if
`up` started it. Needs root (apt-get, dockerd, debootstrap).

Only the standard library (and psutil, a core dependency, for pid records): the docker
CLI does the work, as it is the one thing certain to be there once docker.io is.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path

from meadow_devcloud.vm.procs import PidRecord, record, same_process

SUITE = "bookworm"
BASE_IMAGE = f"meadow-base:{SUITE}"
BASE_PACKAGES = "python3,python3-venv,python3-pip"
REGISTRY = "127.0.0.1:5000"

# A command each Debian package provides: a command that is there (from whatever
# package) needs no install, so a machine with docker-ce keeps it.
STACK_COMMANDS = {
    "dockerd": "docker.io",
    "debootstrap": "debootstrap",
    "docker-registry": "docker-registry",
}

# Loopback only: never let a proxy from the environment see the registry probe.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class StackError(RuntimeError):
    """The stack could not be brought up; the message says why (with a log's tail)."""


def cache_dir() -> Path:
    return Path(os.environ.get("MEADOW_TEST_CACHE") or "/var/cache/meadow-test")


def state_dir() -> Path:
    return Path(os.environ.get("MEADOW_TEST_STATE") or "/run/meadow-test/docker")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ---- the machine's Debian mirror -----------------------------------------------------


def apt_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The first Debian mirror of the machine's own apt sources (deb822 `.sources`
    files first, then one-line `sources.list`). Never hard-coded: CI may use a mirror
    of its own."""
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        mirror = _deb822_mirror(_read(path))
        if mirror:
            return mirror
    one_line = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for path in one_line:
        mirror = _one_line_mirror(_read(path))
        if mirror:
            return mirror
    raise StackError(f"no Debian mirror found in {apt_dir}/sources.list{{,.d}}")


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _deb822_mirror(text: str) -> str | None:
    """The first URI of the first stanza with a binary (`deb`) type and a main suite
    (one without a dash: `bookworm`, not `bookworm-security`)."""
    for stanza in re.split(r"\n[ \t]*\n", text):
        fields: dict[str, list[str]] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.split()
        if "deb" not in fields.get("types", ["deb"]):
            continue
        if fields.get("enabled", ["yes"])[0].lower() == "no":
            continue
        uris = fields.get("uris", [])
        if uris and any("-" not in suite for suite in fields.get("suites", [])):
            return uris[0]
    return None


def _one_line_mirror(text: str) -> str | None:
    """The URI of the first `deb` line that is not a security archive."""
    for line in text.splitlines():
        words = re.sub(r"\[[^\]]*\]", " ", line.split("#", 1)[0]).split()
        if len(words) >= 2 and words[0] == "deb" and "security" not in line:
            return words[1]
    return None


# ---- packages ------------------------------------------------------------------------


def _installed(package: str) -> bool:
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True
    )
    return result.returncode == 0 and "install ok installed" in result.stdout


def apt_install(extra: Iterable[str] = ()) -> None:
    """Install the stack's packages whose command is missing, plus the `extra` Debian
    packages that are not installed, in one apt-get call (`apt-get update` only if the
    first try fails)."""
    missing = [pkg for command, pkg in STACK_COMMANDS.items() if shutil.which(command) is None]
    missing += [pkg for pkg in dict.fromkeys(extra) if pkg not in missing and not _installed(pkg)]
    if not missing:
        return
    if os.geteuid() != 0:
        raise StackError(f"{' '.join(missing)} missing, and installing them needs root")
    log(f"installing {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]

    def run(command: list[str]) -> bool:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=sys.stderr, env=env)
        return done.returncode == 0

    if not (run(install) or (run(["apt-get", "update", "-q"]) and run(install))):
        raise StackError(f"apt-get install {' '.join(missing)} failed")


# ---- the daemons `up` started (pid + start time: a reused pid is never killed) -------


def _save(name: str, pid: int) -> None:
    (state_dir() / f"{name}.json").write_text(json.dumps(record(pid)))


def _ours(name: str) -> PidRecord | None:
    """The process `up` started under `name`, if it still runs; else its record goes."""
    path = state_dir() / f"{name}.json"
    try:
        entry: PidRecord = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if same_process(entry) is None:
        path.unlink(missing_ok=True)
        return None
    return entry


def _stop(name: str, timeout: float) -> bool:
    """SIGTERM the process `up` started under `name`, SIGKILL it after `timeout`;
    False if there was none."""
    entry = _ours(name)
    if entry is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(entry["pid"], signal.SIGTERM)
    if not _wait(lambda: same_process(entry) is None, timeout, 0.1):
        with contextlib.suppress(ProcessLookupError):
            os.kill(entry["pid"], signal.SIGKILL)
        _wait(lambda: same_process(entry) is None, 5.0, 0.05)
    (state_dir() / f"{name}.json").unlink(missing_ok=True)
    return True


def _spawn(name: str, command: list[str]) -> int:
    """Start a daemon in a session of its own, so it is nobody's child and survives
    this process; its output goes to STATE/NAME.log (never to our stdout, which the
    caller's `$(...)` reads until it closes)."""
    with open(state_dir() / f"{name}.log", "wb") as out:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    _save(name, process.pid)
    return process.pid


def _wait(condition: Callable[[], bool], timeout: float, interval: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# ---- dockerd -------------------------------------------------------------------------


def docker_answers() -> bool:
    command = ["docker", "version", "--format", "{{.Server.Version}}"]
    try:
        return subprocess.run(command, capture_output=True).returncode == 0
    except OSError:
        return False


def ensure_dockerd() -> None:
    if docker_answers():
        return
    log("starting dockerd")
    pid = _spawn("dockerd", ["dockerd", "--host", "unix:///var/run/docker.sock"])
    logfile = state_dir() / "dockerd.log"

    def answers_or_exited() -> bool:
        if docker_answers():
            return True
        if _ours("dockerd") is None:
            raise StackError(f"dockerd exited at start:\n{_tail(logfile)}")
        return False

    if not _wait(answers_or_exited, 30.0, 0.1):
        raise StackError(f"dockerd (pid {pid}) did not answer within 30 s (see {logfile})")


# ---- the base image ------------------------------------------------------------------


def _rootfs_tarball() -> Path:
    key = hashlib.sha256(f"{SUITE} {BASE_PACKAGES}".encode()).hexdigest()[:12]
    return cache_dir() / f"rootfs-{SUITE}-{key}.tar"


def _debootstrap(tarball: Path) -> None:
    mirror = apt_mirror()
    tarball.parent.mkdir(parents=True, exist_ok=True)
    rootfs = Path(tempfile.mkdtemp(prefix="rootfs.", dir=tarball.parent))
    logfile = rootfs.with_name(rootfs.name + ".log")
    try:
        log(f"debootstrap {SUITE} from {mirror} (about a minute, cached afterwards)")
        with open(logfile, "wb") as out:
            result = subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={BASE_PACKAGES}",
                 SUITE, str(rootfs), mirror],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        if result.returncode != 0:
            raise StackError(f"debootstrap failed:\n{_tail(logfile)}")
        # The machine's mirror stays out of the image: builds that need apt bring
        # their own sources (MEADOW_APT_MIRROR), so no CI address is baked in.
        (rootfs / "etc/apt/sources.list").write_text(
            "# No apt sources: Meadow builds add a mirror only while installing.\n"
        )
        for deb in (rootfs / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        lists = rootfs / "var/lib/apt/lists"
        for entry in lists.iterdir() if lists.is_dir() else ():
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        shutil.rmtree(rootfs / "debootstrap", ignore_errors=True)
        partial = tarball.with_name(tarball.name + ".partial")
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], check=True)
        partial.replace(tarball)
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
        logfile.unlink(missing_ok=True)


def ensure_base_image() -> None:
    inspect = ["docker", "image", "inspect", BASE_IMAGE]
    if subprocess.run(inspect, capture_output=True).returncode == 0:
        return
    tarball = _rootfs_tarball()
    if not tarball.is_file():
        _debootstrap(tarball)
    log(f"importing {BASE_IMAGE} from {tarball}")
    imported = subprocess.run(
        ["docker", "import", "--change", 'CMD ["python3"]', str(tarball), BASE_IMAGE],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    if imported.returncode != 0:
        raise StackError(f"docker import failed: {imported.stderr.strip()}")


# ---- the registry --------------------------------------------------------------------


def registry_answers() -> bool:
    try:
        with _opener.open(f"http://{REGISTRY}/v2/", timeout=1) as response:
            response.read()
        return True
    except OSError:
        return False


def _drop_registry_storage() -> None:
    marker = state_dir() / "registry.storage"
    with contextlib.suppress(OSError):
        shutil.rmtree(marker.read_text().strip(), ignore_errors=True)
    marker.unlink(missing_ok=True)


def ensure_registry() -> None:
    if registry_answers():
        return
    # Ours but silent (hung), or dead: its storage goes with it.
    _stop("registry", 5.0)
    _drop_registry_storage()
    storage = tempfile.mkdtemp(prefix="meadow-registry.")
    (state_dir() / "registry.storage").write_text(storage + "\n")
    config = state_dir() / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: {REGISTRY}\n"
    )
    log(f"starting docker-registry on {REGISTRY}")
    _spawn("registry", ["docker-registry", "serve", str(config)])
    if not _wait(registry_answers, 5.0, 0.05):
        logfile = state_dir() / "registry.log"
        raise StackError(f"docker-registry did not answer on {REGISTRY}:\n{_tail(logfile)}")


# ---- up / down -----------------------------------------------------------------------


def up(extra_packages: Iterable[str] = ()) -> dict[str, str]:
    """Bring the stack up (idempotent); returns the variables the tests read."""
    state_dir().mkdir(parents=True, exist_ok=True)
    apt_install(extra_packages)
    ensure_dockerd()
    ensure_base_image()
    ensure_registry()
    return {
        "MEADOW_TEST_REGISTRY": REGISTRY,
        "MEADOW_TEST_BASE_IMAGE": BASE_IMAGE,
        "MEADOW_TEST_APT_MIRROR": apt_mirror(),
    }


def down() -> None:
    """Stop what `up` started and remove the containers labelled `meadow`; a daemon
    that was already running before `up` keeps running."""
    _stop("registry", 5.0)
    _drop_registry_storage()
    if docker_answers():
        listed = subprocess.run(
            ["docker", "ps", "-aq", "--filter", "label=meadow"], capture_output=True, text=True
        )
        leftovers = listed.stdout.split()
        if leftovers:
            log(f"removing containers labelled meadow: {len(leftovers)}")
            subprocess.run(["docker", "rm", "-f", *leftovers], stdout=subprocess.DEVNULL)
    if _ours("dockerd") is not None:
        log("stopping dockerd (started by up)")
        _stop("dockerd", 20.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m meadow_devcloud.docker_stack",
        description="The container test stack: dockerd, the base image, a registry.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("up", help="start it; prints `export MEADOW_TEST_...` lines")
    start.add_argument(
        "--apt", nargs="+", action="extend", default=[], metavar="PACKAGE",
        help="more Debian packages to install if missing (in the same apt-get call)",
    )  # fmt: skip
    commands.add_parser("down", help="stop what `up` started")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            for name, value in up(args.apt).items():
                print(f"export {name}={shlex.quote(value)}")
        else:
            down()
    except (StackError, OSError, subprocess.SubprocessError) as exc:
        log(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
