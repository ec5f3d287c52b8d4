"""The agent on an EC2 instance: relays SQS work into the local Meadow agent.

The instance runs the same agent as ``LocalHost`` (SQLite queue, warm workers, memory
limits, logs). This module is the bridge to the region: it learns from the instance's
control queue which jobs it serves and with how many workers, pulls their task messages
from each job's work queue, prefetches the objects a task needs from S3 into the local
store, runs each task attempt as a one-task local job, stores the outcome in S3 and
announces it on the job's result queue, and only then deletes the task message
(at-least-once execution, exactly-once results). It also

* extends a running task's visibility, so a slow task is not handed out twice, while a
  dead instance's task reappears after ``TASK_VISIBILITY_SECONDS``;
* retries failed attempts below ``max_attempts`` by queueing the next attempt before
  acknowledging the failed one;
* heartbeats into the registry, and after ``idle_timeout`` without work marks itself
  terminating (a conditional write that loses against any concurrent allocation) and
  terminates its own instance, with no caller involved;
* watches the metadata endpoint for a spot interruption notice: it stops taking work,
  hands its in-flight tasks back (visibility 0) so they run elsewhere, and terminates;
* settles a job that it served to the end when no caller recorded it as over (the
  caller was killed, or submitted without waiting): it records the job's state from the
  outcomes in S3 and deletes its queues, so nothing of the job is left running.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import boto3

from meadow_core import protocol
from meadow_core.agent.agent import MEMORY_BOUND_FRACTION
from meadow_core.agent.capacity import DEFAULT_TASK_CPU
from meadow_core.clouds.aws import metadata, transport
from meadow_core.clouds.aws.mirror import StoreMirror
from meadow_core.clouds.aws.registry import InstanceRegistry
from meadow_core.clouds.aws.store import S3ObjectStore
from meadow_core.clouds.aws.transport import Queues
from meadow_core.code_snapshot import CodeSnapshot
from meadow_core.envcache import stored_archive
from meadow_core.hosts.local import LocalHost
from meadow_core.protocol import JobSpec, TaskMessage, TaskOutcome
from meadow_core.resources import Resources
from meadow_core.task_context import TASK_STORE_VARIABLE

log = logging.getLogger("meadow.instance_agent")

#: A job whose work queue stayed empty this long (and nothing of it runs here) is left.
JOB_DRAIN_SECONDS = 6.0
HEARTBEAT_SECONDS = 5.0
LOG_FLUSH_SECONDS = 0.5
#: A task handed out this often without a result is reported lost, not run again.
MAX_DELIVERIES = 5
#: A job drained here that its caller has not recorded as over after this long (or half
#: the idle timeout, if shorter) has no caller watching; the instance settles it, and
#: checks again this often while other instances still run some of its tasks.
SETTLE_GRACE_SECONDS = 30.0
#: An instance that has not heartbeated for this long may have died holding tasks.
SILENT_AFTER_SECONDS = 3 * HEARTBEAT_SECONDS
#: The longest an idle instance stays up for tasks held by silent instances.
HOLD_LIMIT_SECONDS = 3 * transport.TASK_VISIBILITY_SECONDS


def _background(coroutine: Any, what: str) -> asyncio.Task[Any]:
    """A task whose failure is logged (a silent dead loop would look like an idle one)."""

    async def run() -> Any:
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
    queue_url: str
    receipt: str
    keep_hidden: asyncio.Task[None] | None = None


class _JobServer:
    """Serves one job on this instance with a number of worker loops."""

    def __init__(self, agent: InstanceAgent, job_id: str, workers: int) -> None:
        self.agent = agent
        self.job_id = job_id
        self.workers = workers
        self.spec: JobSpec | None = None
        self.running: dict[str, _Running] = {}
        self.stopped = False
        self.tasks: list[asyncio.Task[None]] = []
        self.idle_since: float | None = None

    def start(self) -> None:
        log.info("serving job %s with %d worker(s)", self.job_id, self.workers)
        self.tasks = [_background(self._loop(i), f"job {self.job_id}") for i in range(self.workers)]

    def grow(self, workers: int) -> None:
        """More workers for this job (a second allocation onto this instance)."""
        self.tasks += [
            _background(self._loop(i), f"job {self.job_id}") for i in range(self.workers, workers)
        ]
        self.workers = max(self.workers, workers)

    async def _loop(self, index: int) -> None:
        agent = self.agent
        try:
            queue_url = await agent.call(agent.queues.url, transport.job_queue_name(self.job_id))
            idle_since = time.monotonic()
            while not self.stopped and not agent.interrupted and queue_url is not None:
                try:
                    messages = await agent.call(
                        agent.queues.receive, queue_url, 2, 1, transport.TASK_VISIBILITY_SECONDS
                    )
                except agent.sqs.exceptions.QueueDoesNotExist:
                    break  # the caller finished or cancelled the job
                except Exception:
                    log.warning(
                        "receiving from job %s failed; retrying", self.job_id, exc_info=True
                    )
                    await asyncio.sleep(1)
                    continue
                if not messages:
                    if time.monotonic() - idle_since > JOB_DRAIN_SECONDS and not self.running:
                        break
                    continue
                try:
                    await self._run(queue_url, messages[0])
                except agent.sqs.exceptions.QueueDoesNotExist:
                    break  # the job ended while this task ran (its result is stored)
                except Exception:
                    # The message reappears after its visibility timeout: a retry, not a loss.
                    log.exception("task of job %s failed in the relay", self.job_id)
                idle_since = time.monotonic()
        finally:
            if all(t.done() or t is asyncio.current_task() for t in self.tasks):
                await agent.job_finished(self)

    async def _run(self, queue_url: str, message: dict[str, Any]) -> None:
        agent = self.agent
        receipt = message["ReceiptHandle"]
        body = transport.decode(message["Body"])
        body.pop("op", None)
        task = TaskMessage.from_wire(body)
        if self.spec is None:
            raw = await agent.call(agent.remote.get, transport.spec_key(self.job_id))
            self.spec = JobSpec.from_wire(protocol.unpack(raw))
        spec = self.spec
        received = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
        if received > MAX_DELIVERIES:
            # Handed out this often without a result: its instances died with it (it
            # kills them, say). Report it instead of killing machines forever.
            lost = TaskOutcome(
                job_id=self.job_id,
                task_id=task.task_id,
                attempt=task.attempt,
                outcome=protocol.CRASHED,
                final=True,
                error=[
                    "meadow.TaskLost",
                    f"task {task.task_id} was delivered {received} times and never finished; "
                    "each instance running it stopped (out of memory, killed, interrupted)",
                    "",
                ],
            )
            await agent.call(self._report, spec, task, lost, queue_url, receipt)
            return
        await agent.call(agent.prefetch, spec, task)
        if self.stopped or agent.interrupted:
            await self._hand_back_one(queue_url, receipt)
            return
        local_id = f"{self.job_id}.{task.task_id}.{task.attempt}"
        if len(local_id) > 128:
            local_id = protocol.content_key(local_id.encode(), "t").replace("/", "-")[:128]
        local_spec = dataclasses.replace(
            spec,
            job_id=local_id,
            num_tasks=1,
            max_attempts=1,
            retry_with_more_memory=False,
            num_concurrent_tasks=1,
            created=time.time(),
        )
        local_task = dataclasses.replace(task, job_id=local_id, attempt=1)
        heartbeat = asyncio.ensure_future(self._keep_hidden(queue_url, receipt))
        self.running[local_id] = _Running(local_id, queue_url, receipt, heartbeat)
        pending_lines: list[str] = []
        done_flushing = asyncio.Event()
        flusher = asyncio.ensure_future(self._flush_logs(task, pending_lines, done_flushing))
        outcome: TaskOutcome | None = None
        try:
            async with agent.local.watch(local_id, 1, spec.kind, new=True) as job_watch:
                # Lines go to the caller through the result queue, not to this log.
                job_watch.on_log = lambda task_id, attempt, lines: pending_lines.extend(lines)  # type: ignore[method-assign]
                await agent.local.submit(local_spec, [local_task], {})
                async for first in job_watch.outcomes():
                    outcome = first
                    break
        finally:
            heartbeat.cancel()
            done_flushing.set()  # let a send in flight finish: no line is dropped
            with contextlib.suppress(Exception):
                await flusher
            self.running.pop(local_id, None)
        if outcome is None or agent.interrupted or self.stopped:
            return  # handed back or cancelled: another instance (or nobody) runs it
        await self._send_lines(task, pending_lines)
        await agent.call(self._report, spec, task, outcome, queue_url, receipt)

    def _report(
        self, spec: JobSpec, task: TaskMessage, outcome: TaskOutcome, queue_url: str, receipt: str
    ) -> None:
        """Store the outcome, announce it, queue a retry if due, then acknowledge."""
        agent = self.agent
        outcome = dataclasses.replace(
            outcome, job_id=self.job_id, task_id=task.task_id, attempt=task.attempt
        )
        if outcome.value_key:
            agent.copy_up(outcome.value_key)
        if outcome.log_key:
            key = transport.log_key(self.job_id, task.task_id, task.attempt)
            agent.remote.put(key, agent.local.place.store.get(outcome.log_key))
            outcome = dataclasses.replace(outcome, log_key=key)
        unsatisfiable = outcome.error is not None and outcome.error[0] == (
            "meadow.UnsatisfiableResources"
        )
        retry = (
            outcome.outcome in (protocol.FAILED, protocol.CRASHED, protocol.TIMEOUT)
            and task.attempt < spec.max_attempts
            and not unsatisfiable  # a bigger attempt would not fit here either
        )
        outcome = dataclasses.replace(outcome, final=not retry)
        key = transport.result_key(self.job_id, task.task_id, task.attempt)
        agent.remote.put(key, protocol.pack(outcome.to_wire()))
        result_url = agent.queues.url(transport.result_queue_name(self.job_id))
        if result_url is not None:
            agent.queues.send(result_url, [transport.outcome_body(outcome)])
        if retry:
            memory = task.memory_gb
            base = spec.resources.get("memory_gb")
            limit = task.memory_gb or base
            memory_bound = (
                outcome.error is not None and outcome.error[0] == "meadow.MemoryLimitExceeded"
            ) or bool(limit and (outcome.max_memory_gb or 0) >= MEMORY_BOUND_FRACTION * limit)
            if spec.retry_with_more_memory and base and memory_bound:
                memory = base * (task.attempt + 1)  # as the local agent does
            next_attempt = dataclasses.replace(task, attempt=task.attempt + 1, memory_gb=memory)
            agent.queues.send(queue_url, [transport.task_body(next_attempt)])
        agent.queues.delete_messages(queue_url, [receipt])

    async def _keep_hidden(self, queue_url: str, receipt: str) -> None:
        sqs = self.agent.sqs
        while True:
            await asyncio.sleep(transport.VISIBILITY_HEARTBEAT_SECONDS)
            with contextlib.suppress(Exception):
                await self.agent.call(
                    sqs.change_message_visibility,
                    QueueUrl=queue_url,
                    ReceiptHandle=receipt,
                    VisibilityTimeout=transport.TASK_VISIBILITY_SECONDS,
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
        url = await self.agent.call(self.agent.queues.url, transport.result_queue_name(self.job_id))
        if url is None:
            return
        body = transport.encode(
            {"op": "log", "task_id": task.task_id, "attempt": task.attempt, "lines": batch}
        )
        with contextlib.suppress(Exception):
            await self.agent.call(self.agent.queues.send, url, [body])

    async def _hand_back_one(self, queue_url: str, receipt: str) -> None:
        with contextlib.suppress(Exception):
            await self.agent.call(
                self.agent.sqs.change_message_visibility,
                QueueUrl=queue_url,
                ReceiptHandle=receipt,
                VisibilityTimeout=0,
            )

    async def hand_back(self) -> None:
        """Spot interruption: stop local attempts and make their messages visible at
        once, so another instance takes them."""
        self.stopped = True
        for running in list(self.running.values()):
            if running.keep_hidden is not None:
                running.keep_hidden.cancel()  # or it would hide the message again
            await self._hand_back_one(running.queue_url, running.receipt)
            with contextlib.suppress(Exception):
                await self.agent.local.cancel(running.local_job_id)

    async def cancel(self) -> None:
        self.stopped = True
        for running in list(self.running.values()):
            with contextlib.suppress(Exception):
                await self.agent.local.cancel(running.local_job_id)


class InstanceAgent:
    """Everything this instance does; ``run`` returns when the instance is ending."""

    def __init__(
        self, region: str, bucket: str, table: str, idle_timeout: float, home: Path
    ) -> None:
        session = boto3.session.Session(region_name=region)
        self.sqs = session.client("sqs")
        self.ec2 = session.client("ec2")
        self.queues = Queues(self.sqs)
        self.remote = S3ObjectStore(bucket, session.client("s3"))
        self.registry = InstanceRegistry(session.client("dynamodb"), table)
        self.idle_timeout = idle_timeout
        self.jobs: dict[str, _JobServer] = {}
        self.archives: dict[str, str | None] = {}  # environment spec -> archive key
        self.cancelled: set[str] = set()
        self.drained: dict[str, float] = {}  # job id -> when this instance left it
        self.holding: dict[str, float] = {}  # job id -> since when it keeps us up
        self.interrupted = False
        self.last_busy = time.monotonic()
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=64)
        self.token = metadata.token()
        self.instance_id = metadata.get("meta-data/instance-id", self.token) or ""
        # The local agent schedules against the instance type's size, as the registry
        # allocated it (not against what the kernel reports, which may differ a little).
        record = self.registry.get(self.instance_id)
        # current_task().store in tasks here is the bucket: what a task keeps there
        # outlives this instance and is read by the caller and by other instances.
        os.environ[TASK_STORE_VARIABLE] = f"s3://{bucket}?region={region}"
        self.local = LocalHost(
            home=home,
            idle_timeout=max(idle_timeout, 60.0),
            logical_cpu=record.logical_cpu if record else None,
            memory_gb=record.memory_gb if record else None,
        )
        self.mirror = StoreMirror(self.remote, self.local.place.store)

    async def call(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a blocking boto3 call on the agent's own (large) thread pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, lambda: function(*args, **kwargs))

    # -- objects ---------------------------------------------------------------------

    def copy_down(self, key: str) -> None:
        self.mirror.copy_down(key)

    def copy_up(self, key: str) -> None:
        self.mirror.copy_up(key)

    def prefetch(self, spec: JobSpec, task: TaskMessage) -> None:
        """Copy what the task reads from the local store into it from S3 (content
        addressed, so each object comes down once per instance)."""
        keys = [k for k in (spec.function_key, spec.args_key) if k]
        environment = spec.environment
        if environment.env_spec:
            keys.append(environment.env_spec)
            if environment.env_spec not in self.archives:
                # Once per environment, not per task: a map's tasks all share it.
                self.archives[environment.env_spec] = stored_archive(
                    environment.env_spec, self.remote
                )
            packed = self.archives[environment.env_spec]
            if packed is not None:
                keys.append(packed)
        for key in keys:
            self.copy_down(key)
        if environment.code_manifest:
            self.copy_down(environment.code_manifest)
            manifest = CodeSnapshot.from_manifest(
                self.local.place.store.get(environment.code_manifest)
            )
            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                list(pool.map(self.copy_down, manifest.object_keys()))

    # -- jobs ------------------------------------------------------------------------

    async def job_finished(self, server: _JobServer) -> None:
        if self.jobs.get(server.job_id) is server:
            del self.jobs[server.job_id]
            self.queues.forget(transport.job_queue_name(server.job_id))
            self.queues.forget(transport.result_queue_name(server.job_id))
            self.last_busy = time.monotonic()
            if not server.stopped:
                self.drained.setdefault(server.job_id, self.last_busy)
            with contextlib.suppress(Exception):
                await self.call(self.registry.release, self.instance_id, server.job_id)

    async def _settle_drained(self, now: float | None = None) -> None:
        """Settle the jobs left here a grace period ago (all of them when ``now`` is
        None: the instance is ending); a job still running elsewhere is checked again
        after another grace period."""
        grace = min(SETTLE_GRACE_SECONDS, self.idle_timeout / 2)
        for job_id, since in list(self.drained.items()):
            if job_id in self.jobs:
                del self.drained[job_id]  # served again: it ends here later, or elsewhere
                continue
            if now is not None and now - since < grace:
                continue
            try:
                result = await self.call(self.settle_job, job_id)
                if result == "waiting" and now is not None and not self.interrupted:
                    stranded = await self.call(self.stranded, job_id)
                    if stranded == "rejoined":
                        del self.drained[job_id]
                        self.holding.pop(job_id, None)
                        await self._reconcile()  # serves the allocation just taken
                        continue
                    self._hold(job_id, stranded == "holding")
            except Exception:
                log.warning("could not settle job %s", job_id, exc_info=True)
                result = "waiting"
            if result == "waiting" and now is not None:
                self.drained[job_id] = now  # look again after another grace period
            else:
                self.drained.pop(job_id, None)
                self.holding.pop(job_id, None)

    def _hold(self, job_id: str, holding: bool) -> None:
        """Stay up (count as busy) while tasks of a job left here are held by silent
        instances: they come back within the visibility timeout, and with no caller
        this instance may be the only one left to run them. Bounded, in case SQS's
        approximate counts lag."""
        if not holding:
            self.holding.pop(job_id, None)
            return
        since = self.holding.setdefault(job_id, time.monotonic())
        if time.monotonic() - since < HOLD_LIMIT_SECONDS:
            self.last_busy = time.monotonic()

    async def _settler(self) -> None:
        """Its own loop: reading a big job's outcomes must never delay a heartbeat."""
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            await self._settle_drained(time.monotonic())

    def settle_job(self, job_id: str) -> str:
        """Record a job whose every task has a final outcome as over, and delete its
        queues, if its caller has not: without this a job whose caller was killed would
        read ``running`` and keep its queues forever. A caller that comes back replays
        the outcomes from S3. Returns ``settled``, ``over`` (already over, or unknown)
        or ``waiting`` (some tasks have no final outcome yet)."""
        fields = self.registry.job_fields(job_id)
        if fields is None or fields.get("state") in protocol.TERMINAL_JOB_STATES:
            return "over"
        num_tasks = int(fields.get("num_tasks", 0))
        final = transport.final_outcomes(self.remote, job_id, at_least=num_tasks)
        if len(final) < num_tasks:
            return "waiting"  # another instance still runs some, or they come back later
        summary = transport.finished_fields(final)
        settled = self.registry.update_job(
            job_id,
            {**summary, "settled_by": self.instance_id},
            expected_state=str(fields.get("state")),
        )
        if not settled:
            return "over"  # its caller (or another instance) recorded it meanwhile
        log.info("job %s had no caller watching; settled it as %s", job_id, summary["state"])
        self.queues.delete_queue(transport.job_queue_name(job_id))
        self.queues.delete_queue(transport.result_queue_name(job_id))
        return "settled"

    def stranded(self, job_id: str) -> str:
        """What to do for a job this instance left whose tasks are not all final.

        A worker leaves a job after a few idle seconds, but a task held by an instance
        that died comes back only after its visibility timeout. A live caller allocates
        for it again; when the caller is gone too, nobody would, and the job would read
        ``running`` forever. So: ``rejoined`` when tasks wait in the queue (one worker
        taken here through the registry), ``holding`` when tasks are in flight and no
        instance serving the job has heartbeated lately (they will come back), else
        ``no`` (the instances running them are alive and finish them)."""
        url = self.queues.url(transport.job_queue_name(job_id))
        if url is None:
            return "no"
        counts = self.sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        if int(counts["ApproximateNumberOfMessages"]) == 0:
            if int(counts["ApproximateNumberOfMessagesNotVisible"]) == 0:
                return "no"
            now = time.time()
            serving = [
                r
                for r in self.registry.list()
                if job_id in r.allocations and r.instance_id != self.instance_id
            ]
            alive = any(now - r.last_heartbeat < SILENT_AFTER_SECONDS for r in serving)
            return "no" if alive else "holding"
        spec = JobSpec.from_wire(protocol.unpack(self.remote.get(transport.spec_key(job_id))))
        per_worker = Resources.from_wire(dict(spec.resources))
        if per_worker.logical_cpu is None:  # what the caller books for such a worker
            per_worker = dataclasses.replace(per_worker, logical_cpu=DEFAULT_TASK_CPU)
        if not self.registry.try_allocate(self.instance_id, job_id, 1, per_worker):
            return "no"
        log.info("tasks of job %s came back to its queue: serving it again", job_id)
        return "rejoined"

    async def _reconcile(self) -> None:
        """Serve exactly what the registry allocated here.

        The registry is the source of truth; a ``serve`` message is only a doorbell.
        So a lost doorbell (a caller killed between allocating and ringing) costs one
        heartbeat period, and an allocation nobody serves can never keep the instance
        from going idle.
        """
        record = await self.call(self.registry.get, self.instance_id)
        if record is None:
            return
        for job_id, allocation in record.allocations.items():
            if job_id in self.cancelled:
                continue
            workers = int(allocation["workers"])
            server = self.jobs.get(job_id)
            if server is None or server.stopped:
                server = _JobServer(self, job_id, workers)
                self.jobs[job_id] = server
                server.start()
            elif workers > server.workers:
                server.grow(workers)

    async def _control(self) -> None:
        name = transport.control_queue_name(self.instance_id)
        url = None
        while url is None:
            url = await self.call(self.queues.url, name)
            if url is None:
                await asyncio.sleep(1)
        await self._reconcile()
        while not self.interrupted:
            # A long poll returns as soon as a message arrives; 20 s keeps an idle
            # instance to a few requests a minute.
            try:
                messages = await self.call(self.queues.receive, url, 20, 10)
            except Exception:
                log.warning("reading the control queue failed; retrying", exc_info=True)
                await asyncio.sleep(1)
                continue
            if messages:
                await self.call(
                    self.queues.delete_messages, url, [m["ReceiptHandle"] for m in messages]
                )
            bodies = [transport.decode(m["Body"]) for m in messages]
            for body in bodies:
                if body["op"] == "cancel":
                    self.cancelled.add(body["job_id"])
                    if body["job_id"] in self.jobs:
                        await self.jobs[body["job_id"]].cancel()
            if any(body["op"] == "serve" for body in bodies):
                await self._reconcile()

    async def _heartbeat(self) -> None:
        while True:
            if self.jobs:
                self.last_busy = time.monotonic()
            try:
                known = await self.call(self.registry.heartbeat, self.instance_id)
                if not known and not self.jobs:
                    # No record (the sweeper removed it, or the launching caller died
                    # before registering): nobody can allocate here, so end.
                    log.warning("%s is not in the registry: terminating", self.instance_id)
                    return
                await self._reconcile()
                idle = time.monotonic() - self.last_busy
                if not self.jobs and idle >= self.idle_timeout:
                    won = await self.call(self.registry.mark_terminating_if_idle, self.instance_id)
                    if won:
                        log.info("idle for %.0fs: terminating %s", idle, self.instance_id)
                        return
                    self.last_busy = time.monotonic()  # a caller allocated meanwhile
            except Exception:
                log.exception("heartbeat failed")
            await asyncio.sleep(min(HEARTBEAT_SECONDS, max(0.5, self.idle_timeout / 4)))

    async def _watch_spot(self) -> None:
        while True:
            await asyncio.sleep(1)
            try:
                notice = await self.call(metadata.get, "meta-data/spot/instance-action", self.token)
            except urllib.error.HTTPError as exc:
                if exc.code == 401:  # the IMDSv2 token expired (6 h): take a new one
                    with contextlib.suppress(Exception):
                        self.token = await self.call(metadata.token)
                continue
            except Exception:
                continue
            if notice:
                log.warning("spot interruption notice: %s", notice)
                self.interrupted = True
                with contextlib.suppress(Exception):
                    await self.call(self.registry.mark_terminating, self.instance_id)
                for server in list(self.jobs.values()):
                    await server.hand_back()
                return

    async def run(self) -> None:
        log.info("meadow instance agent on %s", self.instance_id)
        control = _background(self._control(), "control queue")
        settler = _background(self._settler(), "settling jobs")
        done, _ = await asyncio.wait(
            [_background(self._heartbeat(), "heartbeat"), _background(self._watch_spot(), "spot")],
            return_when=asyncio.FIRST_COMPLETED,
        )
        control.cancel()
        settler.cancel()
        for task in done:
            task.result()
        await self._terminate()

    async def _terminate(self) -> None:
        # Also on a spot notice: it only settles jobs whose every task is final.
        await self._settle_drained()
        with contextlib.suppress(Exception):
            await self.call(
                self.queues.delete_queue, transport.control_queue_name(self.instance_id)
            )
        with contextlib.suppress(Exception):
            await self.call(self.registry.remove, self.instance_id)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.local.shutdown)
        await self.call(self.ec2.terminate_instances, InstanceIds=[self.instance_id])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--region", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--table", required=True)
    parser.add_argument("--idle-timeout", type=float, default=300.0)
    parser.add_argument("--home", default=os.environ.get("MEADOW_HOME", "/var/lib/meadow"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    log.info("config %s", json.dumps(vars(args)))
    try:
        agent = InstanceAgent(
            args.region, args.bucket, args.table, args.idle_timeout, Path(args.home)
        )
        asyncio.run(agent.run())
    finally:
        # Whatever ended the agent (even a crash), the instance must not run on unseen.
        _terminate_self(args.region)


def _terminate_self(region: str) -> None:
    try:
        instance_id = metadata.get("meta-data/instance-id", metadata.token())
        if instance_id:
            ec2 = boto3.session.Session(region_name=region).client("ec2")
            ec2.terminate_instances(InstanceIds=[instance_id])
    except Exception:
        log.exception("could not terminate this instance")


if __name__ == "__main__":
    main()
