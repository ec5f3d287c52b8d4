"""The VM simulator: boots a cloud's instances as local VMs, whatever the cloud.

It polls an `InstanceSource` (see `vm.cloud`) and boots every running instance as an
isolated local machine: its own network namespace (only `lo`, the cloud's services
bridged in at the host's URLs, the cloud's metadata service at 169.254.169.254), its
own mount, UTS and PID namespaces with private /tmp, /opt, /root, /var/lib/meadow, ...
and the rest of the host read-only. It runs the instance's real user data there as
root, and destroys the machine when the instance stops existing. Addresses the cloud
reports are never contacted.

The user data's environment is a fresh machine's (PATH, HOME=/root) plus what the
cloud's `BootSpec` adds (e.g. the emulated API's endpoint and region).

Everything started is recorded under the state dir (`vms/<instance id>/vm.json`), so
`reap(state_dir)` removes it even after a crash; netns names start with
`mdw-<tag>-`, tag derived from the state dir.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meadow_devcloud.vm import netns, procs
from meadow_devcloud.vm.bridge import Bridge
from meadow_devcloud.vm.cloud import InstanceSource, InstanceState, MetadataServer

log = logging.getLogger(__name__)

VMINIT = str(Path(__file__).with_name("vminit.py"))
# Directories each VM gets its own copy of (bound over the host's), and private tmpfs.
PRIVATE_DIRS = (
    "/tmp",
    "/var/tmp",
    "/opt",
    "/root",
    "/home",
    "/var/log",
    "/var/lib/meadow",
    "/var/lib/cloud",
)
PRIVATE_TMPFS = ("/run", "/dev/shm")
USER_DATA_PATH = "/var/lib/cloud/instance/user-data.txt"
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "USER": "root",
    "LOGNAME": "root",
    "SHELL": "/bin/sh",
    "LANG": "C.UTF-8",
}
ALIVE = (InstanceState.STARTING, InstanceState.RUNNING)
TERMINATE_AT_FILE = "terminate-at.json"


class DevCloudError(RuntimeError):
    pass


def check_host() -> None:
    """Fail before starting anything if this machine cannot host simulated VMs."""
    if os.geteuid() != 0:
        raise DevCloudError(
            "the dev cloud boots instances in network namespaces and needs root; "
            "run it as root (e.g. with sudo)"
        )
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            raise DevCloudError(f"the dev cloud needs `{tool}` (install iproute2 / util-linux)")


def prefix_for(state_dir: Path) -> str:
    """The netns name prefix of the dev cloud that owns `state_dir`."""
    tag = hashlib.sha1(str(state_dir.resolve()).encode()).hexdigest()[:6]
    return f"{netns.PREFIX}{tag}-"


def write_json(path: Path, data: object) -> None:
    """Replace `path` atomically: other processes read these records at any time."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(data, indent=1))
    temporary.replace(path)


def running_vm_dir(state_dir: Path, instance_id: str) -> Path:
    """The directory of the instance's running VM; works from any process."""
    vm_dir = state_dir / "vms" / instance_id
    try:
        record = json.loads((vm_dir / "vm.json").read_text())
    except (OSError, ValueError):
        raise DevCloudError(f"no VM for instance {instance_id} in {state_dir}") from None
    if record.get("state") != "running":
        raise DevCloudError(f"the VM of {instance_id} is {record.get('state')}, not running")
    return vm_dir


def schedule_termination(vm_dir: Path, after: float) -> None:
    """Have the simulator end the instance (through `InstanceSource.terminate`) in
    `after` seconds, as a cloud does when an interruption's grace period ends. Works
    from any process."""
    write_json(vm_dir / TERMINATE_AT_FILE, {"at": time.time() + after})


def reap(state_dir: Path) -> list[str]:
    """Kill every VM recorded in `state_dir` (also after a crash) and delete its namespace.

    Returns what it had to remove, for messages. Kills recorded processes (checking
    their start times), every process in the recorded and prefixed namespaces, and
    deletes those namespaces.
    """
    removed: list[str] = []
    names = set(netns.existing(prefix_for(state_dir)))
    for vm_file in (state_dir / "vms").glob("*/vm.json"):
        try:
            record = json.loads(vm_file.read_text())
        except (OSError, ValueError):
            continue
        for entry in record.get("pids", []):
            if procs.same_process(entry):
                procs.kill_recorded(entry)
                removed.append(f"process {entry['pid']} of {record.get('instance_id')}")
        if record.get("state") == "running":
            record["state"] = "destroyed"
            write_json(vm_file, record)
        names.add(record["netns"])
    for name in sorted(names):
        if os.path.exists(netns.path(name)):
            netns.delete(name)
            removed.append(f"netns {name}")
    return removed


