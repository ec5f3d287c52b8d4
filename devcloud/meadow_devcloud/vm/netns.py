"""Network namespaces for simulated VMs: only `lo` up, no route out.

Sockets that the simulator serves inside a VM (the bridge to the cloud's services, the
metadata service) are created by a short-lived thread that joins the namespace with
setns(2); the namespace of a socket is fixed at creation, so the simulator can then
serve them from any thread.
"""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import threading

from meadow_devcloud.vm.procs import kill_netns_processes

PREFIX = "mdw-"
# Where instances find their metadata service on EC2, Azure and GCP alike.
METADATA_ADDRESS = "169.254.169.254"
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(RuntimeError):
    pass


def path(name: str) -> str:
    return f"/run/netns/{name}"


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def create(name: str) -> None:
    """A namespace with loopback up and the link-local metadata address on it."""
    _ip("netns", "add", name)
    try:
        # One `ip -batch` instead of two processes keeps boot fast.
        batch = f"link set lo up\naddr add {METADATA_ADDRESS}/32 dev lo\n"
        result = subprocess.run(
            ["ip", "-n", name, "-batch", "-"], input=batch, capture_output=True, text=True
        )
        if result.returncode != 0:
            raise NetnsError(f"configuring {name}: {result.stderr.strip()}")
    except BaseException:
        delete(name)
        raise


def delete(name: str) -> list[int]:
    """Kill every process in the namespace, then remove it; returns pids that survived."""
    survivors = kill_netns_processes(path(name))
    if os.path.exists(path(name)):
        _ip("netns", "delete", name)
    return survivors


def existing(prefix: str = PREFIX) -> list[str]:
    try:
        return sorted(name for name in os.listdir("/run/netns") if name.startswith(prefix))
    except FileNotFoundError:
        return []


def listening_socket(name: str, host: str, port: int) -> socket.socket:
    """A TCP socket listening on host:port inside namespace `name`."""
    result: list[socket.socket | BaseException] = []

    def inside() -> None:
        try:
            fd = os.open(path(name), os.O_RDONLY)
            try:
                if _libc.setns(fd, _CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"setns({name}): {os.strerror(errno)}")
            finally:
                os.close(fd)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
            result.append(sock)
        except BaseException as error:
            result.append(error)

    # The thread ends inside the namespace; only it ever switched.
    thread = threading.Thread(target=inside, name=f"setns-{name}")
    thread.start()
    thread.join()
    outcome = result[0]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome
