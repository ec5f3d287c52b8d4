"""The dev cloud: moto plus a simulator that boots moto's instances as local VMs.

The simulator polls the emulated EC2 API and boots every running (Meadow-tagged)
instance as an isolated local machine: its own network namespace (only `lo`, moto
bridged in at the host's URL, a fake IMDS at 169.254.169.254), its own mount, UTS and
PID namespaces with private /tmp, /opt, /root, /var/lib/meadow, ... and the rest of the
host read-only. It runs the instance's real user data there as root, and destroys the
machine when the instance stops existing. Addresses moto reports are never contacted.

The user data's environment is a fresh machine's (PATH, HOME=/root) plus the cloud's
configuration: AWS_ENDPOINT_URL (moto, reachable through the bridge) and
AWS_DEFAULT_REGION (the instance's region). Credentials come from the instance
profile through IMDS, as on EC2; an instance without a profile has none.

Everything started is recorded under the state dir, so `cleanup(state_dir)` reaps it
even after a crash; netns names start with `mdw-<tag>-`, tag derived from the state dir.
"""

from __future__ import annotations

import base64
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meadow_devcloud.ec2.imds import Identity, Imds, interruption_notice
from meadow_devcloud.ec2.moto import DEFAULT_REGION, MotoServer, client_env
from meadow_devcloud.vm import netns, procs
from meadow_devcloud.vm.bridge import Bridge

log = logging.getLogger(__name__)

STATE_FILE = "devcloud.json"
MANAGED_TAG = "meadow:managed"
VMINIT = str(Path(__file__).parent / "vm" / "vminit.py")
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
ALIVE_STATES = ("pending", "running")


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


def read_state(state_dir: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads((state_dir / STATE_FILE).read_text())
        return state
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data: object) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(data, indent=1))
    temporary.replace(path)


def announce_interruption(
    state_dir: Path, instance_id: str, terminate_after: float | None = None
) -> None:
    """Make the VM's IMDS announce a spot interruption; optionally terminate it later.

    Works from any process (the notice is a file the VM's IMDS reads), so the CLI can
    interrupt a VM of a dev cloud running in the background.
    """
    vm_dir = state_dir / "vms" / instance_id
    try:
        record = json.loads((vm_dir / "vm.json").read_text())
    except (OSError, ValueError):
        raise DevCloudError(f"no VM for instance {instance_id} in {state_dir}") from None
    if record.get("state") != "running":
        raise DevCloudError(f"the VM of {instance_id} is {record.get('state')}, not running")
    notice = interruption_notice(120.0 if terminate_after is None else terminate_after)
    _write_json(vm_dir / "spot-instance-action.json", notice)
    if terminate_after is not None:
        _write_json(vm_dir / "terminate-at.json", {"at": time.time() + terminate_after})


def cleanup(state_dir: Path) -> list[str]:
    """Reap everything a dev cloud recorded in `state_dir` (also after a crash).

    Returns what it had to remove, for messages. Kills recorded processes (checking
    their start times), every process in the recorded and prefixed namespaces, and
    deletes those namespaces.
    """
    removed: list[str] = []
    state = read_state(state_dir) or {}
    for key in ("daemon", "moto"):
        entry = state.get(key)
        if entry and entry["pid"] != os.getpid() and procs.same_process(entry):
            procs.kill_recorded(entry)
            removed.append(f"{key} process {entry['pid']}")
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
            _write_json(vm_file, record)
        names.add(record["netns"])
    for name in sorted(names):
        if os.path.exists(netns.path(name)):
            netns.delete(name)
            removed.append(f"netns {name}")
    (state_dir / STATE_FILE).unlink(missing_ok=True)
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
    imds: Imds
    boot_seconds: float


