"""PID 1 of a simulated VM: private filesystem view, hostname, then the user data.

Runs inside the VM's network, mount, UTS and PID namespaces (`ip netns exec NAME
unshare ...`), stdlib only (started with `python -I -S`). It stays alive after the user
data exits, like a booted machine, reaping orphans; killing it ends every process in
the VM because it is the PID namespace's init.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import sys
import time

MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
_libc = ctypes.CDLL(None, use_errno=True)


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    if _libc.mount(
        source.encode(),
        target.encode(),
        fstype.encode() if fstype else None,
        flags,
        data.encode() if data else None,
    ):
        errno = ctypes.get_errno()
        raise OSError(errno, f"mount {source} on {target}: {os.strerror(errno)}")


def _say(console: int, message: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    os.write(console, f"[{stamp}] devcloud: {message}\n".encode())


def main(config_path: str) -> int:
    with open(config_path) as file:
        config = json.load(file)
    # The console is the stdout the simulator opened in the host's mount namespace:
    # a file opened for writing here would pin the root mount and block making it ro.
    console = os.dup(1)
    with open(config["user_data"], "rb") as file:
        user_data = file.read()
    try:
        # Open every source first: a bind over /tmp may hide sources that live under it.
        sources = [(os.open(src, os.O_PATH | os.O_DIRECTORY), dst) for src, dst in config["binds"]]
        shared = [(os.open(path, os.O_PATH | os.O_DIRECTORY), path) for path in config["shared"]]
        for fd, dst in sources:
            _mount(f"/proc/self/fd/{fd}", dst, None, MS_BIND | MS_REC, None)
            os.close(fd)
        for dst in config["tmpfs"]:
            _mount("tmpfs", dst, "tmpfs", 0, "mode=1777")
        # Host paths that must stay visible inside a private dir (e.g. an interpreter
        # installed under /root), read-only.
        for fd, path in shared:
            os.makedirs(path, exist_ok=True)
            _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC, None)
            _mount("none", path, None, MS_REMOUNT | MS_BIND | MS_RDONLY, None)
            os.close(fd)
        script = config["user_data_dest"]
        os.makedirs(os.path.dirname(script), exist_ok=True)
        with open(script, "wb") as file:
            file.write(user_data)
        os.chmod(script, 0o700)
        if config["readonly_root"]:
            _mount("none", "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY, None)
        socket.sethostname(config["hostname"])
    except OSError as error:
        _say(console, f"boot failed: {error}")
        return 1
    pid = -1
    if not user_data.startswith(b"#!"):
        _say(console, "user data is not a script (it must start with #!); nothing to run")
    else:
        _say(console, "running user data")
        pid = os.fork()
        if pid == 0:
            try:
                os.setsid()
                null = os.open("/dev/null", os.O_RDONLY)
                os.dup2(null, 0)
                os.dup2(console, 1)
                os.dup2(console, 2)
                os.chdir("/")
                os.execve(script, [script], config["env"])
            except OSError as error:
                _say(console, f"cannot run user data: {error}")
            os._exit(127)
    # Init: reap everything; once nothing is left, idle like a booted machine.
    signal.signal(signal.SIGTERM, lambda *_: None)
    while True:
        try:
            done, status = os.waitpid(-1, 0)
        except ChildProcessError:
            signal.pause()
            continue
        if done == pid:
            _say(console, f"user data exited with {os.waitstatus_to_exitcode(status)}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
