"""Processes the agent runs tasks in: warm Python workers and plain commands.

Both kinds stream their combined stdout/stderr to the agent, which attributes each
line to the task running in that process. A job whose environment names a container
image runs both kinds under ``docker run`` (the docker CLI keeps the output a pipe and
gives the worker a stdin that closes when the agent dies): the worker connects back over
a Unix socket mounted into the container, Meadow's worker runtime and the job's code are
mounted at their host paths, and every container is labelled ``meadow`` and removed when
it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psutil

from meadow_core import protocol
from meadow_core.agent.code_watch import any_changed
from meadow_core.agent.worker import END_MARKER, SPILL_DIR_VARIABLE, WORKER_TOKEN_VARIABLE
from meadow_core.machine_cache import MACHINE_CACHE_VARIABLE, machine_cache_folder
from meadow_core.protocol import Environment, TaskMessage
from meadow_core.task_context import (
    ATTEMPT_VARIABLE,
    JOB_ID_VARIABLE,
    STORE_VARIABLE,
    TASK_ID_VARIABLE,
)

#: How many pickled functions a worker keeps; the agent mirrors this to know when to resend.
FUNCTION_CACHE_SIZE = 32
_READ_CHUNK = 64 * 1024
#: A line longer than this without a newline is passed on in pieces.
_MAX_LINE = 2**20

LineSink = Callable[[list[str]], None]


#: Set in every task process: which agent home it belongs to (leak checks, debugging).
log = logging.getLogger("meadow.agent")

AGENT_HOME_VARIABLE = "MEADOW_AGENT_HOME"


def process_environment(environment: Environment) -> dict[str, str]:
    """The OS environment a task process gets: the agent's plus the job's own."""
    env = dict(os.environ)
    env.update(environment.environment_variables)
    paths = list(environment.sys_path)
    if environment.interpreter == sys.executable:
        # The agent's own Python (MEADOW_INTERPRETER) imports Meadow the way the agent
        # does: on an EC2 instance that is the bundle on the agent's PYTHONPATH.
        paths += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env


# -- containers ----------------------------------------------------------------------------

#: The label on every container Meadow starts (``containers.LABEL``; not imported, so
#: the agent loads no docker code for jobs that use no image).
CONTAINER_LABEL = "meadow"
#: How long a containerized worker may take to connect, pulling its image included.
CONTAINER_START_TIMEOUT = 600.0
#: Variables the docker CLI itself reads; the rest of its environment is the task's.
_DOCKER_CLI_VARIABLES = ("PATH", "HOME", "DOCKER_HOST", "DOCKER_CONFIG", "DOCKER_CONTEXT",
                         "DOCKER_CERT_PATH", "DOCKER_TLS_VERIFY")  # fmt: skip
#: docker CLI pid -> container name, for commands run in a container.
_command_containers: dict[int, str] = {}
_background: set[asyncio.Task[None]] = set()


def _docker_cli() -> str:
    found = shutil.which("docker")
    if found is None:
        raise RuntimeError(
            "this job runs in a container image, but the agent finds no docker CLI on its "
            "PATH (apt-get install docker.io)"
        )
    return found


def _outermost(paths: Iterable[str | None]) -> list[str]:
    """Existing folders, leaving out those inside another (one mount covers both)."""
    kept: list[str] = []
    for path in sorted({os.path.realpath(p) for p in paths if p and os.path.isdir(p)}):
        if not any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    return kept


def container_run(
    environment: Environment,
    name: str,
    *,
    interactive: bool,
    extra_env: dict[str, str],
    read_only: Iterable[str] = (),
    read_write: Iterable[str] = (),
) -> tuple[list[str], dict[str, str]]:
    """``docker run`` arguments up to the image, and the CLI's environment. Variable
    values travel in the CLI's environment (``--env NAME``), never on a command line.

    The container shares the machine's network, as a process of the agent would;
    the job's code, working directory and the place's store are mounted at their own
    paths, so every path the agent computed means the same inside."""
    assert environment.container_image is not None
    variables = {k: v for k, v in os.environ.items() if k.startswith("MEADOW_")}
    variables.update(environment.environment_variables)
    variables["PYTHONUNBUFFERED"] = "1"
    if environment.sys_path:
        variables["PYTHONPATH"] = os.pathsep.join(environment.sys_path)
    variables.update(extra_env)
    args = ["run", "--rm", "--init", "--name", name, "--label", CONTAINER_LABEL]
    args += ["--network", "host", "--log-driver", "none"]
    if interactive:
        args.append("--interactive")
    # MACHINE_CACHE_FOLDER means the same folder inside as outside: tasks in an image
    # find what earlier jobs on this machine left there.
    machine_cache = machine_cache_folder()
    variables[MACHINE_CACHE_VARIABLE] = machine_cache
    shared = [*environment.sys_path, environment.working_directory, *read_write, machine_cache]
    shared.append(os.environ.get(STORE_VARIABLE, ""))
    for path in _outermost(shared):
        args += ["--mount", f"type=bind,source={path},target={path}"]
    for path in _outermost(read_only):
        args += ["--mount", f"type=bind,source={path},target={path},readonly"]
    if environment.working_directory and os.path.isdir(environment.working_directory):
        args += ["--workdir", environment.working_directory]
    for variable in variables:
        args += ["--env", variable]
    cli_env = {k: v for k, v in os.environ.items() if k in _DOCKER_CLI_VARIABLES}
    cli_env.update(variables)
    args.append(environment.container_image)
    return args, cli_env


async def _accept_with_token(
    listener: socket.socket, token: str
) -> tuple[socket.socket, asyncio.StreamReader, asyncio.StreamWriter]:
    """The first connection whose ``ready`` message carries ``token``; any other peer
    (another local user who found the socket) is closed unheard, its bytes never
    unpickled."""
    loop = asyncio.get_running_loop()
    while True:
        connection, _ = await loop.sock_accept(listener)
        reader, writer = await asyncio.open_unix_connection(sock=connection, limit=2**26)
        try:
            header = await asyncio.wait_for(
                reader.readexactly(protocol.frame_header_size()), timeout=60
            )
            length = protocol.frame_length(header)
            if length > 4096:  # a ready message is tiny; do not read an impostor's flood
                raise ValueError("first message too large")
            hello = protocol.unpack(await reader.readexactly(length))
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, ValueError):
            writer.close()
            continue
        if hello.get("op") == "ready" and secrets.compare_digest(
            str(hello.get("token", "")), token
        ):
            return connection, reader, writer
        log.warning("refused a worker connection without this worker's token")
        writer.close()


def _container_name(kind: str) -> str:
    return f"meadow-{kind}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


async def _docker_kill(name: str) -> None:
    with contextlib.suppress(Exception):
        process = await asyncio.create_subprocess_exec(
            _docker_cli(),
            "kill",
            name,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await asyncio.wait_for(process.wait(), timeout=30)


def _kill_container_soon(name: str) -> None:
    """``docker kill`` without blocking the agent's loop (kills are called synchronously)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        with contextlib.suppress(Exception):
            subprocess.run([_docker_cli(), "kill", name], capture_output=True, timeout=30)
        return
    task = loop.create_task(_docker_kill(name))
    _background.add(task)
    task.add_done_callback(_background.discard)