class DevCloud:
    """A running dev cloud: use `DevCloud.start(state_dir)`, then `stop()`."""

    def __init__(
        self,
        state_dir: Path,
        moto: MotoServer,
        owns_moto: bool,
        regions: tuple[str, ...],
        managed_only: bool,
        poll_interval: float,
        shared_paths: tuple[str, ...] = (),
    ) -> None:
        self.state_dir = state_dir
        self.shared_paths = _shared_paths(shared_paths)
        self.moto = moto
        self._owns_moto = owns_moto
        self.regions = regions
        self.managed_only = managed_only
        self.poll_interval = poll_interval
        self.prefix = prefix_for(state_dir)
        self._vms: dict[str, Vm] = {}
        self._done: set[str] = set()  # instances whose VM existed and ended
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._bridge = Bridge()
        import boto3  # here, so `devcloud status/stop/interrupt` start fast

        # The simulator is the cloud, not a client: it talks to its own moto explicitly.
        session = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing"
        )
        self._ec2 = {
            region: session.client("ec2", region_name=region, endpoint_url=moto.url)
            for region in regions
        }
        self._iam = session.client("iam", region_name=regions[0], endpoint_url=moto.url)
        self._poller = threading.Thread(target=self._poll_loop, name="devcloud-poller", daemon=True)

    @classmethod
    def start(
        cls,
        state_dir: Path,
        *,
        port: int = 0,
        moto_url: str | None = None,
        regions: tuple[str, ...] = (DEFAULT_REGION,),
        managed_only: bool = True,
        poll_interval: float = 0.3,
        shared_paths: tuple[str, ...] = (),
    ) -> DevCloud:
        """Start moto (or use the one at `moto_url`) and the VM simulator.

        `shared_paths`: host directories inside the VMs' private dirs that VMs still see
        (read-only); the running Python's installation is always among them.
        """
        check_host()
        if not regions:
            raise DevCloudError("give at least one region for the simulator to watch")
        state_dir = Path(state_dir).resolve()
        state_dir.mkdir(parents=True, exist_ok=True)
        previous = read_state(state_dir)
        if previous and procs.same_process(previous["daemon"]):
            raise DevCloudError(
                f"a dev cloud already runs with state dir {state_dir} "
                f"(pid {previous['daemon']['pid']}); stop it first"
            )
        cleanup(state_dir)
        shutil.rmtree(state_dir / "vms", ignore_errors=True)
        for directory in PRIVATE_DIRS:
            os.makedirs(directory, exist_ok=True)  # bind targets must exist on the host
        if moto_url is None:
            moto = MotoServer.start(port=port, log_path=state_dir / "moto.log")
        else:
            moto = MotoServer.attach(moto_url)
        cloud = cls(
            state_dir, moto, moto_url is None, regions, managed_only, poll_interval, shared_paths
        )
        try:
            cloud._write_state()
            cloud._bridge.start()
            cloud._poller.start()
        except BaseException:
            cloud.stop()
            raise
        return cloud

    # -- what users and tests see --------------------------------------------------------

    @property
    def url(self) -> str:
        return self.moto.url

    @property
    def env(self) -> dict[str, str]:
        return client_env(self.moto.url, self.regions[0])

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

    def interrupt(self, instance_id: str, terminate_after: float | None = None) -> None:
        """Announce a spot interruption via the VM's IMDS (and terminate it later if asked)."""
        announce_interruption(self.state_dir, instance_id, terminate_after)

    def kill(self, instance_id: str) -> None:
        """Destroy the VM abruptly without telling EC2 (a machine dying)."""
        with self._lock:
            self._vm(instance_id)
            self._destroy(instance_id, "killed")

    def stop(self) -> None:
        """Destroy every VM, stop the poller, the bridge and (if ours) moto."""
        self._stopping.set()
        if self._poller.is_alive():
            self._poller.join(timeout=30)
        with self._lock:
            for instance_id in list(self._vms):
                self._destroy(instance_id, "dev cloud stopped")
        self._bridge.stop()
        if self._owns_moto:
            self.moto.stop()
        cleanup(self.state_dir)

    def __enter__(self) -> DevCloud:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    # -- the simulator -----------------------------------------------------------------

    def _vm(self, instance_id: str) -> Vm:
        try:
            return self._vms[instance_id]
        except KeyError:
            raise DevCloudError(f"no running VM for instance {instance_id}") from None

    def _write_state(self) -> None:
        _write_json(
            self.state_dir / STATE_FILE,
            {
                "daemon": procs.record(os.getpid()),
                "moto": procs.record(self.moto.pid) if self._owns_moto and self.moto.pid else None,
                "url": self.moto.url,
                "env": self.env,
                "regions": list(self.regions),
                "prefix": self.prefix,
            },
        )

    def _poll_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._poll()
            except Exception as error:  # moto restarting or resetting: try again next round
                log.warning("dev cloud poll failed: %s", error, exc_info=log.isEnabledFor(10))
            self._stopping.wait(self.poll_interval)

    def _poll(self) -> None:
        """One pass: boot new running instances, destroy VMs whose instance ended."""
        seen: dict[str, tuple[str, str, dict[str, Any]]] = {}
        filters = [{"Name": f"tag:{MANAGED_TAG}", "Values": ["true"]}] if self.managed_only else []
        for region, ec2 in self._ec2.items():
            for page in ec2.get_paginator("describe_instances").paginate(Filters=filters):
                for reservation in page["Reservations"]:
                    # moto attaches the instance profile to the first instance of a
                    # run_instances call only; EC2 gives it to all of them.
                    profile = next(
                        (
                            i["IamInstanceProfile"]
                            for i in reservation["Instances"]
                            if i.get("IamInstanceProfile")
                        ),
                        None,
                    )
                    for instance in reservation["Instances"]:
                        if profile is not None:
                            instance.setdefault("IamInstanceProfile", profile)
                        seen[instance["InstanceId"]] = (region, reservation["OwnerId"], instance)
        with self._lock:
            if self._stopping.is_set():
                return
            for instance_id in list(self._vms):
                found = seen.get(instance_id)
                if found is None or found[2]["State"]["Name"] not in ALIVE_STATES:
                    self._destroy(instance_id, "instance ended")
            for instance_id, (region, owner, instance) in seen.items():
                state = instance["State"]["Name"]
                if state == "stopped":
                    self._done.discard(instance_id)  # a later start boots it afresh
                elif state == "running" and not (
                    instance_id in self._vms or instance_id in self._done
                ):
                    self._boot(region, owner, instance)
            self._terminate_due()

    def _terminate_due(self) -> None:
        """Carry out interruptions whose grace period ended, as AWS would."""
        for instance_id in list(self._vms):
            due = self.state_dir / "vms" / instance_id / "terminate-at.json"
            try:
                at = json.loads(due.read_text())["at"]
            except (OSError, ValueError, KeyError):
                continue
            if at <= time.time():
                region = json.loads((due.parent / "vm.json").read_text())["region"]
                self._ec2[region].terminate_instances(InstanceIds=[instance_id])
                due.unlink()

    def _role(self, instance: dict[str, Any]) -> str | None:
        arn = instance.get("IamInstanceProfile", {}).get("Arn")
        if not arn:
            return None
        name: str = arn.rsplit("/", 1)[-1]
        try:
            roles = self._iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]
            return str(roles["Roles"][0]["RoleName"]) if roles["Roles"] else name
        except Exception:
            return name

    def _boot(self, region: str, owner: str, instance: dict[str, Any]) -> None:
        started = time.monotonic()
        instance_id: str = instance["InstanceId"]
        name = self.prefix + instance_id.removeprefix("i-")
        vm_dir = self.state_dir / "vms" / instance_id
        vm_dir.mkdir(parents=True, exist_ok=True)
        console = vm_dir / "console.log"
        record: dict[str, Any] = {
            "instance_id": instance_id,
            "region": region,
            "netns": name,
            "state": "booting",
            "pids": [],
        }
        _write_json(vm_dir / "vm.json", record)
        imds: Imds | None = None
        try:
            attribute = self._ec2[region].describe_instance_attribute(
                InstanceId=instance_id, Attribute="userData"
            )
            encoded = attribute.get("UserData", {}).get("Value", "")
            user_data = base64.b64decode(encoded) if encoded else b""
            (vm_dir / "user-data").write_bytes(user_data)
            private_ip = instance.get("PrivateIpAddress") or "10.0.0.10"
            identity = Identity(
                instance_id=instance_id,
                instance_type=instance["InstanceType"],
                region=region,
                availability_zone=instance["Placement"]["AvailabilityZone"],
                image_id=instance.get("ImageId", ""),
                account_id=owner,
                private_ip=private_ip,
                lifecycle=instance.get("InstanceLifecycle", "on-demand"),
                role=self._role(instance),
                tokens_required=instance.get("MetadataOptions", {}).get("HttpTokens") == "required",
                user_data=user_data,
            )
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
                "hostname": "ip-" + private_ip.replace(".", "-"),
                "env": {
                    **BASE_ENV,
                    "AWS_ENDPOINT_URL": self.moto.url,
                    "AWS_DEFAULT_REGION": region,
                },
            }
            _write_json(vm_dir / "init.json", config)
            netns.create(name)
            imds = Imds(
                netns.listening_socket(name, netns.IMDS_ADDRESS, 80),
                identity,
                vm_dir / "spot-instance-action.json",
                vm_dir / "imds.log",
            )
            imds.start()
            listener = netns.listening_socket(name, "127.0.0.1", self.moto.port)
            self._bridge.add(instance_id, listener, (self.moto.host, self.moto.port))
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
            if imds is not None:
                imds.stop()
            netns.delete(name)
            record["state"] = "failed"
            _write_json(vm_dir / "vm.json", record)
            self._done.add(instance_id)
            return
        boot_seconds = time.monotonic() - started
        self._vms[instance_id] = Vm(instance_id, name, vm_dir, process, imds, boot_seconds)
        record.update(state="running", pids=[procs.record(process.pid)], boot_seconds=boot_seconds)
        _write_json(vm_dir / "vm.json", record)
        log.info("booted %s as %s in %.3fs", instance_id, name, boot_seconds)

    def _destroy(self, instance_id: str, why: str) -> None:
        vm = self._vms.pop(instance_id)
        self._done.add(instance_id)
        with contextlib.suppress(ProcessLookupError):
            vm.process.kill()  # --kill-child takes the VM's init, hence its PID namespace
        vm.process.wait()
        survivors = netns.delete(vm.netns)
        self._bridge.remove(instance_id)
        vm.imds.stop()
        shutil.rmtree(vm.dir / "fs", ignore_errors=True)
        record = json.loads((vm.dir / "vm.json").read_text())
        record["state"] = "destroyed"
        _write_json(vm.dir / "vm.json", record)
        with open(vm.dir / "console.log", "a") as output:
            output.write(f"devcloud: machine destroyed ({why})\n")
        if survivors:
            log.error("processes %s of %s survived SIGKILL", survivors, instance_id)
        log.info("destroyed %s (%s)", instance_id, why)
