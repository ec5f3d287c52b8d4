"""`meadow aws devcloud ...`: start, inspect and stop the dev cloud from a shell.

`start` runs the cloud as a background process (`run` in a new session) and prints the
environment to export, so `eval "$(meadow aws devcloud start)"` points a pipeline at it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import click
import platformdirs

from meadow_devcloud.ec2.devcloud import (
    STATE_FILE,
    DevCloud,
    announce_interruption,
    cleanup,
    read_state,
)
from meadow_devcloud.ec2.moto import DEFAULT_REGION
from meadow_devcloud.vm import procs
from meadow_devcloud.vm.simulator import DevCloudError, check_host

DEFAULT_STATE_DIR = Path(platformdirs.user_state_dir("meadow")) / "devcloud"

state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_STATE_DIR,
    envvar="MEADOW_DEVCLOUD_DIR",
    show_default=True,
    help="Where the dev cloud keeps its pids, logs and VM consoles.",
)


def _running(state_dir: Path) -> dict[str, object] | None:
    state = read_state(state_dir)
    if state and procs.same_process(state["daemon"]):
        return state
    return None


def _exports(env: dict[str, str]) -> str:
    return "\n".join(f"export {name}={value}" for name, value in env.items())


@click.group(name="devcloud")
def devcloud() -> None:
    """A local AWS (moto) whose EC2 instances boot as local VMs (needs root)."""


@devcloud.command()
@state_dir_option
@click.option("--port", type=int, default=0, help="moto's port on 127.0.0.1 (0: a free one).")
@click.option(
    "--region", "regions", multiple=True, default=[DEFAULT_REGION], show_default=True,
    help="Regions whose instances are booted (repeatable).",
)  # fmt: skip
@click.option("--all-instances", is_flag=True, help="Boot every instance, not only Meadow's.")
@click.option("--timeout", type=float, default=60.0, help="Seconds to wait for it to be ready.")
def start(
    state_dir: Path, port: int, regions: tuple[str, ...], all_instances: bool, timeout: float
) -> None:
    """Start in the background; print the environment to export."""
    try:
        check_host()
    except DevCloudError as error:
        raise click.ClickException(str(error)) from None
    state_dir = state_dir.resolve()
    state = _running(state_dir)
    if state is None:
        state_dir.mkdir(parents=True, exist_ok=True)
        (state_dir / STATE_FILE).unlink(missing_ok=True)
        command = [sys.executable, "-m", "meadow_devcloud", "run"]
        command += ["--state-dir", str(state_dir), "--port", str(port)]
        for region in regions:
            command += ["--region", region]
        if all_instances:
            command.append("--all-instances")
        with open(state_dir / "devcloud.log", "ab") as log:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while state is None:
            if process.poll() is not None:
                raise click.ClickException(
                    f"the dev cloud exited with {process.returncode}; see {state_dir}/devcloud.log"
                )
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                cleanup(state_dir)
                raise click.ClickException(f"the dev cloud did not start in {timeout}s")
            time.sleep(0.05)
            state = read_state(state_dir)
        click.echo(f"dev cloud running (pid {process.pid}), state in {state_dir}", err=True)
    else:
        click.echo(f"dev cloud already running, state in {state_dir}", err=True)
    env = state["env"]
    assert isinstance(env, dict)
    click.echo(_exports(env))


@devcloud.command(hidden=True)
@state_dir_option
@click.option("--port", type=int, default=0)
@click.option("--region", "regions", multiple=True, default=[DEFAULT_REGION])
@click.option("--all-instances", is_flag=True)
def run(state_dir: Path, port: int, regions: tuple[str, ...], all_instances: bool) -> None:
    """Run in the foreground until SIGTERM/SIGINT (what `start` launches)."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    try:
        cloud = DevCloud.start(
            state_dir, port=port, regions=tuple(regions), managed_only=not all_instances
        )
    except DevCloudError as error:
        raise click.ClickException(str(error)) from None
    try:
        done.wait()
    finally:
        cloud.stop()


@devcloud.command()
@state_dir_option
@click.option("--timeout", type=float, default=30.0)
def stop(state_dir: Path, timeout: float) -> None:
    """Stop it: destroy every VM, stop moto, reap anything a crash left."""
    state_dir = state_dir.resolve()
    state = _running(state_dir)
    if state is not None:
        entry = state["daemon"]
        assert isinstance(entry, dict)
        os.kill(entry["pid"], signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while procs.same_process(entry) and time.monotonic() < deadline:  # type: ignore[arg-type]
            time.sleep(0.05)
    removed = cleanup(state_dir)
    if removed:
        click.echo("reaped leftovers: " + ", ".join(removed), err=True)
    click.echo("dev cloud stopped" if state is not None else "dev cloud was not running", err=True)


@devcloud.command()
@state_dir_option
def status(state_dir: Path) -> None:
    """Whether it runs, its endpoint, and its VMs."""
    state_dir = state_dir.resolve()
    state = _running(state_dir)
    if state is None:
        click.echo("dev cloud: not running")
        return
    click.echo(f"dev cloud: running at {state['url']} (state in {state_dir})")
    for vm_file in sorted((state_dir / "vms").glob("*/vm.json")):
        record = json.loads(vm_file.read_text())
        if record.get("state") == "running":
            click.echo(
                f"  {record['instance_id']}  {record['region']}  netns {record['netns']}  "
                f"console {vm_file.parent / 'console.log'}"
            )


@devcloud.command()
@state_dir_option
def env(state_dir: Path) -> None:
    """Print the environment to export for the running dev cloud."""
    state = _running(state_dir.resolve())
    if state is None:
        raise click.ClickException("the dev cloud is not running; start it first")
    variables = state["env"]
    assert isinstance(variables, dict)
    click.echo(_exports(variables))


@devcloud.command()
@state_dir_option
@click.argument("instance_id")
@click.option(
    "--terminate-after", type=float, default=None,
    help="Also terminate the instance after this many seconds (AWS gives 120).",
)  # fmt: skip
def interrupt(state_dir: Path, instance_id: str, terminate_after: float | None) -> None:
    """Announce a spot interruption through INSTANCE_ID's metadata service."""
    state_dir = state_dir.resolve()
    if _running(state_dir) is None:
        raise click.ClickException("the dev cloud is not running; start it first")
    try:
        announce_interruption(state_dir, instance_id, terminate_after)
    except DevCloudError as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"interruption announced to {instance_id}", err=True)