class MemorySampler:
    """Resident memory of a process and its children, in GB.

    Finding children scans every process on the machine, so the list of children is
    refreshed only every ``CHILDREN_EVERY`` samples; their memory is read every time.
    """

    CHILDREN_EVERY = 10

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples = 0
        self.children: list[psutil.Process] = []
        try:
            self.process: psutil.Process | None = psutil.Process(pid)
        except psutil.Error:
            self.process = None

    def sample(self) -> float:
        if self.process is None:
            return 0.0
        try:
            if self.samples % self.CHILDREN_EVERY == 0:
                self.children = self.process.children(recursive=True)
            self.samples += 1
            total = self.process.memory_info().rss
        except psutil.Error:
            return 0.0
        for child in self.children:
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        return total / 2**30


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "the process is still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"the process was killed by {name}"
    return f"the process exited with code {returncode}"


class OutputPump:
    """Reads a process's output pipe, splits it into lines and hands them to a sink.

    A worker writes ``END_MARKER token`` after each task's output; the pump then fires
    ``on_marker(token)`` so the agent knows that task's log is complete.
    """

    def __init__(
        self,
        stream: asyncio.StreamReader,
        on_marker: Callable[[str], None] | None = None,
    ) -> None:
        self.stream = stream
        self.sink: LineSink | None = None
        self.on_marker = on_marker
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        pending = b""
        while True:
            chunk = await self.stream.read(_READ_CHUNK)
            if not chunk:
                if pending:
                    self._deliver([pending])
                return
            pending += chunk
            *lines, pending = pending.split(b"\n")
            if len(pending) > _MAX_LINE:  # a huge line without newline: pass it on anyway
                lines.append(pending)
                pending = b""
            if lines:
                self._deliver(lines)

    def _deliver(self, raw_lines: list[bytes]) -> None:
        batch: list[str] = []
        for raw in raw_lines:
            index = raw.find(END_MARKER)
            if index < 0:
                batch.append(raw.decode("utf-8", "replace"))
                continue
            if index:
                batch.append(raw[:index].decode("utf-8", "replace"))
            if batch and self.sink:
                self.sink(batch)
            batch = []
            if self.on_marker:
                self.on_marker(raw[index + len(END_MARKER) :].decode().strip())
        if batch and self.sink:
            self.sink(batch)


class Worker:
    """A warm Python process that runs one task at a time for one environment.

    The agent may queue a second task behind the running one (pipelining short map
    tasks); the worker runs them in order. Each queued task names the sink its output
    goes to; the pump switches sinks at each task's end marker.
    """

    def __init__(
        self,
        environment: Environment,
        process: asyncio.subprocess.Process,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pump: OutputPump | None = None,
        container: str | None = None,
        container_pid: int | None = None,
    ) -> None:
        self.environment = environment
        self.process = process
        self.reader = reader
        self.writer = writer
        self.functions: OrderedDict[str, None] = OrderedDict()
        self.idle_since = time.monotonic()
        self._queued: deque[tuple[str, LineSink, asyncio.Event]] = deque()
        assert process.stdout is not None
        if pump is None:
            pump = OutputPump(process.stdout)
        pump.on_marker = self._marker_seen
        self.pump = pump
        #: The container's name and the worker's pid as this machine sees it (memory
        #: sampling and kills reach it directly, not through the docker CLI).
        self.container = container
        self.container_pid = container_pid
        #: The user's files the worker imported and their fingerprints then, for a
        #: worker that runs code in place (``watches_code``); ``code_unknown`` if one
        #: may have changed after its import.
        self.watches_code = False
        self.code_files: dict[str, list[int]] = {}
        self.code_unknown = False
        #: The (job, attempt) the worker's code was last found current for.
        self.code_current_for: tuple[str, int] | None = None

    @property
    def pid(self) -> int:
        return self.container_pid if self.container_pid is not None else self.process.pid

    @classmethod
    async def start(
        cls,
        environment: Environment,
        scratch: str,
        spill_dir: str | None = None,
        *,
        watch_code: bool = False,
    ) -> Worker:
        """A ready worker. ``spill_dir``: where it pickles large results (see
        ``worker.py``); not for containers, whose user may not write the agent's folders.
        With ``watch_code`` (code run in place, not in a container) it reports the user's
        files it imports, for ``code_changed``."""
        if environment.container_image is not None:
            return await cls._start_in_container(environment, scratch)
        env = process_environment(environment)
        if spill_dir is not None:
            env[SPILL_DIR_VARIABLE] = spill_dir
        watch = ["--watch-code", str(time.time_ns())] if watch_code else []
        agent_end, worker_end = socket.socketpair()
        try:
            cwd = environment.working_directory
            if not os.path.isdir(cwd):
                cwd = scratch
            process = await asyncio.create_subprocess_exec(
                environment.interpreter,
                "-m",
                "meadow_core.agent.worker",
                str(worker_end.fileno()),
                *watch,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                pass_fds=(worker_end.fileno(),),
                cwd=cwd,
                env=env,
                start_new_session=True,  # so a task's children can be killed with it
            )
        finally:
            worker_end.close()
        reader, writer = await asyncio.open_unix_connection(sock=agent_end, limit=2**26)
        worker = cls(environment, process, reader, writer)
        try:
            hello = await asyncio.wait_for(worker.receive(), timeout=60)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError) as exc:
            await worker.kill()
            raise RuntimeError(
                f"a worker with interpreter {environment.interpreter} did not start "
                f"({describe_exit(process.returncode)}); is meadow installed in it?"
            ) from exc
        if hello.get("op") != "ready":
            await worker.kill()
            raise RuntimeError(f"unexpected first message from worker: {hello!r}")
        worker.watches_code = watch_code
        worker.note_code(hello)
        return worker

    @classmethod
    async def _start_in_container(cls, environment: Environment, scratch: str) -> Worker:
        """``docker run -i`` the worker with Meadow's runtime mounted; it connects to a
        Unix socket in a folder mounted into the container."""
        from meadow_core.containers import worker_bootstrap, worker_runtime

        home = os.environ.get(AGENT_HOME_VARIABLE) or os.path.dirname(scratch)
        runtime = await asyncio.to_thread(worker_runtime, Path(home) / "runtime")
        folder = tempfile.mkdtemp(prefix="meadow-w-")  # short: socket paths are limited
        # The image may run as any user, so the socket is open to all: only a peer that
        # proves it was given this token (in the container's environment, never on a
        # command line) receives tasks.
        token = secrets.token_hex(32)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        name = _container_name("worker")
        try:
            os.chmod(folder, 0o755)
            path = os.path.join(folder, "agent.sock")
            listener.bind(path)
            os.chmod(path, 0o777)  # the image may run as any user
            listener.listen(8)
            listener.setblocking(False)
            args, env = container_run(
                environment,
                name,
                interactive=True,
                extra_env={WORKER_TOKEN_VARIABLE: token},
                read_only=[str(runtime)],
                read_write=[folder],
            )
            process = await asyncio.create_subprocess_exec(
                _docker_cli(),
                *args,
                "python3",
                "-c",
                worker_bootstrap(runtime),
                f"unix:{path}",
                stdin=asyncio.subprocess.PIPE,  # the worker's lifeline; never written
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
            assert process.stdout is not None
            early: list[str] = []
            pump = OutputPump(process.stdout)
            pump.sink = early.extend
            accept = asyncio.ensure_future(_accept_with_token(listener, token))
            exited = asyncio.ensure_future(wait_for_exit(process))
            await asyncio.wait(
                {accept, exited},
                timeout=CONTAINER_START_TIMEOUT,
                return_when=asyncio.FIRST_COMPLETED,
            )
            exited.cancel()
            if not accept.done() or accept.exception() is not None:
                accept.cancel()
                await _docker_kill(name)
                kill_process_group(process)
                await wait_for_exit(process)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pump.task, timeout=2)
                said = "\n".join(early[-15:]).strip()
                raise RuntimeError(
                    f"a worker in the image {environment.container_image} did not start "
                    f"({describe_exit(process.returncode)})" + (f":\n{said}" if said else "")
                )
            connection, reader, writer = accept.result()
        finally:
            listener.close()
            shutil.rmtree(folder, ignore_errors=True)
        # The kernel gives the peer's pid in this machine's pid namespace.
        credentials = connection.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")
        )
        container_pid = struct.unpack("3i", credentials)[0]
        worker = cls(environment, process, reader, writer, pump, name, container_pid)
        pump.sink = None
        return worker

    def _marker_seen(self, token: str) -> None:
        while self._queued:
            queued_token, _, event = self._queued.popleft()
            event.set()
            if queued_token == token:
                break
        self.pump.sink = self._queued[0][1] if self._queued else None

    def forget_output(self) -> None:
        """Drop routes of tasks whose end marker never came (the worker is idle now)."""
        self._queued.clear()
        self.pump.sink = None

    def queue_output(self, token: str, sink: LineSink) -> asyncio.Event:
        """Route the output of task ``token`` to ``sink``; the event fires at its end."""
        event = asyncio.Event()
        self._queued.append((token, sink, event))
        if len(self._queued) == 1:
            self.pump.sink = sink
        return event

    def send(self, message: dict[str, Any]) -> None:
        self.writer.write(protocol.frame(message))

    async def receive(self) -> dict[str, Any]:
        header = await self.reader.readexactly(protocol.frame_header_size())
        body = await self.reader.readexactly(protocol.frame_length(header))
        return protocol.unpack(body)

    def note_code(self, message: dict[str, Any]) -> None:
        """Record the files a ``ready`` or ``done`` message says the worker imported."""
        for path, stat in (message.get("code") or {}).items():
            if stat is None:
                self.code_unknown = True
            else:
                self.code_files[path] = stat

    def code_changed(self, job_id: str, attempt: int) -> bool:
        """True if code the worker imported changed on disk since (or may have): the task
        must get a new process. Checked once per worker for each job's attempt number
        (a stat per file), so a map's tasks do not pay it again and again, while a
        retry sees a fix made after the failure."""
        if not self.watches_code or self.code_current_for == (job_id, attempt):
            return False
        if self.code_unknown or any_changed(self.code_files):
            return True
        self.code_current_for = (job_id, attempt)
        return False

    def remember_function(self, key: str) -> bool:
        """Record that the worker now holds ``key``; True if it already did."""
        known = key in self.functions
        self.functions[key] = None
        self.functions.move_to_end(key)
        while len(self.functions) > FUNCTION_CACHE_SIZE:
            self.functions.popitem(last=False)
        return known

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signum)

    def kill_group(self) -> None:
        """Kill the worker and every process its tasks started (its own session; in a
        container, killing the worker ends the container and all in it)."""
        if self.container is not None and self.alive:
            try:
                assert self.container_pid is not None
                os.kill(self.container_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            except PermissionError:  # the image runs as a user we may not signal
                _kill_container_soon(self.container)
        kill_process_group(self.process)

    async def kill(self) -> None:
        self.kill_group()
        await wait_for_exit(self.process)
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.pump.task, timeout=2)

    async def stop(self, grace: float = 2.0) -> None:
        """Ask the worker to exit; kill it if it does not within ``grace`` seconds."""
        if self.alive:
            with contextlib.suppress(Exception):
                self.send({"op": "exit"})
                await self.writer.drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wait_for_exit(self.process), timeout=grace)
        await self.kill()


