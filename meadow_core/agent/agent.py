"""The agent: one per machine, it pulls tasks from the place's queue and runs them.

It claims tasks while their resources fit the machine, runs functions in warm workers
and commands in their own process groups, enforces memory limits and timeouts, stores
each outcome and acknowledges the task in one transaction, retries what may be retried,
and streams logs and results to callers that watch a job. It exits after
``idle_timeout`` seconds without work.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
import shutil
import signal
import time
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any

from meadow_core import _runtime, keys, protocol, retries
from meadow_core.agent.capacity import Capacity, Reservations
from meadow_core.agent.processes import (
    MemorySampler,
    OutputPump,
    Worker,
    describe_exit,
    kill_process_group,
    start_command,
    wait_for_exit,
)
from meadow_core.code_snapshot import CodeSnapshot, materialize
from meadow_core.envcache import ensure_environment
from meadow_core.place import LocalPlace, peer_uid
from meadow_core.protocol import Environment, ErrorKind, JobSpec, TaskMessage, TaskOutcome
from meadow_core.resources import DEFAULT_TASK_CPU

log = logging.getLogger("meadow.agent")

#: Tasks claimed from the queue ahead of need, per job, so dispatch rarely waits on SQLite.
CLAIM_BATCH = 64
#: Log text kept per task attempt; beyond it the log is truncated with a note.
MAX_LOG_BYTES = 16 * 2**20
#: How often memory use, timeouts and missed doorbells are checked.
WATCH_INTERVAL = 0.05
#: An idle worker is stopped after this long, so memory goes back to the machine.
WORKER_IDLE_SECONDS = 60.0
#: Outcomes finishing within this many seconds of the last flush share its successor.
FLUSH_INTERVAL = 0.002
#: Map tasks shorter than this on average get the next task queued in their worker, so
#: the worker never waits for the agent between tasks.
PIPELINE_BELOW_SECONDS = 0.1
#: The longest wait before committing outcomes again after a failed commit.
FLUSH_RETRY_MAX_SECONDS = 5.0
#: How many finished jobs the agent remembers having run (far more than can finish
#: between a caller's submission and its doorbell).
FINISHED_LATELY = 4096
#: Finished jobs, their results and logs, and payloads nobody reused are kept this long.
DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600.0

_CANCELLED_WHILE_RUNNING = (
    protocol.CANCELLED,
    ErrorKind.TASK_CANCELLED,
    "the job was cancelled while this task ran",
)


@dataclasses.dataclass
class _Running:
    """One task attempt in progress."""

    spec: JobSpec
    message: TaskMessage
    token: str
    cpu: float
    memory_gb: float | None
    started: float = dataclasses.field(default_factory=time.time)
    lines: list[str] = dataclasses.field(default_factory=list)
    log_bytes: int = 0
    peak_memory_gb: float = 0.0
    kill_reason: tuple[str, str, str] | None = None  # (outcome, type, message)
    pid: int | None = None
    kill: Any = None  # callable that kills the process running this task
    sampler: MemorySampler | None = None
    output_done: asyncio.Event | None = None  # set when the worker's end marker arrives

    @property
    def deadline(self) -> float | None:
        if self.spec.timeout_seconds is None:
            return None
        return self.started + self.spec.timeout_seconds


class _Client:
    """A connected caller: which jobs it watches and whether it wants their logs.

    Messages sent in one turn of the event loop leave in one write, so a finished job's
    result and its ``job_done`` cost the caller one wake-up.
    """

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.watching: dict[str, bool] = {}
        self._outbox: list[bytes] = []

    def send(self, message: dict[str, Any]) -> None:
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._write)
        self._outbox.append(protocol.frame(message))

    def _write(self) -> None:
        data, self._outbox = b"".join(self._outbox), []
        if not self.writer.is_closing():
            self.writer.write(data)


class Agent:
    def __init__(
        self,
        place: LocalPlace,
        idle_timeout: float,
        capacity: Capacity,
        retention_seconds: float = DEFAULT_RETENTION_SECONDS,
    ) -> None:
        self.place = place
        self.retention_seconds = retention_seconds
        self.queue = place.queue
        self.store = place.store
        self.idle_timeout = idle_timeout
        self.capacity = capacity
        self.reserved = Reservations(capacity)
        self.clients: set[_Client] = set()
        self.specs: dict[str, JobSpec] = {}
        self.flush_failures = 0
        #: Jobs finished here lately, newest last: a doorbell that arrives after its job
        #: ended (the agent's rescan ran it first) must replay, not wait forever.
        self.finished_lately: OrderedDict[str, None] = OrderedDict()
        self.buffers: OrderedDict[str, deque[TaskMessage]] = OrderedDict()
        self.more_queued: dict[str, bool] = {}
        self.running: dict[tuple[str, int], _Running] = {}
        self.running_per_job: dict[str, int] = {}
        self.idle_workers: dict[str, list[Worker]] = {}
        self.worker_tasks: dict[Worker, deque[_Running]] = {}  # running first, then queued
        self.cancelled: set[str] = set()
        self.durations: dict[str, tuple[int, float]] = {}  # job -> (count, total seconds)
        self.all_workers: set[Worker] = set()
        self.blob_cache: OrderedDict[str, bytes] = OrderedDict()
        self.pending_outcomes: list[TaskOutcome] = []
        self.pending_retries: list[TaskMessage] = []
        self.flush_handle: asyncio.Handle | None = None
        self.last_flush = 0.0
        self.schedule_pending = False
        self.ticks = 0
        self.rescan_needed = True
        self.last_activity = time.monotonic()
        self.tokens = itertools.count(1)
        self.stopping = asyncio.Event()
        self.retiring = False  # a caller of another version connected: finish and go
        self.background: set[asyncio.Task[Any]] = set()

    # -- lifecycle -----------------------------------------------------------------

    async def serve(self) -> None:
        self._prune()
        # Results a previous agent's workers were writing when it died: nobody adopts them.
        shutil.rmtree(self.place.spill_dir, ignore_errors=True)
        self.place.spill_dir.mkdir(parents=True, exist_ok=True)
        recovered = self.queue.reset_claims()
        if recovered:
            log.info("returned %d tasks claimed by a previous agent to the queue", recovered)
        server = await asyncio.start_unix_server(
            self._handle_client, path=self.place.socket_address, limit=2**26
        )
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stopping.set)
        log.info(
            "agent %d serving %s with %s, idle timeout %ss",
            os.getpid(),
            self.place.home,
            self.capacity.describe(),
            self.idle_timeout,
        )
        watcher = asyncio.ensure_future(self._watch_loop())
        try:
            self._schedule()
            await self.stopping.wait()
        finally:
            watcher.cancel()
            server.close()
            await self._shutdown()
            log.info("agent %d stopped", os.getpid())

    async def _shutdown(self) -> None:
        """Stop workers and commands, flush what finished, hand unstarted tasks back."""
        for running in list(self.running.values()):
            running.kill_reason = (
                protocol.CRASHED,
                ErrorKind.AGENT_STOPPED,
                "the Meadow agent stopped while the task ran",
            )
            if running.kill:
                running.kill()
        if self.background:
            await asyncio.wait(self.background, timeout=5)
        self._flush()
        for buffer in self.buffers.values():
            if buffer:
                self.queue.unclaim(list(buffer))
        self.buffers.clear()
        await asyncio.gather(*(w.stop(grace=1) for w in list(self.all_workers)))
        shutil.rmtree(self.place.spill_dir, ignore_errors=True)  # no worker writes there now
        for client in list(self.clients):
            client.writer.close()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self.background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("agent task failed", exc_info=task.exception())

    # -- callers -------------------------------------------------------------------

    async def _handle_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        # The socket is an abstract name anyone on the machine can connect to: only the
        # agent's own user may watch, cancel or stop its jobs.
        peer = writer.get_extra_info("socket")
        uid = peer_uid(peer) if peer is not None else -1
        if uid != os.geteuid():
            log.warning(
                "refused a connection from uid %d (this agent serves uid %d)", uid, os.geteuid()
            )
            writer.close()
            return
        client = _Client(writer)
        self.clients.add(client)
        try:
            while True:
                header = await reader.readexactly(protocol.frame_header_size())
                body = await reader.readexactly(protocol.frame_length(header))
                self._on_client_message(client, protocol.unpack(body))
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        except protocol.ProtocolError as exc:
            client.send({"op": "error", "message": str(exc)})
        finally:
            self.clients.discard(client)
            writer.close()

    def _on_client_message(self, client: _Client, message: dict[str, Any]) -> None:
        self.last_activity = time.monotonic()
        op = message.get("op")
        if op == "submitted":
            # The doorbell names the job, so no scan of the queue is needed; it may
            # carry the caller's watch, registered before the job can start.
            job_id = message.get("job_id")
            if job_id and "logs" in message:
                if message.get("created") and not self._touched(job_id):
                    # Just created by this caller, and this agent has not looked at it
                    # yet (it is the only one that runs it): nothing to replay.
                    client.watching[job_id] = bool(message["logs"])
                else:
                    # Reattached, or the agent's own rescan found the job before this
                    # doorbell arrived and may have finished it: replay what is stored.
                    self._watch(client, job_id, bool(message["logs"]), new=True)
            if job_id:
                self.more_queued[job_id] = True
                self.buffers.setdefault(job_id, deque())
            else:
                self.rescan_needed = True
            self._schedule()
        elif op == "watch":
            self._watch(
                client,
                message["job_id"],
                bool(message.get("logs", True)),
                bool(message.get("new", False)),
            )
        elif op == "unwatch":
            client.watching.pop(message["job_id"], None)
        elif op == "cancel":
            self._cancel_job(message["job_id"])
        elif op == "hello":
            version = message.get("version")
            if version != _runtime.__version__ and not self.retiring:
                log.info(
                    "a caller runs Meadow %s, this agent %s: finishing running tasks, then "
                    "exiting so an agent of the caller's version takes over",
                    version,
                    _runtime.__version__,
                )
                self.retiring = True
        elif op == "status":
            client.send({"op": "status", "ref": message.get("ref"), **self._status()})
        elif op == "shutdown":
            self.stopping.set()
        else:
            client.send({"op": "error", "message": f"unknown op {op!r}"})

    def _watch(self, client: _Client, job_id: str, logs: bool, new: bool) -> None:
        """Register a watcher, then replay what is already stored (no gap, no race).

        A ``new`` job may not be in the queue yet: its submission follows the watch.
        """
        client.watching[job_id] = logs
        for outcome in self.queue.results(job_id, final_only=True):
            client.send({"op": "result", **outcome.to_wire()})
        if logs:  # a late watcher still gets what running tasks printed so far
            for running in self.running.values():
                message = running.message
                if message.job_id == job_id and running.lines:
                    client.send(
                        {
                            "op": "log",
                            "job_id": job_id,
                            "task_id": message.task_id,
                            "attempt": message.attempt,
                            "lines": list(running.lines),
                        }
                    )
        record = self.queue.get_job(job_id)
        if record is None:
            if not new:
                client.send({"op": "job_unknown", "job_id": job_id})
        elif record.state in protocol.TERMINAL_JOB_STATES:
            client.send({"op": "job_done", "job_id": job_id, "state": record.state})
            client.watching.pop(job_id, None)

    def _notify(self, job_id: str, message: dict[str, Any], logs: bool = False) -> None:
        for client in list(self.clients):
            wants_logs = client.watching.get(job_id)
            if wants_logs is None or (logs and not wants_logs):
                continue
            try:
                client.send(message)
            except (ConnectionError, RuntimeError):
                self.clients.discard(client)

    def _status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "home": str(self.place.home),
            "capacity": dataclasses.asdict(self.capacity) | {"flags": []},
            "reserved_cpu": self.reserved.cpu,
            "reserved_memory_gb": self.reserved.memory_gb,
            "running": [
                {"job_id": r.message.job_id, "task_id": r.message.task_id, "pid": r.pid}
                for r in self.running.values()
            ],
            "workers": [w.pid for w in self.all_workers],
            "idle_timeout": self.idle_timeout,
        }

    # -- scheduling ----------------------------------------------------------------

    def _touched(self, job_id: str) -> bool:
        """Whether this agent has started on the job (or finished it lately)."""
        return job_id in self.specs or job_id in self.buffers or job_id in self.finished_lately

    def _spec(self, job_id: str) -> JobSpec | None:
        spec = self.specs.get(job_id)
        if spec is None:
            spec = self.queue.get_spec(job_id)
            if spec is not None:
                self.specs[job_id] = spec
        return spec

    def _task_needs(self, spec: JobSpec, message: TaskMessage) -> tuple[float, float | None]:
        resources = spec.resources
        cpu = float(resources.get("logical_cpu") or DEFAULT_TASK_CPU)
        memory = message.memory_gb if message.memory_gb is not None else resources.get("memory_gb")
        return cpu, (float(memory) if memory is not None else None)

    def _schedule(self) -> None:
        """Start every queued task whose resources fit, oldest job first."""
        if self.stopping.is_set() or self.retiring:
            return
        if self.rescan_needed:
            self.rescan_needed = False
            for job_id in self.queue.cancel_requested_jobs():
                self._cancel_job(job_id)
            for job_id in self.queue.jobs_with_queued_tasks():
                self.more_queued[job_id] = True
                self.buffers.setdefault(job_id, deque())
        for job_id in list(self.buffers):
            spec = self._spec(job_id)
            buffer = self.buffers[job_id]
            if spec is None:
                log.error("job %s has tasks but no spec; dropping them", job_id)
                del self.buffers[job_id]
                continue
            limit = spec.num_concurrent_tasks or spec.num_tasks
            while self.running_per_job.get(job_id, 0) < limit:
                if not buffer:
                    if not self.more_queued.get(job_id):
                        break
                    want = min(CLAIM_BATCH, max(1, 2 * limit))
                    claimed = self.queue.claim(job_id, want)
                    if len(claimed) < want:
                        self.more_queued[job_id] = False
                    if not claimed:
                        break
                    buffer.extend(claimed)
                message = buffer[0]
                cpu, memory = self._task_needs(spec, message)
                if cpu > self.capacity.logical_cpu or (memory or 0) > self.capacity.memory_gb:
                    buffer.popleft()
                    self._finish_unstartable(spec, message, cpu, memory)
                    continue
                if not self.reserved.fits(cpu, memory or 0.0):
                    break
                buffer.popleft()
                self._start(spec, message, cpu, memory)
            if (
                not buffer
                and not self.more_queued.get(job_id)
                and not self.running_per_job.get(job_id)
            ):
                del self.buffers[job_id]

    def _finish_unstartable(
        self, spec: JobSpec, message: TaskMessage, cpu: float, memory: float | None
    ) -> None:
        self._record_unrun(
            spec,
            message,
            protocol.FAILED,
            ErrorKind.UNSATISFIABLE_RESOURCES,
            f"attempt {message.attempt} needs {cpu:g} CPUs and {memory or 0:g} GB but this "
            f"machine has {self.capacity.describe()}",
        )

    def _start(self, spec: JobSpec, message: TaskMessage, cpu: float, memory: float | None) -> None:
        self.reserved.take(cpu, memory or 0.0)
        self.running_per_job[spec.job_id] = self.running_per_job.get(spec.job_id, 0) + 1
        running = _Running(spec, message, str(next(self.tokens)), cpu, memory)
        self.running[(message.job_id, message.task_id)] = running
        self.last_activity = time.monotonic()
        if spec.kind == "command":
            self._spawn_task(running, self._run_command(running))
        else:
            self._spawn_task(running, self._run_function(running))

    def _spawn_task(self, running: _Running, coro: Any) -> None:
        """Run a task's coroutine; whatever it raises ends the task with an answer for
        its caller (never a task that stays claimed, with its CPU reserved)."""

        async def guarded() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("running task %s failed in the agent", running.message.task_id)
                self._fail_in_agent(running, f"{type(exc).__name__}: {exc}")

        self._spawn(guarded())

    def _fail_in_agent(self, running: _Running, cause: str) -> None:
        """End a task the agent could not see through, storing nothing but its outcome."""
        running.lines = []  # storing the log may be what failed
        self._complete(running, protocol.FAILED, error=[ErrorKind.AGENT_ERROR, cause, ""])

    # -- running tasks -------------------------------------------------------------

    def _collect_lines(self, running: _Running, lines: list[str]) -> None:
        if running.log_bytes < MAX_LOG_BYTES:
            for line in lines:
                running.log_bytes += len(line) + 1
                running.lines.append(line)
                if running.log_bytes >= MAX_LOG_BYTES:
                    running.lines.append(f"[meadow: log truncated at {MAX_LOG_BYTES} bytes]")
                    break
        message = running.message
        self._notify(
            message.job_id,
            {
                "op": "log",
                "job_id": message.job_id,
                "task_id": message.task_id,
                "attempt": message.attempt,
                "lines": lines,
            },
            logs=True,
        )

    async def _acquire_worker(self, environment: Environment, message: TaskMessage) -> Worker:
        """A warm worker of the environment whose code is current, else a new one."""
        pool = self.idle_workers.get(environment.key, [])
        while pool:
            worker = pool.pop()
            if worker.alive and not worker.code_changed(message.job_id, message.attempt):
                return worker
            self.all_workers.discard(worker)
            if worker.alive:  # it holds modules older than the files: never reused
                log.debug("retiring worker %d: code it imported changed on disk", worker.pid)
                self._spawn(worker.stop(grace=0))
        runnable = await self._with_code(environment)
        # Code run in place may change between jobs; a snapshot's or an image's cannot.
        in_place = environment.code_manifest is None and environment.container_image is None
        worker = await Worker.start(
            runnable,
            str(self.place.scratch_dir),
            str(self.place.spill_dir),
            watch_code=in_place,
        )
        worker.environment = environment  # pooled under the job's own environment key
        self.all_workers.add(worker)
        return worker

    async def _with_code(self, environment: Environment) -> Environment:
        """The environment with its code snapshot materialized on this machine (once per
        manifest) first on sys.path, running in the snapshot's working directory."""
        self.place.scratch_dir.mkdir(parents=True, exist_ok=True)
        if environment.code_manifest is None and environment.env_spec is None:
            return environment
        interpreter = environment.interpreter
        if environment.env_spec is not None:
            interpreter = await asyncio.to_thread(
                ensure_environment, environment.env_spec, self.store, self.place.home / "envs"
            )
        paths: list[str] = []
        working: str | None = None
        if environment.code_manifest is not None:
            paths, working = await asyncio.to_thread(
                materialize, environment.code_manifest, self.store, self.place.home / "code"
            )
        return dataclasses.replace(
            environment,
            interpreter=interpreter,
            sys_path=paths + environment.sys_path,
            working_directory=working or str(self.place.scratch_dir),
            code_manifest=None,
            env_spec=None,
        )

    def _release_worker(self, worker: Worker) -> None:
        self.worker_tasks.pop(worker, None)
        worker.forget_output()
        if worker.alive and not self.stopping.is_set():
            worker.idle_since = time.monotonic()
            self.idle_workers.setdefault(worker.environment.key, []).append(worker)
        else:
            self.all_workers.discard(worker)
            self._spawn(worker.stop(grace=0))

    def _blob(self, key: str) -> bytes:
        data = self.blob_cache.get(key)
        if data is None:
            data = self.store.get(key)
            self.blob_cache[key] = data
            while (
                sum(len(v) for v in self.blob_cache.values()) > 256 * 2**20
                and len(self.blob_cache) > 1
            ):
                self.blob_cache.popitem(last=False)
        else:
            self.blob_cache.move_to_end(key)
        return data

    def _task_args(self, spec: JobSpec, message: TaskMessage) -> bytes:
        if message.args_inline is not None:
            return message.args_inline
        assert spec.args_key is not None and message.args_range is not None
        offset, length = message.args_range
        return self._blob(spec.args_key)[offset : offset + length]

    async def _run_function(self, running: _Running) -> None:
        """Give a started task to a warm worker; the worker's driver follows it."""
        try:
            worker = await self._acquire_worker(running.spec.environment, running.message)
        except Exception as exc:
            self._complete(
                running, protocol.CRASHED, error=[ErrorKind.WORKER_START_FAILED, str(exc), ""]
            )
            return
        self.worker_tasks[worker] = deque()
        try:
            self._hand_to(worker, running)
        except Exception as exc:  # e.g. a payload missing from the store
            self._release_worker(worker)
            self._complete(
                running,
                protocol.FAILED,
                error=[ErrorKind.TASK_NOT_DELIVERED, f"{type(exc).__name__}: {exc}", ""],
            )
            return
        self._begin(worker, running)
        if running.kill_reason is not None:  # cancelled while the worker was starting
            worker.kill_group()
        self._maybe_queue_next(worker)
        await self._drive(worker)

    def _hand_to(self, worker: Worker, running: _Running) -> None:
        """Send a task to a worker (it runs after whatever the worker has before it).

        Raises, changing nothing, if the task's payload cannot be read."""
        spec, message = running.spec, running.message
        request: dict[str, Any] = {
            "op": "run",
            "token": running.token,
            "job_id": message.job_id,
            "task_id": message.task_id,
            "attempt": message.attempt,
            "kind": spec.kind,
            "args": self._task_args(spec, message),
            "function_key": spec.function_key,
            "function_name": spec.function_name,
        }
        if spec.function_key and spec.function_key not in worker.functions:
            request["function_bytes"] = self._blob(spec.function_key)
        if spec.function_key:
            worker.remember_function(spec.function_key)
        running.output_done = worker.queue_output(
            running.token, lambda lines: self._collect_lines(running, lines)
        )
        self.worker_tasks[worker].append(running)
        worker.send(request)

    def _begin(self, worker: Worker, running: _Running) -> None:
        """The task is now the one its worker runs: limits and the timeout apply."""
        running.pid = worker.pid
        running.kill = worker.kill_group
        running.started = time.time()

    def _maybe_queue_next(self, worker: Worker) -> None:
        """Queue the job's next task behind a short running one, so the worker does not
        wait for the agent between tasks. Only for maps whose tasks are short on average
        and whose every slot is busy (a free slot would run the task sooner)."""
        tasks = self.worker_tasks[worker]
        if len(tasks) != 1 or self.stopping.is_set() or self.retiring:
            return
        head = tasks[0]
        spec, job_id = head.spec, head.spec.job_id
        count, total = self.durations.get(job_id, (0, 0.0))
        limit = spec.num_concurrent_tasks or spec.num_tasks
        if (
            spec.kind != "map"
            or count < 2
            or total / count >= PIPELINE_BELOW_SECONDS
            or job_id in self.cancelled
            or self.running_per_job.get(job_id, 0) < limit
        ):
            return
        buffer = self.buffers.get(job_id)
        if buffer is None:
            return
        if not buffer and self.more_queued.get(job_id):
            claimed = self.queue.claim(job_id, CLAIM_BATCH)
            if len(claimed) < CLAIM_BATCH:
                self.more_queued[job_id] = False
            buffer.extend(claimed)
        if not buffer:
            return
        cpu, memory = self._task_needs(spec, buffer[0])
        if (cpu, memory) != (head.cpu, head.memory_gb):
            return  # a retry with other resources waits for a free slot
        message = buffer.popleft()
        try:
            self._hand_to(worker, _Running(spec, message, str(next(self.tokens)), cpu, memory))
        except Exception:
            buffer.appendleft(message)  # it will fail, and be reported, when it starts

    async def _drive(self, worker: Worker) -> None:
        """Collect a worker's results in order until it has nothing left to run."""
        tasks = self.worker_tasks[worker]
        while tasks:
            running = tasks[0]
            try:
                reply = await worker.receive()
            except (asyncio.IncompleteReadError, ConnectionError):
                returncode = await wait_for_exit(worker.process)
                worker.kill_group()  # what the task started must not outlive it
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(worker.pump.task, timeout=2)
                tasks.popleft()
                self._requeue_unstarted(tasks)
                self._release_worker(worker)
                self._complete_crash(running, describe_exit(returncode))
                return
            worker.note_code(reply)
            assert running.output_done is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(running.output_done.wait(), timeout=5)
            tasks.popleft()
            spilled = self._spilled(reply.get("value_file"))
            if running.kill_reason is not None:
                if spilled is not None:
                    spilled.unlink(missing_ok=True)
                self._complete(
                    running, running.kill_reason[0], error=[*running.kill_reason[1:], ""]
                )
            elif "error" in reply:
                self._complete(running, protocol.FAILED, error=reply["error"])
            elif "value_file" in reply and spilled is None:
                self._fail_in_agent(
                    running, f"the worker named {reply['value_file']!r} as its result file"
                )
            else:
                self._complete(
                    running, protocol.SUCCEEDED, value=reply.get("value"), value_file=spilled
                )
            if tasks:
                self._promote(worker, tasks[0])
                self._maybe_queue_next(worker)
        self._release_worker(worker)

    def _promote(self, worker: Worker, running: _Running) -> None:
        """A queued task starts: it takes the capacity its predecessor just gave back."""
        self.reserved.take(running.cpu, running.memory_gb or 0.0)
        job_id = running.spec.job_id
        self.running_per_job[job_id] = self.running_per_job.get(job_id, 0) + 1
        self.running[(job_id, running.message.task_id)] = running
        self._begin(worker, running)
        if job_id in self.cancelled:  # its worker is being killed with the job's other tasks
            running.kill_reason = _CANCELLED_WHILE_RUNNING

    def _requeue_unstarted(self, tasks: deque[_Running]) -> None:
        """Tasks queued in a worker that died never started: back to the front of the line
        (or cancelled, if their job was)."""
        while tasks:
            running = tasks.pop()
            job_id = running.spec.job_id
            if job_id in self.cancelled:
                self._record_cancelled(running.spec, running.message, "before this task ran")
            else:
                self.buffers.setdefault(job_id, deque()).appendleft(running.message)
        self._request_schedule()

    async def _run_command(self, running: _Running) -> None:
        spec = running.spec
        assert spec.command is not None
        try:
            environment = await self._with_code(spec.environment)
            process = await start_command(
                spec.command, environment, str(self.place.scratch_dir), running.message
            )
        except OSError as exc:
            self._complete(
                running,
                protocol.FAILED,
                error=[ErrorKind.COMMAND_NOT_STARTED, f"{spec.command[0]}: {exc}", ""],
            )
            return
        running.pid = process.pid
        running.kill = lambda: kill_process_group(process)
        if running.kill_reason is not None:
            kill_process_group(process)
        assert process.stdout is not None
        pump = OutputPump(process.stdout)
        pump.sink = lambda lines: self._collect_lines(running, lines)
        returncode = await wait_for_exit(process)
        kill_process_group(process)  # children the command left behind
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(pump.task, timeout=5)
        if running.kill_reason is not None:
            self._complete(
                running,
                running.kill_reason[0],
                error=[*running.kill_reason[1:], ""],
                return_code=returncode,
            )
        elif returncode == 0:
            self._complete(running, protocol.SUCCEEDED, return_code=0)
        else:
            tail = "\n".join(running.lines[-20:])
            self._complete(
                running,
                protocol.FAILED,
                error=[
                    ErrorKind.COMMAND_FAILED,
                    f"{' '.join(spec.command)!r}: {describe_exit(returncode)}",
                    tail,
                ],
                return_code=returncode,
            )

    def _spilled(self, reported: object) -> Path | None:
        """The result file a worker names, if it is one of the spill folder's (None
        otherwise): a task's code runs in that worker, and must not get any other file
        adopted as its result."""
        if not isinstance(reported, str):
            return None
        path = Path(reported)
        if path.parent != self.place.spill_dir or not path.name.startswith("result-"):
            return None
        return path

    def _complete_crash(self, running: _Running, how: str) -> None:
        if running.kill_reason is not None:
            outcome, kind, text = running.kill_reason
            self._complete(running, outcome, error=[kind, text, ""])
            return
        self._complete(
            running,
            protocol.CRASHED,
            error=[ErrorKind.WORKER_CRASHED, f"the worker running this task died: {how}", ""],
        )

    def _complete(
        self,
        running: _Running,
        outcome: str,
        *,
        value: bytes | None = None,
        value_file: Path | None = None,
        error: list[str] | None = None,
        return_code: int | None = None,
    ) -> None:
        """``value_file``: a large result the worker pickled into the spill folder."""
        message = running.message
        key = (message.job_id, message.task_id)
        if self.running.pop(key, None) is None:
            return
        self.reserved.give_back(running.cpu, running.memory_gb or 0.0)
        self.running_per_job[message.job_id] -= 1
        count, total = self.durations.get(message.job_id, (0, 0.0))
        self.durations[message.job_id] = (count + 1, total + time.time() - running.started)
        result = TaskOutcome(
            job_id=message.job_id,
            task_id=message.task_id,
            attempt=message.attempt,
            outcome=outcome,
            final=True,
            error=error,
            return_code=return_code,
            max_memory_gb=running.peak_memory_gb or None,
            started=running.started,
        )
        if value is not None or value_file is not None:
            if value is None or len(value) > protocol.INLINE_LIMIT:
                value_key = keys.value_key(message.job_id, message.task_id, message.attempt)
                try:
                    if value_file is not None:
                        self.store.adopt(value_key, value_file)
                    else:
                        assert value is not None
                        self.store.put(value_key, value)
                    result.value_key = value_key
                except OSError as exc:
                    if value_file is not None:
                        with contextlib.suppress(OSError):
                            value_file.unlink()
                    # A full or read-only store: the task's value is lost, say where.
                    result.outcome = protocol.FAILED
                    result.error = [
                        ErrorKind.AGENT_ERROR,
                        f"could not store the task's result at {self.store.location(value_key)}: "
                        f"{exc}",
                        "",
                    ]
            else:
                result.value = value
        if running.lines:
            log_key = keys.log_key(message.job_id, message.task_id, message.attempt)
            try:
                self.store.put(log_key, ("\n".join(running.lines) + "\n").encode())
                result.log_key = log_key
            except OSError as exc:  # the outcome matters more than its stored log
                log.warning("could not store the log of task %s: %s", message.task_id, exc)
        self._record(running.spec, message, result, allow_retry=True, running=running)

    def _record(
        self,
        spec: JobSpec,
        message: TaskMessage,
        result: TaskOutcome,
        allow_retry: bool,
        running: _Running | None = None,
    ) -> None:
        """Queue an outcome for storing; decide whether the task gets another attempt."""
        retry = (
            retries.next_attempt(
                spec,
                message,
                result,
                None if running is None else running.peak_memory_gb,
                None if running is None else running.memory_gb,
            )
            if allow_retry
            else None
        )
        if retry is not None:
            result.final = False
            self.pending_retries.append(retry)
            self.more_queued[spec.job_id] = True
            self.buffers.setdefault(spec.job_id, deque())
        self.pending_outcomes.append(result)
        self._request_flush()
        self._request_schedule()  # capacity was freed: start the next task now

    def _request_schedule(self) -> None:
        if not self.schedule_pending:
            self.schedule_pending = True
            asyncio.get_running_loop().call_soon(self._scheduled)

    def _scheduled(self) -> None:
        self.schedule_pending = False
        self._schedule()

    def _request_flush(self) -> None:
        """Flush now, unless other tasks are running and the last flush was moments ago:
        then soon, so under load several outcomes share one transaction while a lone
        call is never delayed."""
        if self.flush_handle is not None:
            return
        loop = asyncio.get_running_loop()
        delay = self.last_flush + FLUSH_INTERVAL - time.monotonic()
        if delay > 0 and self.running:
            self.flush_handle = loop.call_later(delay, self._flush)
        else:
            self.flush_handle = loop.call_soon(self._flush)

    def _flush_failed(
        self, outcomes: list[TaskOutcome], retries: list[TaskMessage], exc: Exception
    ) -> None:
        """Keep outcomes whose commit failed (a full disk, a locked or damaged database)
        and commit them again later; their callers get them now, so nobody waits on
        the disk (an outcome delivered twice is handed over once)."""
        self.flush_failures += 1
        log.error(
            "could not store %d outcomes in %s (try %d): %s",
            len(outcomes),
            self.place.home / "meadow.db",
            self.flush_failures,
            exc,
        )
        self.pending_outcomes[:0] = outcomes
        self.pending_retries[:0] = retries
        if self.flush_failures == 1:
            for outcome in outcomes:
                if outcome.final:
                    self._notify(outcome.job_id, {"op": "result", **outcome.to_wire()})
        delay = min(FLUSH_RETRY_MAX_SECONDS, 0.1 * 2**self.flush_failures)
        self.flush_handle = asyncio.get_running_loop().call_later(delay, self._flush)

    def _flush(self) -> None:
        """Store outcomes and acknowledge tasks in one transaction, then tell watchers."""
        if self.flush_handle is not None:
            self.flush_handle.cancel()
            self.flush_handle = None
        self.last_flush = time.monotonic()
        outcomes, retries = self.pending_outcomes, self.pending_retries
        if not outcomes and not retries:
            return
        self.pending_outcomes, self.pending_retries = [], []
        try:
            finished = self.queue.complete(outcomes, retries)
        except Exception as exc:
            self._flush_failed(outcomes, retries, exc)
            return
        self.flush_failures = 0
        if retries:
            self._request_schedule()  # the next attempts are queued now
        for outcome in outcomes:
            self._notify(outcome.job_id, {"op": "result", **outcome.to_wire()})
        for job_id in finished:
            record = self.queue.get_job(job_id)
            state = record.state if record else protocol.JOB_FAILED
            self._notify(job_id, {"op": "job_done", "job_id": job_id, "state": state})
            for client in self.clients:
                client.watching.pop(job_id, None)  # a finished job needs no more watching
            self.specs.pop(job_id, None)
            self.finished_lately[job_id] = None
            while len(self.finished_lately) > FINISHED_LATELY:
                self.finished_lately.popitem(last=False)
            self.running_per_job.pop(job_id, None)
            self.durations.pop(job_id, None)
            self.cancelled.discard(job_id)
        self.last_activity = time.monotonic()

    # -- cancellation, limits, idleness ---------------------------------------------

    def _cancel_job(self, job_id: str) -> None:
        spec = self._spec(job_id)
        if spec is None:
            return
        self.queue.request_cancel(job_id)
        self.cancelled.add(job_id)
        queued = list(self.buffers.pop(job_id, deque()))
        self.more_queued[job_id] = False
        queued += self.queue.unclaimed_tasks(job_id)
        for message in queued:
            self._record_cancelled(spec, message, "before this task ran")
        for running in list(self.running.values()):
            if running.message.job_id == job_id:
                running.kill_reason = _CANCELLED_WHILE_RUNNING
                if running.kill:
                    running.kill()
        # Retries decided before the cancel must not come back.
        self.pending_retries = [r for r in self.pending_retries if r.job_id != job_id]
        for outcome in self.pending_outcomes:
            if outcome.job_id == job_id and not outcome.final:
                outcome.final = True
        self._request_flush()
        self._request_schedule()

    def _record_cancelled(self, spec: JobSpec, message: TaskMessage, when: str) -> None:
        self._record_unrun(
            spec,
            message,
            protocol.CANCELLED,
            ErrorKind.TASK_CANCELLED,
            f"the job was cancelled {when}",
        )

    def _record_unrun(
        self, spec: JobSpec, message: TaskMessage, outcome: str, kind: str, text: str
    ) -> None:
        """The final outcome of a task attempt that never ran; no retry follows."""
        self._record(
            spec,
            message,
            TaskOutcome(
                job_id=spec.job_id,
                task_id=message.task_id,
                attempt=message.attempt,
                outcome=outcome,
                final=True,
                error=[kind, text, ""],
            ),
            allow_retry=False,
        )

    def _check_limits(self) -> None:
        now = time.time()
        for running in list(self.running.values()):
            if running.pid is None or running.kill_reason is not None:
                continue
            if running.sampler is None or running.sampler.pid != running.pid:
                running.sampler = MemorySampler(running.pid)
            # Without a limit memory is only reported, so a coarse sample will do.
            if running.memory_gb is None and self.ticks % 10:
                used = 0.0
            else:
                used = running.sampler.sample()
            running.peak_memory_gb = max(running.peak_memory_gb, used)
            if running.memory_gb is not None and used > running.memory_gb:
                running.kill_reason = (
                    protocol.CRASHED,
                    ErrorKind.MEMORY_LIMIT_EXCEEDED,
                    f"the task used {used:.2f} GB, more than the {running.memory_gb:g} GB it "
                    "asked for; raise Resources.memory_gb or pass retry_with_more_memory=True",
                )
            deadline = running.deadline
            if deadline is not None and now > deadline:
                running.kill_reason = (
                    protocol.TIMEOUT,
                    ErrorKind.TASK_TIMEOUT,
                    f"the task ran longer than its timeout of {running.spec.timeout_seconds:g}s",
                )
            if running.kill_reason is not None and running.kill:
                log.info(
                    "killing task %s/%s: %s",
                    running.message.job_id,
                    running.message.task_id,
                    running.kill_reason[2],
                )
                running.kill()

    def _retire_idle_workers(self) -> None:
        now = time.monotonic()
        for pool in self.idle_workers.values():
            for worker in list(pool):
                if not worker.alive or now - worker.idle_since > WORKER_IDLE_SECONDS:
                    pool.remove(worker)
                    self.all_workers.discard(worker)
                    self._spawn(worker.stop(grace=1))

    async def _watch_loop(self) -> None:
        while not self.stopping.is_set():
            await asyncio.sleep(WATCH_INTERVAL)
            self.ticks += 1
            try:
                self._check_limits()
                if self.ticks % 72_000 == 0:  # hourly
                    self._prune()
                if self.ticks % 20 == 0:  # once a second: catch doorbells nobody rang
                    self.queue.checkpoint()
                    self.rescan_needed = True
                    self._schedule()
                    self._retire_idle_workers()
                    self._maybe_exit_idle()
            except Exception:
                log.exception("agent watch loop failed; continuing")

    def _prune(self) -> None:
        """Forget jobs finished longer ago than the retention, with their results and
        logs, and drop function and argument payloads nobody used for as long."""
        for job_id in self.queue.prune(self.retention_seconds):
            for prefix in keys.job_prefixes(job_id):
                self.store.delete_prefix(prefix)
        in_use = set(self.queue.payload_keys_of_unfinished_jobs())
        for key in [k for k in in_use if k.startswith(keys.CODE_MANIFESTS + "/")]:
            with contextlib.suppress(OSError):
                manifest = CodeSnapshot.from_manifest(self.store.get(key))
                in_use.update(manifest.object_keys())
        for prefix in ("functions", "args", "code"):
            self.store.prune_older_than(prefix, self.retention_seconds, keep=frozenset(in_use))

    def _maybe_exit_idle(self) -> None:
        if self.retiring and not self.running:
            self.stopping.set()  # unstarted tasks stay queued for the next agent
            return
        if self.running or any(self.buffers.values()) or self.pending_outcomes:
            self.last_activity = time.monotonic()
            return
        if time.monotonic() - self.last_activity < self.idle_timeout:
            return
        if self.queue.has_work():
            self.last_activity = time.monotonic()
            self.rescan_needed = True
            return
        log.info("idle for %ss; exiting", self.idle_timeout)
        self.stopping.set()
