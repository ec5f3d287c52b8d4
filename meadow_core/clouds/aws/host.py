"""``AllocEC2Instance``: run jobs on EC2 instances Meadow chooses, launches and reuses.

The caller side of the EC2 path (the instance side is ``instance_agent``). A submission
validates everything first (credentials, region, network, resources against the price
catalog), uploads payloads to S3 (content-addressed, so present ones are skipped),
builds a deployment's environment once and packs it into S3 when this machine can
(same platform), registers the job in the registry (a conditional write: a
deterministic job id that exists reattaches), fills the job's work queue, and
allocates workers: warm Meadow instances with free capacity first (conditional writes
in the registry, so concurrent callers never double-book), then the cheapest new
instances from the selection, falling back to the next choice when a launch fails for
capacity. While a caller watches, it long-polls the job's result queue and tops the
allocation up when instances serving the job disappear (spot interruption, a killed
machine), so every task gets a result.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import platformdirs

from meadow_core import protocol
from meadow_core.agent.capacity import DEFAULT_TASK_CPU
from meadow_core.allocation.selection import (
    NoCapacityError,
    Plan,
    WarmInstance,
    check_satisfiable,
    select,
)
from meadow_core.clouds.aws import bootstrap, names, session, store_cache, transport
from meadow_core.clouds.aws.catalog import Ec2Catalog
from meadow_core.clouds.aws.launch import (
    LaunchError,
    LaunchRequest,
    LaunchSettings,
    default_ami,
    is_capacity_error,
    launch,
)
from meadow_core.clouds.aws.registry import InstanceRecord, InstanceRegistry
from meadow_core.clouds.aws.store import S3ObjectStore
from meadow_core.clouds.aws.transport import Queues
from meadow_core.envcache import ensure_environment, entry_name, keep_recent, stored_archive
from meadow_core.hosts.base import Host
from meadow_core.protocol import Environment, JobRecord, JobSpec, TaskMessage, TaskOutcome
from meadow_core.resources import Resources
from meadow_core.watch import JobWatch

log = logging.getLogger("meadow.aws")

#: A serving instance whose heartbeat is older than this is presumed dead.
HEARTBEAT_STALE_SECONDS = 30.0
#: A running instance silent this long is terminated by the caller that notices.
DEAD_SECONDS = 120.0
#: How long a launched instance may take to boot before its first heartbeat.
BOOT_GRACE_SECONDS = 240.0
#: How often a watching caller checks that its job still has live workers.
SUPERVISE_SECONDS = 5.0
#: Content-addressed objects known to be in a bucket are not checked again for this long
#: (their prefixes never expire; the limit covers an uninstall and reinstall).
KNOWN_PRESENT_SECONDS = 600.0
_SHARED: dict[tuple[Any, ...], dict[str, Any]] = {}
_SHARED_LOCK = threading.Lock()
#: Where environments built on this machine for a bucket are cached.
_ENV_CACHE = Path(platformdirs.user_cache_dir("meadow")) / "aws-envs"
#: How many of them stay, most recently used first.
KEEP_BUILT_ENVIRONMENTS = 8


@dataclasses.dataclass
class AllocEC2Instance(Host):
    """Run on the cheapest EC2 instance that fits, launched for the job or reused warm.

    ``region_name`` defaults to boto3's default region; ``ami_id`` to the current
    Amazon Linux 2023 image; ``subnet_id`` and ``security_group_ids`` to the default
    VPC and the security group ``meadow aws install`` created; ``iam_role_instance_profile``
    to the instance profile it created. ``idle_timeout`` is how long an instance waits
    without work before it terminates itself.
    """

    runs_elsewhere = True

    region_name: str | None = None
    ami_id: str | None = None
    subnet_id: str | None = None
    security_group_ids: str | Sequence[str] | None = None
    iam_role_instance_profile: str | None = None
    idle_timeout: float = 300.0

    @property
    def _state(self) -> dict[str, Any]:
        """Clients, catalog and caches, shared by every equal host in this process
        (orchestrators create or unpickle a host per task; the catalog alone takes
        ~150 ms to load) and keyed by the AWS environment, so a switch of endpoint or
        profile never reuses another account's answers."""
        groups = self.security_group_ids
        key = (
            self.region_name,
            self.ami_id,
            self.subnet_id,
            groups if isinstance(groups, str) or groups is None else tuple(groups),
            self.iam_role_instance_profile,
            self.idle_timeout,
            session.environment_key(),
        )
        with _SHARED_LOCK:
            state = _SHARED.get(key)
            if state is None:
                state = session.remember(_SHARED, key, {})
            return state

    # -- lazily made parts (none at construction: a host is cheap and picklable) --------

    @property
    def region(self) -> str:
        if "region" not in self._state:
            region = self.region_name or session.default_region()
            if not region:
                raise session.AwsConfigurationError(
                    "no AWS region: pass AllocEC2Instance(region_name=...) or set "
                    "AWS_DEFAULT_REGION"
                )
            self._state["region"] = region
        return str(self._state["region"])

    def _client(self, service: str) -> Any:
        return session.client(service, self.region)

    @property
    def store(self) -> S3ObjectStore:
        if "store" not in self._state:
            bucket = names.bucket_name(session.account_id(), self.region)
            self._state["store"] = S3ObjectStore(bucket, self._client("s3"))
        store: S3ObjectStore = self._state["store"]
        return store

    @property
    def registry(self) -> InstanceRegistry:
        if "registry" not in self._state:
            self._state["registry"] = InstanceRegistry(self._client("dynamodb"), names.TABLE_NAME)
        registry: InstanceRegistry = self._state["registry"]
        return registry

    @property
    def queues(self) -> Queues:
        if "queues" not in self._state:
            self._state["queues"] = Queues(self._client("sqs"))
        queues: Queues = self._state["queues"]
        return queues

    @property
    def catalog(self) -> Ec2Catalog:
        if "catalog" not in self._state:
            self._state["catalog"] = Ec2Catalog(self.region)
        catalog: Ec2Catalog = self._state["catalog"]
        return catalog

    # -- Host: validation ---------------------------------------------------------------

    def check_resources(self, resources: Resources) -> None:
        session.check_credentials()
        session.check_region(self.region)
        check_satisfiable(resources, self.catalog.offers(), where=f"EC2 {self.region}")

    def default_resources(self) -> Resources:
        return Resources(logical_cpu=1, memory_gb=2)

    def environment(self, environment_variables: Mapping[str, str]) -> Environment:
        """The instance agent's own interpreter (the API mirrors the caller's code and
        packages into every job here, so this is only the base it replaces)."""
        return Environment(
            interpreter="python3",
            sys_path=[],
            working_directory=bootstrap.AGENT_HOME,
            environment_variables=dict(environment_variables),
        )

    def _check_network(self) -> tuple[str | None, list[str]]:
        cached = self._state.get("network")
        if cached is not None and time.monotonic() - cached[0] < KNOWN_PRESENT_SECONDS:
            return cached[1]  # type: ignore[no-any-return]
        network = self._resolve_network()
        self._state["network"] = (time.monotonic(), network)
        return network

    def _resolve_network(self) -> tuple[str | None, list[str]]:
        groups = (
            [self.security_group_ids]
            if isinstance(self.security_group_ids, str)
            else list(self.security_group_ids or [])
        )
        if self.subnet_id or groups:
            session.check_network(self.subnet_id, groups, self.region)
        if not groups:
            groups = [self._installed_security_group()]
        return self.subnet_id, groups

    def _installed_security_group(self) -> str:
        ec2 = self._client("ec2")
        found = ec2.describe_security_groups(
            Filters=[{"Name": "group-name", "Values": [names.SECURITY_GROUP_NAME]}]
        )["SecurityGroups"]
        if not found:
            raise session.AwsConfigurationError(
                f"Meadow is not installed in {self.region}: run `meadow aws install --region "
                f"{self.region}`, or pass security_group_ids"
            )
        return str(found[0]["GroupId"])

    # -- Host: submission -----------------------------------------------------------------

    async def submit(
        self, spec: JobSpec, tasks: Sequence[TaskMessage], objects: Mapping[str, bytes | Path]
    ) -> bool:
        return await asyncio.to_thread(self._submit, spec, tasks, objects)

    def _submit(
        self, spec: JobSpec, tasks: Sequence[TaskMessage], objects: Mapping[str, bytes | Path]
    ) -> bool:
        network = self._check_network()
        store = self.store
        known: dict[str, float] = self._state.setdefault("known_present", {})
        now = time.monotonic()

        def upload(item: tuple[str, bytes | Path]) -> None:
            key, data = item
            if now - known.get(key, -KNOWN_PRESENT_SECONDS) < KNOWN_PRESENT_SECONDS:
                return
            if not store.exists(key):
                if isinstance(data, Path):
                    store.put_file(key, data)  # in parts, never whole in memory
                else:
                    store.put(key, data)
            known[key] = now

        missing = [
            item
            for item in objects.items()
            if item[0] not in known or now - known[item[0]] >= KNOWN_PRESENT_SECONDS
        ]
        if len(missing) <= 2:
            for item in missing:
                upload(item)
        else:
            with concurrent.futures.ThreadPoolExecutor(16) as pool:
                list(pool.map(upload, missing))
        if spec.environment.env_spec:
            self._prepare_environment(spec.environment.env_spec)
        created = self.registry.put_job(
            spec.job_id,
            {
                "kind": spec.kind,
                "name": spec.name,
                "num_tasks": spec.num_tasks,
                "state": "running",
                "created": spec.created,
                # What the job reads from the bucket: `meadow aws cache prune` keeps it.
                "refs": store_cache.job_refs(spec, bootstrap.bundle_key()),
            },
        )
        if not created:
            return False
        self._state.setdefault("created", set()).add(spec.job_id)
        store.put(transport.spec_key(spec.job_id), protocol.pack(spec.to_wire()))
        job_url = self.queues.create(transport.job_queue_name(spec.job_id))
        self.queues.create(transport.result_queue_name(spec.job_id))
        self.queues.send(job_url, [transport.task_body(t) for t in tasks])
        workers = min(spec.num_tasks, spec.num_concurrent_tasks or spec.num_tasks)
        self._allocate(spec, workers, network)
        return True

    def _prepare_environment(self, spec_key: str) -> None:
        """Build the environment here once and pack it into S3, so instances unpack it
        instead of resolving and installing it each (and need no package index)."""
        known: dict[str, float] = self._state.setdefault("known_present", {})
        if time.monotonic() - known.get(spec_key + "#archive", -1e9) < KNOWN_PRESENT_SECONDS:
            return
        if stored_archive(spec_key, self.store) is None:
            self._build_environment(spec_key)
        known[spec_key + "#archive"] = time.monotonic()

    def _build_environment(self, spec_key: str) -> None:
        cache = _ENV_CACHE / self.store.bucket
        # The bucket lacks it (a new bucket, say): a local copy must be packed again.
        (cache / entry_name(spec_key) / ".shared").unlink(missing_ok=True)
        ensure_environment(spec_key, self.store, cache, wait_for_upload=True)
        # The copies here exist to pack into the bucket and to derive the next build from.
        removed = keep_recent(cache, KEEP_BUILT_ENVIRONMENTS)
        if removed:
            log.debug("removed %d environments built here before: %s", len(removed), removed)

    # -- allocation ---------------------------------------------------------------------

    @staticmethod
    def _alive(record: InstanceRecord, now: float) -> bool:
        """Running and heartbeating (or still booting): worth allocating to."""
        booting = (
            record.last_heartbeat - record.launched_at < 1.0
            and now - record.launched_at < BOOT_GRACE_SECONDS
        )
        fresh = now - record.last_heartbeat < HEARTBEAT_STALE_SECONDS
        return record.accepts_work and (fresh or booting)

    def _warm(self) -> list[WarmInstance]:
        now = time.time()
        return [r.as_warm() for r in self.registry.list() if self._alive(r, now)]

    def _allocate(self, spec: JobSpec, workers: int, network: tuple[str | None, list[str]]) -> None:
        """Place ``workers`` workers of ``spec`` on warm instances, then new ones."""
        resources = Resources.from_wire(dict(spec.resources))
        if resources.logical_cpu is None:
            # What selection plans per worker; the registry must book the same.
            resources = dataclasses.replace(resources, logical_cpu=DEFAULT_TASK_CPU)
        offers = self.catalog.offers()
        remaining = workers
        where = f"EC2 {self.region}"
        for _ in range(5):
            plan: Plan = select(resources, remaining, offers, self._warm(), where=where)
            lost = 0
            for allocation in plan.warm:
                instance_id = allocation.instance.instance_id
                if self.registry.try_allocate(
                    instance_id, spec.job_id, allocation.workers, resources
                ):
                    self._serve(instance_id, spec.job_id, allocation.workers)
                else:
                    lost += allocation.workers  # another caller took it first: plan again
            if lost == 0:
                self._launch(spec, resources, plan, network)
                return
            remaining = lost + sum(launch.workers for launch in plan.launches)
        self._launch(spec, resources, select(resources, remaining, offers, where=where), network)

    def _launch(
        self,
        spec: JobSpec,
        resources: Resources,
        plan: Plan,
        network: tuple[str | None, list[str]],
    ) -> None:
        if not plan.launches:
            return
        ec2 = self._client("ec2")
        settings = LaunchSettings(
            ami_id=self.ami_id or default_ami(self._client("ssm")),
            user_data=self._user_data(),
            subnet_id=network[0],
            security_group_ids=network[1],
            instance_profile=self.iam_role_instance_profile or names.INSTANCE_PROFILE_NAME,
            job_id=spec.job_id,
        )
        failures: list[str] = []
        index = 0
        while index < len(plan.launches):
            choice = plan.launches[index]
            offer = choice.offer
            request = LaunchRequest(offer.instance_type, offer.spot, choice.count)
            try:
                launched = launch(ec2, request, settings)
            except Exception as exc:
                if not is_capacity_error(exc):
                    raise
                failures.append(f"{offer.describe()}: {exc}")
                log.warning(
                    "could not launch %s, trying the next choice: %s", offer.instance_type, exc
                )
                try:
                    # The replacements are appended; carry on at the same index.
                    plan = plan.without(offer.instance_type, spot=offer.spot)
                except NoCapacityError as none_left:
                    raise LaunchError(f"{none_left} ({'; '.join(failures)})") from exc
                continue
            unplaced = choice.workers
            for instance in launched:
                workers = min(choice.workers_per_instance, unplaced)
                unplaced -= workers
                self.registry.register(
                    InstanceRecord.launched(instance.instance_id, offer, instance.zone or "")
                )
                self.queues.create(transport.control_queue_name(instance.instance_id))
                if workers and self.registry.try_allocate(
                    instance.instance_id, spec.job_id, workers, resources
                ):
                    self._serve(instance.instance_id, spec.job_id, workers)
            index += 1

    def _user_data(self) -> str:
        """The boot script, renewed every ``KNOWN_PRESENT_SECONDS``: the bundle is
        checked to be in the bucket again (a pruned one is uploaded again) and the
        presigned URL, valid for a week, never runs out in a long-lived caller."""
        made = self._state.get("user_data_made", -KNOWN_PRESENT_SECONDS)
        if time.monotonic() - made >= KNOWN_PRESENT_SECONDS:
            key = bootstrap.publish(self.store)
            url = self.store.presigned_get(key, expires=7 * 24 * 3600 - 60)
            self._state["user_data_made"] = time.monotonic()
            self._state["user_data"] = bootstrap.user_data(
                url,
                {
                    "region": self.region,
                    "bucket": self.store.bucket,
                    "table": names.TABLE_NAME,
                    "idle-timeout": str(self.idle_timeout),
                },
            )
        return str(self._state["user_data"])

    def _serve(self, instance_id: str, job_id: str, workers: int) -> None:
        """Ring the instance's doorbell: it reads its allocations from the registry."""
        self._state.setdefault("served", {}).setdefault(job_id, set()).add(instance_id)
        url = self.queues.url(transport.control_queue_name(instance_id))
        if url is None:
            return  # the instance is ending; its allocation goes stale and is replaced
        with contextlib.suppress(self.queues.sqs.exceptions.QueueDoesNotExist):
            self.queues.send(
                url, [transport.encode({"op": "serve", "job_id": job_id, "workers": workers})]
            )

    def _supervise(self, spec: JobSpec, remaining: int) -> None:
        """Top up a job whose serving instances died or were interrupted."""
        now = time.time()
        live = 0
        for record in self.registry.list():
            allocation = record.allocations.get(spec.job_id)
            if allocation is None:
                continue
            if self._alive(record, now):
                live += int(allocation["workers"])
            else:
                self.registry.release(record.instance_id, spec.job_id)
                self._retire_if_dead(record, now)
        wanted = min(remaining, spec.num_concurrent_tasks or remaining)
        if live < wanted:
            log.info("job %s has %d live workers of %d; allocating more", spec.job_id, live, wanted)
            self._allocate(spec, wanted - live, self._check_network())

    def _retire_if_dead(self, record: InstanceRecord, now: float) -> None:
        """An instance silent for long (killed, failed to boot, agent crashed) is marked
        terminating, so nobody allocates to it, and terminated; it is Meadow's (tagged)."""
        if now - record.last_heartbeat < DEAD_SECONDS or record.state != "running":
            return
        log.warning(
            "instance %s has been silent for %.0fs; terminating it",
            record.instance_id,
            now - record.last_heartbeat,
        )
        if self.registry.mark_terminating(record.instance_id):
            self._client("ec2").terminate_instances(InstanceIds=[record.instance_id])

    # -- watching ------------------------------------------------------------------------

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
                    # Every result is delivered; instances release themselves once the
                    # queues are gone, and `meadow aws clean` removes what is left.
                    log.warning("could not clean up after job %s", job_id, exc_info=True)

    async def _result_queue(self, job_watch: JobWatch, new: bool) -> str | None:
        """The job's result queue, or None when there is none to follow: the job is
        unknown (``on_unknown``) or over (its stored outcomes are replayed, then
        ``on_done``). A job this process just created appears in its own cache the
        moment ``submit`` creates the queue (no request, no polling delay)."""
        name = transport.result_queue_name(job_watch.job_id)
        last_lookup = time.monotonic()
        url = self.queues.cached_url(name) or await asyncio.to_thread(self.queues.url, name)
        while url is None:
            await asyncio.sleep(0.005 if new else 0.2)
            url = self.queues.cached_url(name)
            if url is None and time.monotonic() - last_lookup > 0.5:
                last_lookup = time.monotonic()
                record = await self.get_job(job_watch.job_id)
                if record is None and not new:
                    job_watch.on_unknown()
                    return None
                if record is not None and record.state in protocol.TERMINAL_JOB_STATES:
                    for outcome in await self.results(job_watch.job_id):
                        job_watch.on_result(outcome)
                    job_watch.on_done(record.state)
                    return None
                url = await asyncio.to_thread(self.queues.url, name)
        return url

    async def _replay(self, job_watch: JobWatch) -> None:
        """Feed the outcomes stored in S3 (the watch hands each task over once): for a
        reattaching caller, and as the safety net if a result message was lost (another
        watcher took it, or it was too large for SQS)."""

        def missing() -> list[TaskOutcome]:
            outcomes = []
            for key in self.store.list_keys(transport.results_prefix(job_watch.job_id)):
                task_id = int(key.rsplit("/", 1)[-1].split(".", 1)[0])
                if task_id not in job_watch.final:  # read only what is not delivered
                    outcomes.append(TaskOutcome.from_wire(protocol.unpack(self.store.get(key))))
            return outcomes

        for outcome in await asyncio.to_thread(missing):
            job_watch.on_result(outcome)

    async def _follow(self, job_watch: JobWatch, new: bool) -> None:
        job_id = job_watch.job_id
        try:
            url = await self._result_queue(job_watch, new)
            if url is None:
                return
            if job_id not in self._state.setdefault("created", set()):
                await self._replay(job_watch)  # reattached: earlier outcomes are in S3
            spec: JobSpec | None = None
            checked = time.monotonic()
            while not job_watch.all_delivered:
                try:
                    messages = await asyncio.to_thread(self.queues.receive, url, 2)
                except self.queues.sqs.exceptions.QueueDoesNotExist:
                    # Someone finished or cancelled the job: what is stored is all.
                    await self._replay(job_watch)
                    record = await self.get_job(job_id)
                    job_watch.on_done(record.state if record else protocol.JOB_CANCELLED)
                    return
                for message in messages:
                    body = transport.decode(message["Body"])
                    if body.get("op") == "log":
                        job_watch.on_log(body["task_id"], body["attempt"], body["lines"])
                    else:
                        job_watch.on_result(TaskOutcome.from_wire(body))
                if messages:
                    receipts = [m["ReceiptHandle"] for m in messages]
                    await asyncio.to_thread(self.queues.delete_messages, url, receipts)
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
        fields: dict[str, Any] = {"state": state, "finished": time.time()}
        if job_watch is not None:
            fields = transport.finished_fields(job_watch.final)
        served: set[str] | None = self._state.get("served", {}).pop(job_id, None)
        holders = (
            served
            if served is not None
            else {r.instance_id for r in self.registry.list() if job_id in r.allocations}
        )
        with concurrent.futures.ThreadPoolExecutor(4 + len(holders)) as pool:
            jobs: list[concurrent.futures.Future[Any]] = [
                pool.submit(self.registry.update_job, job_id, fields),
                pool.submit(self.queues.delete_queue, transport.job_queue_name(job_id)),
                pool.submit(self.queues.delete_queue, transport.result_queue_name(job_id)),
                *(pool.submit(self.registry.release, i, job_id) for i in holders),
            ]
            for job in jobs:
                job.result()

    # -- Host: the rest --------------------------------------------------------------------

    async def cancel(self, job_id: str) -> bool:
        def cancel() -> bool:
            record = self.registry.get_job(job_id)
            if record is None:
                return False
            if record.state in protocol.TERMINAL_JOB_STATES:
                return True  # already over: nothing to stop, its state stays
            self.registry.request_cancel(job_id)
            try:
                for instance in self.registry.list():
                    if job_id not in instance.allocations:
                        continue
                    url = self.queues.url(transport.control_queue_name(instance.instance_id))
                    if url is None:
                        continue
                    body = transport.encode({"op": "cancel", "job_id": job_id})
                    with contextlib.suppress(self.queues.sqs.exceptions.QueueDoesNotExist):
                        self.queues.send(url, [body])
            finally:
                self._finish(job_id, protocol.JOB_CANCELLED)
            return True

        return await asyncio.to_thread(cancel)

    async def get_spec(self, job_id: str) -> JobSpec | None:
        def read() -> JobSpec | None:
            try:
                raw = self.store.get(transport.spec_key(job_id))
            except KeyError:
                return None
            return JobSpec.from_wire(protocol.unpack(raw))

        return await asyncio.to_thread(read)

    async def get_job(self, job_id: str) -> JobRecord | None:
        return await asyncio.to_thread(self.registry.get_job, job_id)

    async def list_jobs(self, limit: int = 50) -> list[JobRecord]:
        return await asyncio.to_thread(self.registry.list_jobs, limit)

    async def results(self, job_id: str) -> list[TaskOutcome]:
        outcomes = await asyncio.to_thread(transport.final_outcomes, self.store, job_id)
        return [outcomes[task_id] for task_id in sorted(outcomes)]

    async def read_object(self, key: str) -> bytes:
        return await asyncio.to_thread(self.store.get, key)

    async def write_object(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self.store.put, key, data)

    def object_location(self, key: str) -> str:
        return self.store.location(key)
