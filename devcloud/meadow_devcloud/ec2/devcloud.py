"""The EC2 dev cloud: moto plus the VM simulator booting moto's instances.

`DevCloud` composes a `MotoServer` (ours, or one someone else runs), the instances it
reports (`Ec2Instances`) and a `vm.simulator.Simulator` that boots them; see those for
what a VM is and what it sees. The user data's environment adds AWS_ENDPOINT_URL (moto,
reachable through the bridge) and AWS_DEFAULT_REGION (the instance's region);
credentials come from the instance profile through IMDS, as on EC2, and an instance
without a profile has none.

Everything started is recorded under the state dir (`devcloud.json` for the dev
cloud's own process and moto's, the simulator's records for the VMs), so
`cleanup(state_dir)` reaps it even after a crash.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from meadow_devcloud.ec2.imds import NOTICE_FILE, interruption_notice
from meadow_devcloud.ec2.instances import Ec2Instances
from meadow_devcloud.ec2.moto import DEFAULT_REGION, MotoServer, client_env
from meadow_devcloud.vm import procs
from meadow_devcloud.vm.simulator import (
    DevCloudError,
    Simulator,
    check_host,
    reap,
    running_vm_dir,
    schedule_termination,
    write_json,
)

STATE_FILE = "devcloud.json"


def read_state(state_dir: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads((state_dir / STATE_FILE).read_text())
        return state
    except (OSError, ValueError):
        return None


def announce_interruption(
    state_dir: Path, instance_id: str, terminate_after: float | None = None
) -> None:
    """Make the VM's IMDS announce a spot interruption; optionally terminate it later.

    Works from any process (the notice is a file the VM's IMDS reads), so the CLI can
    interrupt a VM of a dev cloud running in the background.
    """
    vm_dir = running_vm_dir(state_dir, instance_id)
    notice = interruption_notice(120.0 if terminate_after is None else terminate_after)
    write_json(vm_dir / NOTICE_FILE, notice)
    if terminate_after is not None:
        schedule_termination(vm_dir, terminate_after)


def cleanup(state_dir: Path) -> list[str]:
    """Reap everything a dev cloud recorded in `state_dir` (also after a crash).

    Returns what it had to remove, for messages. Kills the dev cloud's process and
    moto (checking their start times), then every VM (`vm.simulator.reap`).
    """
    removed: list[str] = []
    state = read_state(state_dir) or {}
    for key in ("daemon", "moto"):
        entry = state.get(key)
        if entry and entry["pid"] != os.getpid() and procs.same_process(entry):
            procs.kill_recorded(entry)
            removed.append(f"{key} process {entry['pid']}")
    removed += reap(state_dir)
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    return removed


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
        self.moto = moto
        self._owns_moto = owns_moto
        self.regions = regions
        self.managed_only = managed_only
        self.instances = Ec2Instances(moto.url, regions, managed_only)
        self.simulator = Simulator(
            state_dir,
            self.instances,
            bridged=[(moto.host, moto.port)],
            poll_interval=poll_interval,
            shared_paths=shared_paths,
        )

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
        if moto_url is None:
            moto = MotoServer.start(port=port, log_path=state_dir / "moto.log")
        else:
            moto = MotoServer.attach(moto_url)
        cloud = cls(
            state_dir, moto, moto_url is None, regions, managed_only, poll_interval, shared_paths
        )
        try:
            cloud._write_state()
            cloud.simulator.start()
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

    @property
    def prefix(self) -> str:
        """The names of this dev cloud's network namespaces start with this."""
        return self.simulator.prefix

    @property
    def poll_interval(self) -> float:
        return self.simulator.poll_interval

    @property
    def shared_paths(self) -> list[str]:
        return self.simulator.shared_paths

    def vms(self) -> list[str]:
        return self.simulator.vms()

    def vm_netns(self, instance_id: str) -> str:
        return self.simulator.vm_netns(instance_id)

    def boot_seconds(self, instance_id: str) -> float:
        return self.simulator.boot_seconds(instance_id)

    def console(self, instance_id: str) -> str:
        """The VM's console output (its user data's stdout and stderr)."""
        return self.simulator.console(instance_id)

    def interrupt(self, instance_id: str, terminate_after: float | None = None) -> None:
        """Announce a spot interruption via the VM's IMDS (and terminate it later if asked)."""
        announce_interruption(self.state_dir, instance_id, terminate_after)

    def kill(self, instance_id: str) -> None:
        """Destroy the VM abruptly without telling EC2 (a machine dying)."""
        self.simulator.kill(instance_id)

    def stop(self) -> None:
        """Destroy every VM, stop the poller, the bridge and (if ours) moto."""
        self.simulator.stop()
        if self._owns_moto:
            self.moto.stop()
        cleanup(self.state_dir)

    def __enter__(self) -> DevCloud:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _write_state(self) -> None:
        write_json(
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