def _shared_paths(extra: tuple[str, ...]) -> list[str]:
    """Host dirs under a private dir that VMs must still see: the Python they may run."""
    wanted = {os.path.realpath(sys.base_prefix), *(os.path.realpath(p) for p in extra)}
    return sorted(
        path
        for path in wanted
        if os.path.isdir(path) and any(path.startswith(private + "/") for private in PRIVATE_DIRS)
    )


@dataclass
class Vm:
    instance_id: str
    netns: str
    dir: Path
    process: subprocess.Popen[bytes]
    metadata: MetadataServer
    boot_seconds: float


class Simulator:
    """Mirrors `source`'s instances as VMs: `start()`, then `stop()`.

    `bridged`: the cloud's services on the host's loopback, (host, port) each; a VM
    reaches each at 127.0.0.1:<port>, so the URLs the host uses work inside it.
    `shared_paths`: host directories inside the VMs' private dirs that VMs still see
    (read-only); the running Python's installation is always among them.
    """

    def __init__(
        self,
        state_dir: Path,
        source: InstanceSource,
        *,
        bridged: Sequence[tuple[str, int]],
        poll_interval: float = 0.3,
        shared_paths: tuple[str, ...] = (),
    ) -> None:
        self.state_dir = state_dir
        self.source = source
        self.bridged = tuple(bridged)
        self.poll_interval = poll_interval
        self.shared_paths = _shared_paths(shared_paths)
        self.prefix = prefix_for(state_dir)
        self._vms: dict[str, Vm] = {}
        self._done: set[str] = set()  # instances whose VM existed and ended
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._bridge = Bridge()
        self._poller = threading.Thread(target=self._poll_loop, name="devcloud-poller", daemon=True)

    def start(self) -> None:
        """Reap what a previous run in this state dir left, then start polling.

        The caller makes sure no other live simulator uses this state dir.
        """
        reap(self.state_dir)
        shutil.rmtree(self.state_dir / "vms", ignore_errors=True)
        for directory in PRIVATE_DIRS:
            os.makedirs(directory, exist_ok=True)  # bind targets must exist on the host
        self._bridge.start()
        self._poller.start()

    def stop(self) -> None:
        """Stop polling, destroy every VM and stop the bridge."""
        self._stopping.set()
        if self._poller.is_alive():
            self._poller.join(timeout=30)
        with self._lock:
            for instance_id in list(self._vms):
                self._destroy(instance_id, "dev cloud stopped")
        self._bridge.stop()

    # -- what users and tests see --------------------------------------------------------

    def vms(self) -> list[str]:
        with self._lock:
            return sorted(self._vms)

    def vm_netns(self, instance_id: str) -> str:
        with self._lock:
            return self._vm(instance_id).netns

    def boot_seconds(self, instance_id: str) -> float:
        with self._lock:
            return self._vm(instance_id).boot_seconds

    def console(self, instance_id: str) -> str:
        """The VM's console output (its user data's stdout and stderr)."""
        path = self.state_dir / "vms" / instance_id / "console.log"
        if not path.exists():
            raise DevCloudError(f"no VM was booted for instance {instance_id}")
        return path.read_text(errors="replace")

    def kill(self, instance_id: str) -> None:
        """Destroy the VM abruptly without telling the cloud (a machine dying)."""
        with self._lock:
            self._vm(instance_id)
            self._destroy(instance_id, "killed")

    # -- the simulator -----------------------------------------------------------------

    def _vm(self, instance_id: str) -> Vm:
        try:
            return self._vms[instance_id]
        except KeyError:
            raise DevCloudError(f"no running VM for instance {instance_id}") from None

    def _poll_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._poll()
            except Exception as error:  # the cloud restarting or resetting: try again
                log.warning("dev cloud poll failed: %s", error, exc_info=log.isEnabledFor(10))
            self._stopping.wait(self.poll_interval)

    def _poll(self) -> None:
        """One pass: boot new running instances, destroy VMs whose instance ended."""
        seen = self.source.instances()
        with self._lock:
            if self._stopping.is_set():
                return
            for instance_id in list(self._vms):
                if seen.get(instance_id, InstanceState.ENDED) not in ALIVE:
                    self._destroy(instance_id, "instance ended")
            for instance_id, state in seen.items():
                if state is InstanceState.STOPPED:
                    self._done.discard(instance_id)  # a later start boots it afresh
                elif state is InstanceState.RUNNING and not (
                    instance_id in self._vms or instance_id in self._done
                ):
                    self._boot(instance_id)
            self._terminate_due()

    def _terminate_due(self) -> None:
        """Carry out interruptions whose grace period ended, as the cloud would."""
        for instance_id in list(self._vms):
            due = self.state_dir / "vms" / instance_id / TERMINATE_AT_FILE
            try:
                at = json.loads(due.read_text())["at"]
            except (OSError, ValueError, KeyError):
                continue
            if at <= time.time():
                self.source.terminate(instance_id)
                due.unlink()

    def _boot(self, instance_id: str) -> None:
        started = time.monotonic()
        name = self.prefix + self.source.vm_name(instance_id)
        vm_dir = self.state_dir / "vms" / instance_id
        vm_dir.mkdir(parents=True, exist_ok=True)
        console = vm_dir / "console.log"
        record: dict[str, Any] = {
            "instance_id": instance_id,
            "netns": name,
            "state": "booting",
            "pids": [],
        }
        write_json(vm_dir / "vm.json", record)
        metadata: MetadataServer | None = None
        try:
            spec = self.source.boot_spec(instance_id)
            record.update(spec.details)
            (vm_dir / "user-data").write_bytes(spec.user_data)
            binds = []
            for directory in PRIVATE_DIRS:
                private = vm_dir / "fs" / directory.strip("/").replace("/", "-")
                private.mkdir(parents=True, exist_ok=True)
                binds.append([str(private), directory])
            (vm_dir / "fs" / "tmp").chmod(0o1777)
            (vm_dir / "fs" / "var-tmp").chmod(0o1777)
            config = {
                "user_data": str(vm_dir / "user-data"),
                "user_data_dest": USER_DATA_PATH,
                "binds": binds,
                "tmpfs": list(PRIVATE_TMPFS),
                "shared": self.shared_paths,
                "readonly_root": True,
                "hostname": spec.hostname,
                "env": {**BASE_ENV, **spec.env},
            }
            write_json(vm_dir / "init.json", config)
            netns.create(name)
            listener = netns.listening_socket(name, netns.METADATA_ADDRESS, 80)
            metadata = spec.metadata(listener, vm_dir)
            metadata.start()
            for host, port in self.bridged:
                listener = netns.listening_socket(name, "127.0.0.1", port)
                self._bridge.add(instance_id, listener, (host, port))
            with open(console, "ab") as output:
                # Spawned from the poller thread: if the simulator dies, so does the VM.
                process = subprocess.Popen(
                    [
                        "ip", "netns", "exec", name,
                        "unshare", "--mount", "--uts", "--pid", "--fork", "--kill-child",
                        "--mount-proc", "--propagation", "private", "--",
                        sys.executable, "-I", "-S", VMINIT, str(vm_dir / "init.json"),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=output,
                    env={"PATH": BASE_ENV["PATH"]},
                    preexec_fn=procs.die_with_parent,
                )  # fmt: skip
        except Exception as error:
            log.exception("booting %s failed", instance_id)
            with open(console, "a") as output:
                output.write(f"devcloud: boot failed: {error}\n")
            self._bridge.remove(instance_id)
            if metadata is not None:
                metadata.stop()
            netns.delete(name)
            record["state"] = "failed"
            write_json(vm_dir / "vm.json", record)
            self._done.add(instance_id)
            return
        boot_seconds = time.monotonic() - started
        self._vms[instance_id] = Vm(instance_id, name, vm_dir, process, metadata, boot_seconds)
        record.update(state="running", pids=[procs.record(process.pid)], boot_seconds=boot_seconds)
        write_json(vm_dir / "vm.json", record)
        log.info("booted %s as %s in %.3fs", instance_id, name, boot_seconds)

    def _destroy(self, instance_id: str, why: str) -> None:
        vm = self._vms.pop(instance_id)
        self._done.add(instance_id)
        with contextlib.suppress(ProcessLookupError):
            vm.process.kill()  # --kill-child takes the VM's init, hence its PID namespace
        vm.process.wait()
        survivors = netns.delete(vm.netns)
        self._bridge.remove(instance_id)
        vm.metadata.stop()
        shutil.rmtree(vm.dir / "fs", ignore_errors=True)
        record = json.loads((vm.dir / "vm.json").read_text())
        record["state"] = "destroyed"
        write_json(vm.dir / "vm.json", record)
        with open(vm.dir / "console.log", "a") as output:
            output.write(f"devcloud: machine destroyed ({why})\n")
        if survivors:
            log.error("processes %s of %s survived SIGKILL", survivors, instance_id)
        log.info("destroyed %s (%s)", instance_id, why)
