"""``MachineRelay``: on each remote machine, relays queued work into the local agent.

The machine runs the same agent as ``LocalHost`` (SQLite queue, warm workers, memory
limits, logs). The relay is the bridge to the place: it learns from its control queue
and its ``ServeSource`` which jobs it serves and with how many workers, pulls their
task messages from each job's work queue, copies the objects a task needs from the
place's store into the local one, runs each task attempt as a one-task local job,
stores the outcome and announces it on the job's result queue, and only then
acknowledges the task message (at-least-once execution, exactly-once results). It also

* keeps a running task's message hidden, so a slow task is not handed out twice, while
  a dead machine's task reappears after ``TASK_VISIBILITY_SECONDS``;
* queues the next attempt of a failed task (``retries``) before acknowledging it;
* reports a task handed out ``MAX_DELIVERIES`` times without a result as lost;
* hands its running tasks back at once when the machine is being taken away;
* settles a job it served to the end when no caller recorded it as over (the caller
  was killed, or submitted without waiting), and takes tasks of a job back when they
  return to the queue after every worker left, so nothing is left running forever.

Nothing here names a cloud or a fleet: the place's drivers and the ``ServeSource``
(a fleet registry, or a fixed allocation for a pod) are passed in.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import enum
import logging
import time
from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar

from meadow_core import keys, protocol, retries
from meadow_core.code_snapshot import CodeSnapshot
from meadow_core.envcache import stored_archive
from meadow_core.hosts.local import LocalHost
from meadow_core.protocol import ErrorKind, JobSpec, TaskMessage, TaskOutcome
from meadow_core.remote import messages, outcomes
from meadow_core.remote.caller import RemotePlace
from meadow_core.remote.mirror import StoreMirror
from meadow_core.remote.ports import Delivery, QueueGone, QueueName

log = logging.getLogger("meadow.relay")
_T = TypeVar("_T")

#: A job whose work queue stayed empty this long (and nothing of it runs here) is left.
JOB_DRAIN_SECONDS = 6.0
LOG_FLUSH_SECONDS = 0.5
#: A task handed out this often without a result is reported lost, not run again.
MAX_DELIVERIES = 5
#: A job drained here that its caller has not recorded as over after this long (or half
#: the idle timeout, if shorter) has no caller watching; the machine settles it, and
#: checks again this often while other machines still run some of its tasks.
SETTLE_GRACE_SECONDS = 30.0
#: The longest an idle machine stays up for a job's tasks held by other machines: a
#: dead machine's task is back in the queue within the visibility timeout, well inside it.
HOLD_LIMIT_SECONDS = 3 * messages.TASK_VISIBILITY_SECONDS


class Settled(enum.StrEnum):
    SETTLED = "settled"  # recorded as over here
    OVER = "over"  # already over (or unknown)
    WAITING = "waiting"  # some tasks have no final outcome yet


class Stranded(enum.StrEnum):
    REJOINED = "rejoined"  # tasks wait in the queue: serving the job again
    HOLDING = "holding"  # tasks are held elsewhere: if their machine died, they come back
    NO = "no"  # nothing is left for this machine to do


class ServeSource(Protocol):
    """Which jobs this machine serves, as its fleet (or its pod spec) says."""

    def allocations(self) -> dict[str, int] | None:
        """Job id -> workers allocated here; None if this machine is unknown."""

    def release(self, job_id: str) -> None:
        """This machine left the job: free what it held."""

    def take_one(self, job_id: str, spec: JobSpec) -> bool:
        """Allocate one worker of ``spec`` here again (tasks came back); False if not."""


def background(coroutine: Coroutine[Any, Any, _T], what: str) -> asyncio.Task[_T]:
    """A task whose failure is logged (a silent dead loop would look like an idle one)."""

    async def run() -> _T:
        try:
            return await coroutine
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed", what)
            raise

    return asyncio.ensure_future(run())


@dataclasses.dataclass
class _Running:
    """One task attempt running here: what is needed to hand it back or cancel it."""

    local_job_id: str
    queue: QueueName
    delivery: Delivery
    keep_hidden: asyncio.Task[None] | None = None


class _JobServer:
    """Serves one job on this machine with a number of worker loops."""

    def __init__(self, relay: MachineRelay, job_id: str, workers: int) -> None:
        self.relay = relay
        self.job_id = job_id
        self.workers = workers
        self.spec: JobSpec | None = None
        self.running: dict[str, _Running] = {}
        self.stopped = False
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        log.info("serving job %s with %d worker(s)", self.job_id, self.workers)
        self.grow(self.workers, start=0)

    def grow(self, workers: int, start: int | None = None) -> None:
        """More workers for this job (a second allocation onto this machine)."""
        first = self.workers if start is None else start
        self.tasks += [
            background(self._loop(), f"job {self.job_id}") for _ in range(first, workers)
        ]
        self.workers = max(self.workers, workers)

    async def _loop(self) -> None:
        relay = self.relay
        work = messages.job_queue(self.job_id)
        try:
            idle_since = time.monotonic()
            while not self.stopped and not relay.interrupted:
                try:
                    deliveries = await relay.call(
                        relay.queue.receive, work, 1, 2, messages.TASK_VISIBILITY_SECONDS
                    )
                except QueueGone:
                    break  # the caller finished or cancelled the job
                except Exception:
                    log.warning(
                        "receiving from job %s failed; retrying", self.job_id, exc_info=True
                    )
                    await asyncio.sleep(1)
                    continue
                if not deliveries:
                    if time.monotonic() - idle_since > JOB_DRAIN_SECONDS and not self.running:
                        break
                    continue
                try:
                    await self._run(work, deliveries[0])
                except QueueGone:
                    break  # the job ended while this task ran (its result is stored)
                except Exception:
                    # The message reappears after its visibility timeout: a retry, not a loss.
                    log.exception("task of job %s failed in the relay", self.job_id)
                idle_since = time.monotonic()
        finally:
            if all(t.done() or t is asyncio.current_task() for t in self.tasks):
                await relay.job_finished(self)

    async def _run(self, work: QueueName, delivery: Delivery) -> None:
        relay = self.relay
        body = messages.decode(delivery.body)
        body.pop("op", None)
        task = TaskMessage.from_wire(body)
        if self.spec is None:
            self.spec = await relay.call(outcomes.read_spec, relay.store, self.job_id)
        spec = self.spec
        if delivery.delivery_count > MAX_DELIVERIES:
            # Handed out this often without a result: its machines died with it (it
            # kills them, say). Report it instead of killing machines forever.
            lost = TaskOutcome(
                job_id=self.job_id,
                task_id=task.task_id,
                attempt=task.attempt,
                outcome=protocol.CRASHED,
                final=True,
                error=[
                    ErrorKind.TASK_LOST,
                    f"task {task.task_id} was delivered {delivery.delivery_count} times and "
                    "never finished; each machine running it stopped (out of memory, killed, "
                    "interrupted)",
                    "",
                ],
            )
            await relay.call(self._report, spec, task, lost, work, delivery)
            return
        await relay.call(relay.prefetch, spec, task)
        if self.stopped or relay.interrupted:
            await self._hand_back_one(work, delivery)
            return
        local_id = f"{self.job_id}.{task.task_id}.{task.attempt}"
        if len(local_id) > 128:
            local_id = protocol.content_key(local_id.encode(), "t").replace("/", "-")[:128]
        # One attempt, run under its own number: the task's current_task().attempt is
        # the caller's, and the local agent retries nothing (this relay does).
        local_spec = dataclasses.replace(
            spec,
            job_id=local_id,
            num_tasks=1,
            max_attempts=task.attempt,
            retry_with_more_memory=False,
            num_concurrent_tasks=1,
            created=time.time(),
        )
        local_task = dataclasses.replace(task, job_id=local_id)
        keep_hidden = asyncio.ensure_future(self._keep_hidden(work, delivery))
        self.running[local_id] = _Running(local_id, work, delivery, keep_hidden)
        pending_lines: list[str] = []
        done_flushing = asyncio.Event()
        flusher = asyncio.ensure_future(self._flush_logs(task, pending_lines, done_flushing))
        outcome: TaskOutcome | None = None
        try:
            async with relay.local.watch(local_id, 1, spec.kind, new=True) as job_watch:
                # Lines go to the caller through the result queue, not to this log.
                job_watch.on_log = lambda task_id, attempt, lines: pending_lines.extend(lines)  # type: ignore[method-assign]
                await relay.local.submit(local_spec, [local_task], {})
                async for first in job_watch.outcomes():
                    outcome = first
                    break
        finally:
            keep_hidden.cancel()
            done_flushing.set()  # let a send in flight finish: no line is dropped
            with contextlib.suppress(Exception):
                await flusher
            self.running.pop(local_id, None)
        if outcome is None or relay.interrupted or self.stopped:
            return  # handed back or cancelled: another machine (or nobody) runs it
        await self._send_lines(task, pending_lines)
        await relay.call(self._report, spec, task, outcome, work, delivery)

    def _report(
        self,
        spec: JobSpec,
        task: TaskMessage,
        outcome: TaskOutcome,
        work: QueueName,
        delivery: Delivery,
    ) -> None:
        """Store the outcome, announce it, queue a retry if due, then acknowledge."""
        relay = self.relay
        outcome = dataclasses.replace(
            outcome, job_id=self.job_id, task_id=task.task_id, attempt=task.attempt
        )
        if outcome.value_key:
            relay.mirror.copy_up(outcome.value_key)
        if outcome.log_key:
            key = keys.remote_log_key(self.job_id, task.task_id, task.attempt)
            relay.store.put(key, relay.local.place.store.get(outcome.log_key))
            outcome = dataclasses.replace(outcome, log_key=key)
        retry = retries.next_attempt(spec, task, outcome, outcome.max_memory_gb or 0.0)
        outcome = dataclasses.replace(outcome, final=retry is None)
        relay.store.put(
            keys.result_key(self.job_id, task.task_id, task.attempt),
            protocol.pack(outcome.to_wire()),
        )
        with contextlib.suppress(QueueGone):  # no caller follows the job any more
            relay.queue.send(messages.result_queue(self.job_id), [messages.outcome_body(outcome)])
        if retry is not None:
            relay.queue.send(work, [messages.task_body(retry)])
        relay.queue.ack(work, [delivery])

    async def _keep_hidden(self, work: QueueName, delivery: Delivery) -> None:
        while True:
            await asyncio.sleep(messages.VISIBILITY_HEARTBEAT_SECONDS)
            with contextlib.suppress(Exception):
                await self.relay.call(
                    self.relay.queue.extend, work, delivery, messages.TASK_VISIBILITY_SECONDS
                )

    async def _flush_logs(self, task: TaskMessage, lines: list[str], done: asyncio.Event) -> None:
        while not done.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(done.wait(), LOG_FLUSH_SECONDS)
            await self._send_lines(task, lines)

    async def _send_lines(self, task: TaskMessage, lines: list[str]) -> None:
        if not lines:
            return
        batch = lines[:]
        del lines[: len(batch)]
        body = messages.log_body(task.task_id, task.attempt, batch)
        with contextlib.suppress(Exception):  # the job may be over: lines are best effort
            await self.relay.call(self.relay.queue.send, messages.result_queue(self.job_id), [body])

    async def _hand_back_one(self, work: QueueName, delivery: Delivery) -> None:
        with contextlib.suppress(Exception):
            await self.relay.call(self.relay.queue.release, work, delivery)

    async def hand_back(self) -> None:
        """The machine is being taken away: stop local attempts and make their
        messages visible at once, so another machine takes them."""
        self.stopped = True
        for running in list(self.running.values()):
            if running.keep_hidden is not None:
                running.keep_hidden.cancel()  # or it would hide the message again
            await self._hand_back_one(running.queue, running.delivery)
            with contextlib.suppress(Exception):
                await self.relay.local.cancel(running.local_job_id)

    async def cancel(self) -> None:
        self.stopped = True
        for running in list(self.running.values()):
            with contextlib.suppress(Exception):
                await self.relay.local.cancel(running.local_job_id)


class MachineRelay:
    """Everything a remote machine does for the jobs it serves."""

    def __init__(
        self,
        machine_id: str,
        place: RemotePlace,
        local: LocalHost,
        serve: ServeSource,
        idle_timeout: float,
    ) -> None:
        self.machine_id = machine_id
        self.store = place.store
        self.queue = place.queue
        self.jobs_table = place.jobs
        self.local = local
        self.serve = serve
        self.idle_timeout = idle_timeout
        self.mirror = StoreMirror(place.store, local.place.store)
        self.jobs: dict[str, _JobServer] = {}
        self.archives: dict[str, str | None] = {}  # environment spec -> archive key
        self.cancelled: set[str] = set()
        self.drained: dict[str, float] = {}  # job id -> when this machine left it
        self.holding: dict[str, float] = {}  # job id -> since when it keeps us up
        self._settling = asyncio.Lock()  # the settler and the last look before ending
        self.interrupted = False
        self.last_busy = time.monotonic()
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=64)

    async def call(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a blocking driver call on the relay's own (large) thread pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, lambda: function(*args, **kwargs))

    # -- objects ---------------------------------------------------------------------

    def prefetch(self, spec: JobSpec, task: TaskMessage) -> None:
        """Copy what the task reads into the local store (content addressed, so each
        object comes down once per machine)."""
        wanted = [k for k in (spec.function_key, spec.args_key) if k]
        environment = spec.environment
        if environment.env_spec:
            wanted.append(environment.env_spec)
            if environment.env_spec not in self.archives:
                # Once per environment, not per task: a map's tasks all share it.
                self.archives[environment.env_spec] = stored_archive(
                    environment.env_spec, self.store
                )
            packed = self.archives[environment.env_spec]
            if packed is not None:
                wanted.append(packed)
        for key in wanted:
            self.mirror.copy_down(key)
        if environment.code_manifest:
            self.mirror.copy_down(environment.code_manifest)
            manifest = CodeSnapshot.from_manifest(
                self.local.place.store.get(environment.code_manifest)
            )
            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                list(pool.map(self.mirror.copy_down, manifest.object_keys()))

    # -- jobs ------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return bool(self.jobs)

    async def job_finished(self, server: _JobServer) -> None:
        if self.jobs.get(server.job_id) is server:
            del self.jobs[server.job_id]
            self.queue.forget(messages.job_queue(server.job_id))
            self.queue.forget(messages.result_queue(server.job_id))
            self.last_busy = time.monotonic()
            if not server.stopped:
                self.drained.setdefault(server.job_id, self.last_busy)
            with contextlib.suppress(Exception):
                await self.call(self.serve.release, server.job_id)

    async def settle_drained(self, now: float | None = None, grace: float | None = None) -> None:
        """Settle the jobs left here ``grace`` ago (all of them when ``now`` is None: the
        machine is ending); a job still running elsewhere is checked again after another
        grace period."""
        async with self._settling:
            await self._settle_drained(now, grace)

    async def still_needed(self) -> bool:
        """The last look before ending idle: a job left here whose tasks other machines
        still hold keeps this machine up (bounded), since if such a machine died with no
        caller watching, this one may be the only one left to run them again."""
        before = self.last_busy
        await self.settle_drained(time.monotonic(), grace=0)
        return self.busy or self.last_busy != before

    async def _settle_drained(self, now: float | None, grace: float | None) -> None:
        if grace is None:
            grace = min(SETTLE_GRACE_SECONDS, self.idle_timeout / 2)
        for job_id, since in list(self.drained.items()):
            if job_id in self.jobs:
                del self.drained[job_id]  # served again: it ends here later, or elsewhere
                continue
            if now is not None and now - since < grace:
                continue
            try:
                result = await self.call(self.settle_job, job_id)
                if result == Settled.WAITING and now is not None and not self.interrupted:
                    stranded = await self.call(self.stranded, job_id)
                    if stranded == Stranded.REJOINED:
                        del self.drained[job_id]
                        self.holding.pop(job_id, None)
                        await self.reconcile()  # serves the allocation just taken
                        continue
                    self._hold(job_id, stranded == Stranded.HOLDING)
            except Exception:
                log.warning("could not settle job %s", job_id, exc_info=True)
                result = Settled.WAITING
            if result == Settled.WAITING and now is not None:
                self.drained[job_id] = now  # look again after another grace period
            else:
                self.drained.pop(job_id, None)
                self.holding.pop(job_id, None)

    def _hold(self, job_id: str, holding: bool) -> None:
        """Stay up (count as busy) while tasks of a job left here are held by other
        machines: a dead machine's tasks come back within the visibility timeout, and
        with no caller this machine may be the only one left to run them. Bounded: a live
        machine with a long task costs this one at most ``HOLD_LIMIT_SECONDS`` of idling."""
        if not holding:
            self.holding.pop(job_id, None)
            return
        since = self.holding.setdefault(job_id, time.monotonic())
        if time.monotonic() - since < HOLD_LIMIT_SECONDS:
            self.last_busy = time.monotonic()

    async def settler(self, period: float) -> None:
        """Its own loop: reading a big job's outcomes must never delay a heartbeat."""
        while True:
            await asyncio.sleep(period)
            await self.settle_drained(time.monotonic())

    def settle_job(self, job_id: str) -> Settled:
        """Record a job whose every task has a final outcome as over, and delete its
        queues, if its caller has not: without this a job whose caller was killed would
        read ``running`` and keep its queues forever. A caller that comes back replays
        the outcomes from the store."""
        fields = self.jobs_table.job_fields(job_id)
        if fields is None or fields.get("state") in protocol.TERMINAL_JOB_STATES:
            return Settled.OVER
        num_tasks = int(fields.get("num_tasks", 0))
        final = outcomes.final_outcomes(self.store, job_id, at_least=num_tasks)
        if len(final) < num_tasks:
            return Settled.WAITING  # another machine still runs some, or they come back
        summary = outcomes.finished_fields(final)
        settled = self.jobs_table.update_job(
            job_id,
            {**summary, "settled_by": self.machine_id},
            expected_state=str(fields.get("state")),
        )
        if not settled:
            return Settled.OVER  # its caller (or another machine) recorded it meanwhile
        log.info("job %s had no caller watching; settled it as %s", job_id, summary["state"])
        self.queue.delete(messages.job_queue(job_id))
        self.queue.delete(messages.result_queue(job_id))
        return Settled.SETTLED

    def stranded(self, job_id: str) -> Stranded:
        """What to do for a job this machine left whose tasks are not all final.

        A worker leaves a job after a few idle seconds, but a task held by a machine
        that died comes back only after its visibility timeout. A live caller allocates
        for it again; when the caller is gone too, nobody would, and the job would read
        ``running`` forever. So: rejoin when tasks wait in the queue (one worker taken
        here through the serve source), hold while tasks are in flight elsewhere (they
        come back if their machine died), else nothing.

        Whether the holder is dead cannot wait to be known: a heartbeat's silence takes
        longer to show than a short idle timeout, and a machine that ended cannot rejoin.
        """
        try:
            visible, in_flight = self.queue.depth(messages.job_queue(job_id))
        except QueueGone:
            return Stranded.NO
        if visible == 0:
            return Stranded.NO if in_flight == 0 else Stranded.HOLDING
        if not self.serve.take_one(job_id, outcomes.read_spec(self.store, job_id)):
            return Stranded.NO
        log.info("tasks of job %s came back to its queue: serving it again", job_id)
        return Stranded.REJOINED

    async def reconcile(self) -> bool:
        """Serve exactly what the serve source allocated here; False if it does not
        know this machine.

        The serve source is the source of truth; a ``serve`` message is only a doorbell.
        So a lost doorbell (a caller killed between allocating and ringing) costs one
        heartbeat period, and an allocation nobody serves can never keep the machine
        from going idle.
        """
        allocations = await self.call(self.serve.allocations)
        if allocations is None:
            return False
        for job_id, workers in allocations.items():
            if job_id in self.cancelled:
                continue
            server = self.jobs.get(job_id)
            if server is None or server.stopped:
                server = _JobServer(self, job_id, workers)
                self.jobs[job_id] = server
                server.start()
            elif workers > server.workers:
                server.grow(workers)
        return True

    async def control(self) -> None:
        """Follow this machine's control queue: ``serve`` doorbells and cancels."""
        name = messages.control_queue(self.machine_id)
        while not await self.call(self.queue.exists, name):
            await asyncio.sleep(1)
        await self.reconcile()
        while not self.interrupted:
            # A long poll returns as soon as a message arrives; 20 s keeps an idle
            # machine to a few requests a minute.
            try:
                deliveries = await self.call(self.queue.receive, name, 10, 20, None)
            except Exception:
                log.warning("reading the control queue failed; retrying", exc_info=True)
                await asyncio.sleep(1)
                continue
            if deliveries:
                await self.call(self.queue.ack, name, deliveries)
            bodies = [messages.decode(d.body) for d in deliveries]
            for body in bodies:
                if body["op"] == "cancel":
                    self.cancelled.add(body["job_id"])
                    if body["job_id"] in self.jobs:
                        await self.jobs[body["job_id"]].cancel()
            if any(body["op"] == "serve" for body in bodies):
                await self.reconcile()

    async def interrupt(self) -> None:
        """The machine is being taken away: stop taking work, hand running tasks back."""
        self.interrupted = True
        for server in list(self.jobs.values()):
            await server.hand_back()

    async def close(self) -> None:
        """The machine is ending: settle what can be settled, drop the control queue,
        stop the local agent."""
        # Also after an interruption: it only settles jobs whose every task is final.
        await self.settle_drained()
        with contextlib.suppress(Exception):
            await self.call(self.queue.delete, messages.control_queue(self.machine_id))
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.local.shutdown)
