"""Entry point of the agent process: ``python -m meadow_core.agent --home DIR``.

Callers start it on demand (see ``meadow_core.hosts.local``); a cloud VM's boot script
starts it the same way. Exactly one agent runs per home: it holds ``agent.lock``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from pathlib import Path

import filelock

from meadow_core.agent.agent import Agent
from meadow_core.agent.capacity import Capacity
from meadow_core.agent.processes import AGENT_HOME_VARIABLE
from meadow_core.place import LocalPlace
from meadow_core.task_context import STORE_VARIABLE, TASK_STORE_VARIABLE

#: An agent log past this size is started afresh, so it never grows without bound.
_MAX_AGENT_LOG_BYTES = 10 * 2**20


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="meadow-agent", description=__doc__)
    parser.add_argument("--home", required=True, type=Path)
    parser.add_argument("--idle-timeout", type=float, default=300.0)
    parser.add_argument("--cpu", type=float, default=None)
    parser.add_argument("--memory-gb", type=float, default=None)
    parser.add_argument(
        "--retention-days",
        type=float,
        default=float(os.environ.get("MEADOW_RETENTION_DAYS", 7)),
        help="keep finished jobs' results and logs this long (default $MEADOW_RETENTION_DAYS or 7)",
    )
    parser.add_argument(
        "--daemonize", action="store_true", help="fork into the background and return at once"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    os.umask(0o077)  # its log, scratch files and stored objects are its user's only
    place = LocalPlace(args.home)
    os.environ[AGENT_HOME_VARIABLE] = str(place.home)
    # Tasks open it via current_task(): this home's store, unless the machine's owner
    # (an EC2 instance agent) names another.
    os.environ[STORE_VARIABLE] = os.environ.get(TASK_STORE_VARIABLE) or str(place.store.root)
    if args.daemonize and os.fork() > 0:
        # The caller reaps this intermediate process; the agent is re-parented.
        os._exit(0)
    log_path = place.agent_log_path
    with contextlib.suppress(OSError):
        if log_path.stat().st_size > _MAX_AGENT_LOG_BYTES:
            log_path.unlink()
    logging.basicConfig(
        filename=log_path,
        level=logging.INFO,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
    )
    lock = filelock.FileLock(place.agent_lock_path)
    try:
        # Only a moment: callers launch an agent only when the lock is free, so a taken
        # lock means another agent serves this home and this one must not wait to take over.
        lock.acquire(timeout=2)
    except filelock.Timeout:
        logging.getLogger("meadow.agent").info("another agent holds %s", place.agent_lock_path)
        sys.exit(0)
    try:
        place.agent_pid_path.write_text(str(os.getpid()))
        capacity = Capacity.of_this_machine(args.cpu, args.memory_gb)
        agent = Agent(place, args.idle_timeout, capacity, args.retention_days * 86400)
        asyncio.run(agent.serve())
    finally:
        with contextlib.suppress(FileNotFoundError):
            place.agent_pid_path.unlink()
        lock.release()


if __name__ == "__main__":
    main()
