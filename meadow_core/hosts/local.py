"""``LocalHost``: run jobs on this machine through a real agent, no cloud account needed.

The caller writes payloads into the home's object store and tasks into its SQLite
queue, then rings the agent's doorbell over a Unix socket; the agent streams results and
logs back over the same socket. If no agent runs, the first call starts one; if the
connection drops (the agent exited idle or was killed), the next call or the waiting
watch starts a new agent, which finds every unfinished task still in the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import subprocess
import sys
import time
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import filelock

from meadow_core import _runtime, protocol
from meadow_core.agent.capacity import Capacity
from meadow_core.errors import AgentUnavailableError
from meadow_core.hosts.base import Host, check_positive_seconds
from meadow_core.place import LocalPlace, default_home, peer_uid
from meadow_core.protocol import Environment, JobRecord, JobSpec, TaskMessage, TaskOutcome
from meadow_core.resources import DEFAULT_TASK_CPU, Resources
from meadow_core.transport.base import ObjectStore
from meadow_core.watch import JobWatch

#: Seconds an agent waits without work before it exits.
DEFAULT_IDLE_TIMEOUT = 300.0
_AGENT_START_TIMEOUT = 30.0


class _Connection:
    """One event loop's connection to the agent of one home."""

    def __init__(self, host: LocalHost) -> None:
        self.host = host
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        #: Every watch of this loop per job (callers of one process may share a job).
        self.watches: dict[str, list[JobWatch]] = {}
        self.pending_watches: dict[str, bool] = {}
        self.status_waiters: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.reader_task: asyncio.Task[None] | None = None
        self.reconnect_task: asyncio.Task[None] | None = None
        self.lock = asyncio.Lock()

    async def ensure(self) -> None:
        async with self.lock:
            if self.writer is not None and not self.writer.is_closing():
                return
            await asyncio.to_thread(self.host.start_agent)
            reader, writer = await asyncio.open_unix_connection(
                self.host.place.socket_address, limit=2**26
            )
            # Another user could have bound the agent's name first: never send work to,
            # or unpickle a "result" from, anyone but an agent of this user.
            uid = peer_uid(writer.get_extra_info("socket"))
            if uid != os.geteuid():
                writer.close()
                raise AgentUnavailableError(
                    f"the socket of the Meadow agent for {self.host.place.home} is held by a "
                    f"process of uid {uid}, not yours (uid {os.geteuid()}): refusing to use "
                    "it; stop that process, or use another home"
                )
            self.reader, self.writer = reader, writer
            self.reader_task = asyncio.ensure_future(self._read(self.reader))
            # An agent of another Meadow version (from before an upgrade) retires.
            self._send({"op": "hello", "version": _runtime.__version__})
            for job_id in self.watches:
                if job_id not in self.pending_watches:  # those go with their doorbell
                    self._send({"op": "watch", "job_id": job_id, "logs": True, "new": True})

    def _send(self, message: dict[str, Any]) -> None:
        assert self.writer is not None
        self.writer.write(protocol.frame(message))

    async def send(self, message: dict[str, Any]) -> None:
        for attempt in range(3):
            await self.ensure()
            try:
                self._send(message)
                assert self.writer is not None
                await self.writer.drain()
                return
            except (ConnectionError, RuntimeError):
                self._drop()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _drop(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.writer = None

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                header = await reader.readexactly(protocol.frame_header_size())
                body = await reader.readexactly(protocol.frame_length(header))
                self._dispatch(protocol.unpack(body))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._drop()
            if self.watches:
                # Someone is waiting: reconnect (starting an agent if needed) and replay.
                self.reconnect_task = asyncio.ensure_future(self._reconnect())

    async def _reconnect(self) -> None:
        """Reconnect for the waiting watches; if no agent can be had, fail them."""
        error: Exception | None = None
        for delay in (0.0, 0.2, 0.5, 1.0, 2.0, 5.0):
            await asyncio.sleep(delay)
            try:
                await self.ensure()
                return
            except Exception as exc:
                error = exc
        for job_watch in [w for watchers in self.watches.values() for w in watchers]:
            job_watch.on_error(
                AgentUnavailableError(f"lost the Meadow agent and could not restart it: {error}")
            )

    def _dispatch(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "result":
            outcome = TaskOutcome.from_wire(message)
            for job_watch in list(self.watches.get(outcome.job_id, ())):
                job_watch.on_result(outcome)
        elif op == "log":
            for job_watch in list(self.watches.get(message["job_id"], ())):
                job_watch.on_log(message["task_id"], message["attempt"], message["lines"])
        elif op == "job_done":
            for job_watch in list(self.watches.get(message["job_id"], ())):
                job_watch.on_done(message["state"])
        elif op == "job_unknown":
            for job_watch in list(self.watches.get(message["job_id"], ())):
                job_watch.on_unknown()
        elif op == "status":
            waiter = self.status_waiters.pop(message.get("ref") or 0, None)
            if waiter and not waiter.done():
                waiter.set_result(message)

    @contextlib.asynccontextmanager
    async def watch(
        self, job_id: str, num_tasks: int, kind: str, new: bool
    ) -> AsyncIterator[JobWatch]:
        job_watch = JobWatch(job_id, num_tasks, kind)
        watchers = self.watches.setdefault(job_id, [])
        first = not watchers
        watchers.append(job_watch)
        try:
            if new and first:
                # Sent with the submission's doorbell: one message instead of two.
                self.pending_watches[job_id] = True
            else:
                # Also a second watch of a job this loop already follows: the agent
                # replays what is stored (each watch hands every task over once).
                await self.send({"op": "watch", "job_id": job_id, "logs": True, "new": new})
            yield job_watch
        finally:
            watchers.remove(job_watch)
            if not watchers:
                self.watches.pop(job_id, None)
                self.pending_watches.pop(job_id, None)
                if (
                    not job_watch.finished
                    and self.writer is not None
                    and not self.writer.is_closing()
                ):
                    with contextlib.suppress(Exception):
                        self._send({"op": "unwatch", "job_id": job_id})

    async def ring(self, job_id: str, created: bool) -> None:
        """Tell the agent a job was submitted, registering a pending watch with it."""
        await self.ensure()  # a fresh connection must not re-send this watch on its own
        message: dict[str, Any] = {"op": "submitted", "job_id": job_id, "created": created}
        logs = self.pending_watches.pop(job_id, None)
        if logs is not None:
            message["logs"] = logs
        await self.send(message)


@dataclasses.dataclass(eq=False)
class LocalHost(Host):
    """This machine, through a Meadow agent started on demand.

    ``home`` holds the queue, the object store and the agent's files (default
    ``$MEADOW_HOME`` or the platform's state directory). ``idle_timeout`` is how long the
    agent waits without work before it exits. ``logical_cpu`` and ``memory_gb`` cap what
    Meadow may use of this machine (default: all of it). A task that asks for no
    resources gets one logical CPU and no memory limit.
    """

    home: str | Path | None = dataclasses.field(
        default=None, metadata={"description": "Home directory (default: $MEADOW_HOME)."}
    )
    idle_timeout: float = dataclasses.field(
        default=DEFAULT_IDLE_TIMEOUT,
        metadata={"description": "Seconds the agent waits without work before it exits."},
    )
    logical_cpu: float | None = None
    memory_gb: float | None = None

    def __post_init__(self) -> None:
        check_positive_seconds("idle_timeout", self.idle_timeout)
        self.place = LocalPlace(Path(self.home) if self.home else default_home())
        self.capacity = Capacity.of_this_machine(self.logical_cpu, self.memory_gb)
        self._connections: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Connection] = (
            weakref.WeakKeyDictionary()
        )
        self._agent_launcher: subprocess.Popen[bytes] | None = None

    def __getstate__(self) -> dict[str, Any]:
        """Pickle only the settings: orchestrators copy hosts between processes."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__post_init__()

    def config_settings(self) -> dict[str, Any]:
        """The settings, with the home resolved: a process that rebuilds this host from
        its config (an Airflow triggerer) may have another ``$MEADOW_HOME``."""
        return {**super().config_settings(), "home": str(self.place.home)}

    # -- the agent -------------------------------------------------------------------

    def _agent_reachable(self) -> bool:
        import socket

        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(self.place.socket_address)
                return True
            except OSError:
                return False

    def start_agent(self) -> None:
        """Start this home's agent unless one is already serving (blocking).

        An agent that is shutting down still holds the home's lock; a new one is
        launched only once the lock is free, and an agent that finds the lock taken
        exits at once, so two agents never serve one home and none takes over later.
        """
        if self._agent_reachable():
            return
        with filelock.FileLock(self.place.spawn_lock_path, timeout=_AGENT_START_TIMEOUT):
            deadline = time.monotonic() + _AGENT_START_TIMEOUT
            launched_at: float | None = None
            while time.monotonic() < deadline:
                if self._agent_reachable():
                    return
                relaunch = launched_at is None or time.monotonic() - launched_at > 5.0
                if relaunch and self._agent_lock_free():
                    self._launch_agent()
                    launched_at = time.monotonic()
                time.sleep(0.01)
        raise AgentUnavailableError(
            f"the Meadow agent for {self.place.home} did not start within "
            f"{_AGENT_START_TIMEOUT:g}s; its log ends with:\n" + _tail(self.place.agent_log_path)
        )

    def _agent_lock_free(self) -> bool:
        lock = filelock.FileLock(self.place.agent_lock_path)
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            return False
        lock.release()
        return True

    def _launch_agent(self) -> None:
        package_root = str(_runtime.PACKAGE_ROOT.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        command = [
            sys.executable,
            "-m",
            "meadow_core.agent",
            "--home",
            str(self.place.home),
            "--idle-timeout",
            str(self.idle_timeout),
            "--daemonize",
        ]
        if self.logical_cpu:
            command += ["--cpu", str(self.logical_cpu)]
        if self.memory_gb:
            command += ["--memory-gb", str(self.memory_gb)]
        # The owner's only, whatever the umask: tasks' output and errors end up here.
        log_fd = os.open(self.place.agent_log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with open(log_fd, "ab") as agent_log:
            launcher = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=agent_log,
                stderr=agent_log,
                env=env,
                start_new_session=True,
            )
        if launcher.returncode != 0:
            raise AgentUnavailableError(
                f"the Meadow agent for {self.place.home} failed to start "
                f"(exit code {launcher.returncode}); its log ends with:\n"
                + _tail(self.place.agent_log_path)
            )

    def agent_pid(self) -> int | None:
        """The pid of the agent serving this home, if one runs."""
        if not self._agent_reachable():
            return None
        try:
            return int(self.place.agent_pid_path.read_text())
        except (OSError, ValueError):
            return None

    def shutdown(self, timeout: float = 15.0) -> None:
        """Stop this home's agent and its workers now (blocking); used by tests and the CLI."""
        import socket

        pid = self.agent_pid()
        if pid is None:
            return
        with (
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn,
            contextlib.suppress(OSError),
        ):
            conn.connect(self.place.socket_address)
            conn.sendall(protocol.frame({"op": "shutdown"}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _pid_alive(pid):
                return
            time.sleep(0.02)
        raise AgentUnavailableError(f"the agent {pid} did not stop within {timeout:g}s")

    def _connection(self) -> _Connection:
        loop = asyncio.get_running_loop()
        connection = self._connections.get(loop)
        if connection is None:
            connection = _Connection(self)
            self._connections[loop] = connection
        return connection

    async def agent_status(self) -> dict[str, Any]:
        connection = self._connection()
        ref = id(object())
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        connection.status_waiters[ref] = waiter
        await connection.send({"op": "status", "ref": ref})
        return await asyncio.wait_for(waiter, timeout=10)

    # -- Host -------------------------------------------------------------------------

    def check_resources(self, resources: Resources) -> None:
        self.capacity.check(resources, self.place.home)

    def default_resources(self) -> Resources:
        return Resources(logical_cpu=DEFAULT_TASK_CPU)

    def environment(self, environment_variables: Mapping[str, str]) -> Environment:
        return Environment(
            interpreter=sys.executable,
            sys_path=[os.path.abspath(p or os.curdir) for p in sys.path],
            working_directory=os.getcwd(),
            environment_variables=dict(environment_variables),
        )

    async def submit(
        self, spec: JobSpec, tasks: Sequence[TaskMessage], objects: Mapping[str, bytes | Path]
    ) -> bool:
        store, queue = self.place.store, self.place.queue

        def write() -> bool:
            for key, data in objects.items():
                if not store.exists(key):
                    store.put(key, data.read_bytes() if isinstance(data, Path) else data)
            return queue.submit(spec, tasks)

        big = len(tasks) > 100 or len(objects) > 10
        created = await asyncio.to_thread(write) if big else write()
        await self._connection().ring(spec.job_id, created)
        return created

    def watch(
        self, job_id: str, num_tasks: int, kind: str, new: bool = False
    ) -> contextlib.AbstractAsyncContextManager[JobWatch]:
        return self._connection().watch(job_id, num_tasks, kind, new)

    async def cancel(self, job_id: str) -> bool:
        known = self.place.queue.request_cancel(job_id)
        if known:
            await self._connection().send({"op": "cancel", "job_id": job_id})
        return known

    async def get_spec(self, job_id: str) -> JobSpec | None:
        return self.place.queue.get_spec(job_id)

    async def get_job(self, job_id: str) -> JobRecord | None:
        return self.place.queue.get_job(job_id)

    async def list_jobs(self, limit: int = 50) -> list[JobRecord]:
        return self.place.queue.list_jobs(limit)

    async def results(self, job_id: str) -> list[TaskOutcome]:
        return self.place.queue.results(job_id)

    async def read_object(self, key: str) -> bytes:
        return self.place.store.get(key)

    async def write_object(self, key: str, data: bytes) -> None:
        self.place.store.put(key, data)

    def object_store(self) -> ObjectStore:
        return self.place.store

    def object_location(self, key: str) -> str:
        return self.place.store.location(key)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True