async def start_command(
    command: list[str], environment: Environment, scratch: str, task: TaskMessage
) -> asyncio.subprocess.Process:
    """Start a command in its own process group so it and its children can be killed;
    in a container if the environment names an image (any image: no Python needed)."""
    if environment.container_image is not None:
        name = _container_name("command")
        args, cli_env = container_run(
            environment,
            name,
            interactive=False,
            extra_env={
                JOB_ID_VARIABLE: task.job_id,
                TASK_ID_VARIABLE: str(task.task_id),
                ATTEMPT_VARIABLE: str(task.attempt),
            },
        )
        process = await asyncio.create_subprocess_exec(
            _docker_cli(),
            *args,
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=cli_env,
            start_new_session=True,
        )
        _command_containers[process.pid] = name
        return process
    cwd = environment.working_directory
    if not os.path.isdir(cwd):
        cwd = scratch
    env = process_environment(environment)
    env[JOB_ID_VARIABLE] = task.job_id  # so current_task() works in the command too
    env[TASK_ID_VARIABLE] = str(task.task_id)
    env[ATTEMPT_VARIABLE] = str(task.attempt)
    # A command runs with the job's interpreter first on PATH, like an activated venv.
    env["PATH"] = os.path.dirname(environment.interpreter) + os.pathsep + env.get("PATH", "")
    return await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=cwd,
        env=env,
        start_new_session=True,
    )


def kill_process_group(process: asyncio.subprocess.Process) -> None:
    """Kill a process started in its own session and everything it started (for a
    command in a container: the container too, which the docker CLI does not pass on)."""
    container = _command_containers.get(process.pid)
    if container is not None:
        if process.returncode is None:
            _kill_container_soon(container)
        else:
            del _command_containers[process.pid]
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


async def wait_for_exit(process: asyncio.subprocess.Process) -> int:
    """The exit status, as soon as the process itself has exited.

    ``Process.wait()`` also waits until every pipe is closed, which a child that
    inherited stdout delays for as long as that child lives.
    """
    delay = 0.001
    while process.returncode is None:
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.02)
    return process.returncode
