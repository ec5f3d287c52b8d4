"""``RemoteHost``: the caller's side of every host whose machines are elsewhere.

A submission uploads payloads to the place's store (content-addressed, so present
ones are skipped, and remembered for a while so a warm call asks nothing), builds a
deployment's environment once and packs it into the store when this machine can (so
machines unpack it instead of resolving and installing it each), creates the job's
record (a conditional insert: a deterministic job id that exists reattaches), fills
the job's work queue and asks the subclass for workers (``_allocate``). While a caller
watches, it long-polls the job's result queue, replays stored outcomes it may have
missed, and lets the subclass top the workers up (``_supervise``). When every outcome
is delivered it records the job as over and drops its queues.

Subclasses (``fleet.vmhost.AllocVM`` for VM clouds; a cluster host) supply the place
and how workers are found; nothing here names a cloud.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import platformdirs

from meadow_core import keys, protocol
from meadow_core.envcache import ensure_environment, entry_name, keep_recent, stored_archive
from meadow_core.hosts.base import Host
from meadow_core.protocol import JobRecord, JobSpec, TaskMessage, TaskOutcome
from meadow_core.remote import messages, outcomes, store_cache
from meadow_core.remote.jobs import JobTable
from meadow_core.remote.ports import QueueGone, WorkQueue
from meadow_core.transport.base import ObjectStore
from meadow_core.watch import JobWatch

log = logging.getLogger("meadow.remote")

#: How often a watching caller checks that its job still has live workers.
SUPERVISE_SECONDS = 5.0
#: Content-addressed objects known to be in a store are not checked again for this long
#: (their prefixes never expire; the limit covers an uninstall and reinstall).
KNOWN_PRESENT_SECONDS = 600.0
#: Where environments built on this machine for a remote place are cached.
ENV_CACHE = Path(platformdirs.user_cache_dir("meadow")) / "remote-envs"
#: How many of them stay, most recently used first.
KEEP_BUILT_ENVIRONMENTS = 8


@dataclasses.dataclass
class RemotePlace:
    """Where a remote host's jobs live: an object store, work queues and a job table.
    ``name`` tells places apart on this machine (a bucket's name, say)."""

    name: str
    store: ObjectStore
    queue: WorkQueue
    jobs: JobTable


@dataclasses.dataclass
class CallerCache:
    """What a caller process remembers about a place between calls."""

    known_present: dict[str, float] = dataclasses.field(default_factory=dict)
    created: set[str] = dataclasses.field(default_factory=set)  # jobs this process made
    served: dict[str, set[str]] = dataclasses.field(default_factory=dict)  # job -> machines


class RemoteHost(Host):
    """A host whose machines pull work from a ``RemotePlace``."""

    runs_elsewhere = True

    # -- what a subclass provides ----------------------------------------------------

    @property
    @abc.abstractmethod
    def place(self) -> RemotePlace:
        """The place (made lazily and shared by equal hosts in this process)."""

    @property
    @abc.abstractmethod
    def cache(self) -> CallerCache:
        """This process's memory of the place, shared by equal hosts."""

    def _before_submit(self) -> None:
        """Checks that must pass before anything is uploaded (network, installation)."""

    def _extra_refs(self) -> list[str]:
        """Store keys every job reads besides its own (an agent bundle)."""
        return []

    @abc.abstractmethod
    def _allocate(self, spec: JobSpec, workers: int) -> None:
        """Find ``workers`` workers for a job just queued."""

    def _supervise(self, spec: JobSpec, remaining: int) -> None:
        """Top a job's workers up while ``remaining`` tasks have no final outcome."""

    def _end_job(self, job_id: str, served: set[str] | None) -> list[Callable[[], object]]:
        """What to do when a job ends (free its workers), as calls run side by side.
        ``served`` are the machines this process asked to serve it (None: unknown)."""
        return []

    def _notify_cancel(self, job_id: str) -> None:
        """Tell the machines serving a job to stop its running tasks."""

    # -- submission ------------------------------------------------------------------

    async def submit(
        self, spec: JobSpec, tasks: Sequence[TaskMessage], objects: Mapping[str, bytes | Path]
    ) -> bool:
        return await asyncio.to_thread(self._submit, spec, tasks, objects)

    def _upload(self, objects: Mapping[str, bytes | Path]) -> None:
        store, known = self.place.store, self.cache.known_present
        now = time.monotonic()

        def upload(item: tuple[str, bytes | Path]) -> None:
            key, data = item
            if not store.exists(key):
                if isinstance(data, Path):
                    store.put_file(key, data)  # in parts, never whole in memory
                else:
                    store.put(key, data)
            known[key] = now

        missing = [
            item
            for item in objects.items()
            if now - known.get(item[0], -KNOWN_PRESENT_SECONDS) >= KNOWN_PRESENT_SECONDS
        ]
        if len(missing) <= 2:
            for item in missing:
                upload(item)
        else:
            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                list(pool.map(upload, missing))

    def _submit(
        self, spec: JobSpec, tasks: Sequence[TaskMessage], objects: Mapping[str, bytes | Path]
    ) -> bool:
        self._before_submit()
        place = self.place
        self._upload(objects)
        if spec.environment.env_spec:
            self._prepare_environment(spec.environment.env_spec)
        created = place.jobs.put_job(
            spec.job_id,
            {
                "kind": spec.kind,
                "name": spec.name,
                "num_tasks": spec.num_tasks,
                "state": protocol.JOB_RUNNING,
                "created": spec.created,
                # What the job reads from the store: cache pruning keeps it.
                "refs": store_cache.job_refs(spec, *self._extra_refs()),
            },
        )
        if not created:
            return False
        self.cache.created.add(spec.job_id)
        place.store.put(keys.spec_key(spec.job_id), protocol.pack(spec.to_wire()))
        work = messages.job_queue(spec.job_id)
        place.queue.create(work, messages.TASK_VISIBILITY_SECONDS)
        place.queue.create(messages.result_queue(spec.job_id), messages.TASK_VISIBILITY_SECONDS)
        place.queue.send(work, [messages.task_body(t) for t in tasks])
        self._allocate(spec, min(spec.num_tasks, spec.num_concurrent_tasks or spec.num_tasks))
        return True

    def _prepare_environment(self, spec_key: str) -> None:
        """Build the environment here once and pack it into the store, so machines
        unpack it instead of resolving and installing it each (and need no index)."""
        known = self.cache.known_present
        if time.monotonic() - known.get(spec_key + "#archive", -1e9) < KNOWN_PRESENT_SECONDS:
            return
        if stored_archive(spec_key, self.place.store) is None:
            cache = ENV_CACHE / self.place.name
            # The store lacks it (a new one, say): a local copy must be packed again.
            (cache / entry_name(spec_key) / ".shared").unlink(missing_ok=True)
            ensure_environment(spec_key, self.place.store, cache, wait_for_upload=True)
            # The copies here exist to pack into the store and to derive the next build.
            removed = keep_recent(cache, KEEP_BUILT_ENVIRONMENTS)
            if removed:
                log.debug("removed %d environments built here before: %s", len(removed), removed)
        known[spec_key + "#archive"] = time.monotonic()

    # -- watching --------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def watch(
        self, job_id: str, num_tasks: int, kind: str, new: bool = False
    ) -> AsyncIterator[JobWatch]:
        job_watch = JobWatch(job_id, num_tasks, kind)
        follower = asyncio.ensure_future(self._follow(job_watch, new))
        try:
            yield job_watch
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await follower
            if job_watch.all_delivered:
                try:
                    await asyncio.to_thread(self._finish, job_id, protocol.JOB_SUCCEEDED, job_watch)
                except Exception:
                    # Every result is delivered; machines release themselves once the
                    # queues are gone, and the sweeper removes what is left.
                    log.warning("could not clean up after job %s", job_id, exc_info=True)

    async def _wait_for_result_queue(self, job_watch: JobWatch, new: bool) -> bool:
        """Whether there is a result queue to follow: False when the job is unknown
        (``on_unknown``) or over (its stored outcomes are replayed, then ``on_done``).
        A job this process just created is known the moment ``submit`` creates the
        queue (no request, no polling delay)."""
        queue = self.place.queue
        name = messages.result_queue(job_watch.job_id)
        if queue.known(name) or await asyncio.to_thread(queue.exists, name):
            return True
        last_lookup = time.monotonic()
        while not queue.known(name):
            await asyncio.sleep(0.005 if new else 0.2)
            if time.monotonic() - last_lookup > 0.5:
                last_lookup = time.monotonic()
                record = await self.get_job(job_watch.job_id)
                if record is None and not new:
                    job_watch.on_unknown()
                    return False
                if record is not None and record.state in protocol.TERMINAL_JOB_STATES:
                    for outcome in await self.results(job_watch.job_id):
                        job_watch.on_result(outcome)
                    job_watch.on_done(record.state)
                    return False
                if await asyncio.to_thread(queue.exists, name):
                    return True
        return True

    async def _replay(self, job_watch: JobWatch) -> None:
        """Feed the outcomes stored in the store (the watch hands each task over once):
        for a reattaching caller, and as the safety net if a result message was lost
        (another watcher took it, or it was too large for the queue)."""
        store = self.place.store

        def missing() -> list[TaskOutcome]:
            return [
                outcomes.read_outcome(store, key)
                for key in store.list_keys(keys.results_prefix(job_watch.job_id))
                if keys.task_of_result_key(key) not in job_watch.final  # only what is new
            ]

        for outcome in await asyncio.to_thread(missing):
            job_watch.on_result(outcome)

    async def _follow(self, job_watch: JobWatch, new: bool) -> None:
        job_id = job_watch.job_id
        queue = self.place.queue
        results = messages.result_queue(job_id)
        try:
            if not await self._wait_for_result_queue(job_watch, new):
                return
            if job_id not in self.cache.created:
                await self._replay(job_watch)  # reattached: earlier outcomes are stored
            spec: JobSpec | None = None
            checked = time.monotonic()
            while not job_watch.all_delivered:
                try:
                    deliveries = await asyncio.to_thread(queue.receive, results, 10, 2, None)
                except QueueGone:
                    # Someone finished or cancelled the job: what is stored is all.
                    await self._replay(job_watch)
                    record = await self.get_job(job_id)
                    job_watch.on_done(record.state if record else protocol.JOB_CANCELLED)
                    return
                for delivery in deliveries:
                    body = messages.decode(delivery.body)
                    if body.get("op") == "log":
                        job_watch.on_log(body["task_id"], body["attempt"], body["lines"])
                    else:
                        job_watch.on_result(TaskOutcome.from_wire(body))
                if deliveries:
                    await asyncio.to_thread(queue.ack, results, deliveries)
                if time.monotonic() - checked > SUPERVISE_SECONDS:
                    checked = time.monotonic()
                    spec = spec or await self.get_spec(job_id)
                    try:
                        await self._replay(job_watch)
                        if spec is not None and not job_watch.all_delivered:
                            remaining = spec.num_tasks - len(job_watch.final)
                            await asyncio.to_thread(self._supervise, spec, remaining)
                    except Exception:
                        # A transient API error must not fail a job that runs fine.
                        log.warning("supervising job %s failed; retrying", job_id, exc_info=True)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            job_watch.on_error(exc)

    def _finish(self, job_id: str, state: str, job_watch: JobWatch | None = None) -> None:
        """The job is over: record it, drop its queues, free its workers (at once)."""
        place = self.place
        fields: dict[str, Any] = {"state": state, "finished": time.time()}
        if job_watch is not None:
            fields = outcomes.finished_fields(job_watch.final)
        calls: list[Callable[[], object]] = [
            lambda: place.jobs.update_job(job_id, fields),
            lambda: place.queue.delete(messages.job_queue(job_id)),
            lambda: place.queue.delete(messages.result_queue(job_id)),
            *self._end_job(job_id, self.cache.served.pop(job_id, None)),
        ]
        with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
            for future in [pool.submit(call) for call in calls]:
                future.result()

    # -- Host: the rest ----------------------------------------------------------------

    async def cancel(self, job_id: str) -> bool:
        def cancel() -> bool:
            jobs = self.place.jobs
            record = jobs.get_job(job_id)
            if record is None:
                return False
            if record.state in protocol.TERMINAL_JOB_STATES:
                return True  # already over: nothing to stop, its state stays
            jobs.request_cancel(job_id)
            try:
                self._notify_cancel(job_id)
            finally:
                try:
                    self._record_cancelled(job_id, record.num_tasks)
                finally:
                    self._finish(job_id, protocol.JOB_CANCELLED)
            return True

        return await asyncio.to_thread(cancel)

    def _record_cancelled(self, job_id: str, num_tasks: int) -> None:
        """Store a final ``cancelled`` outcome for every task that has none, as the
        local agent does, so whoever waits on the job (its caller, one reattaching
        later, ``meadow wait``) is told each task was cancelled instead of getting no
        outcome at all. Conditional puts: a result a machine stored first is kept."""
        store = self.place.store
        final = outcomes.final_outcomes(store, job_id)
        attempts: dict[int, int] = {}
        for key in store.list_keys(keys.results_prefix(job_id)):
            attempts[keys.task_of_result_key(key)] = int(key.rsplit(".", 1)[-1])
        now = time.time()

        def record(task_id: int) -> None:
            attempt = attempts.get(task_id, 0) + 1  # the attempt that will not run now
            outcome = TaskOutcome(
                job_id=job_id,
                task_id=task_id,
                attempt=attempt,
                outcome=protocol.CANCELLED,
                final=True,
                error=[protocol.ErrorKind.TASK_CANCELLED, "the job was cancelled", ""],
                finished=now,
            )
            store.put_if_absent(
                keys.result_key(job_id, task_id, attempt), protocol.pack(outcome.to_wire())
            )

        missing = [task_id for task_id in range(num_tasks) if task_id not in final]
        if missing:
            with concurrent.futures.ThreadPoolExecutor(min(16, len(missing))) as pool:
                list(pool.map(record, missing))

    async def get_spec(self, job_id: str) -> JobSpec | None:
        def read() -> JobSpec | None:
            try:
                return outcomes.read_spec(self.place.store, job_id)
            except KeyError:
                return None

        return await asyncio.to_thread(read)

    async def get_job(self, job_id: str) -> JobRecord | None:
        return await asyncio.to_thread(self.place.jobs.get_job, job_id)

    async def list_jobs(self, limit: int = 50) -> list[JobRecord]:
        return await asyncio.to_thread(self.place.jobs.list_jobs, limit)

    async def results(self, job_id: str) -> list[TaskOutcome]:
        final = await asyncio.to_thread(outcomes.final_outcomes, self.place.store, job_id)
        return [final[task_id] for task_id in sorted(final)]

    async def read_object(self, key: str) -> bytes:
        return await asyncio.to_thread(self.place.store.get, key)

    async def write_object(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self.place.store.put, key, data)

    def object_store(self) -> ObjectStore:
        return self.place.store

    def object_location(self, key: str) -> str:
        return self.place.store.location(key)
