"""``AllocEC2Instance``: run jobs on EC2 instances Meadow chooses, launches and reuses.

The EC2 settings and wiring of the fleet layer's ``AllocVM``: an S3 store, SQS work
queues, a DynamoDB registry and job table, ``Ec2Compute`` and the EC2 price catalog.
Everything a submission, a watch or an allocation does is generic (``remote.caller``,
``fleet.vmhost``); what is here checks AWS settings before anything is launched
(credentials, region, network) and builds the drivers once per process and account.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from meadow_core.allocation.selection import Offer, check_satisfiable
from meadow_core.clouds.aws import boot_fetch, names, session
from meadow_core.clouds.aws.catalog import Ec2Catalog
from meadow_core.clouds.aws.compute import Ec2Compute
from meadow_core.clouds.aws.queue import SqsWorkQueue
from meadow_core.clouds.aws.registry import DynamoRegistry
from meadow_core.clouds.aws.store import S3ObjectStore
from meadow_core.fleet import bootstrap
from meadow_core.fleet.vmhost import AllocVM
from meadow_core.hosts.base import check_positive_seconds
from meadow_core.protocol import Environment
from meadow_core.remote.caller import KNOWN_PRESENT_SECONDS, CallerCache, RemotePlace
from meadow_core.resources import Resources

log = logging.getLogger("meadow.aws")


@dataclasses.dataclass
class _Ec2State:
    """Clients, catalog and caches of one host configuration in one AWS environment."""

    region: str | None = None
    registry: DynamoRegistry | None = None
    place: RemotePlace | None = None
    cache: CallerCache = dataclasses.field(default_factory=CallerCache)
    catalog: Ec2Catalog | None = None
    network: tuple[float, tuple[str | None, list[str]]] | None = None
    boot_script: tuple[float, str] | None = None


_SHARED: dict[tuple[Any, ...], _Ec2State] = {}
_SHARED_LOCK = threading.Lock()


@dataclasses.dataclass
class AllocEC2Instance(AllocVM):
    """Run on the cheapest EC2 instance that fits, launched for the job or reused warm.

    ``region_name`` defaults to boto3's default region; ``ami_id`` to the current
    Amazon Linux 2023 image; ``subnet_id`` and ``security_group_ids`` to the default
    VPC and the security group ``meadow aws install`` created; ``iam_role_instance_profile``
    to the instance profile it created. ``idle_timeout`` is how long an instance waits
    without work before it terminates itself.
    """

    region_name: str | None = dataclasses.field(
        default=None,
        metadata={"description": "AWS region (default: boto3's, e.g. AWS_DEFAULT_REGION)."},
    )
    ami_id: str | None = None
    subnet_id: str | None = None
    security_group_ids: str | Sequence[str] | None = None
    iam_role_instance_profile: str | None = None
    idle_timeout: float = dataclasses.field(
        default=300.0,
        metadata={"description": "Seconds an instance waits without work before it ends."},
    )

    takes_credentials = True

    def credentials(self, credentials: object) -> contextlib.AbstractContextManager[None]:
        """Run the block as ``credentials`` (``session.as_credentials`` says what it
        takes: a ``boto3.Session``, a mapping of ``AwsCredentials`` fields); ``None``
        leaves boto3's chain in charge."""
        return session.using(session.as_credentials(credentials))

    def __post_init__(self) -> None:
        check_positive_seconds("idle_timeout", self.idle_timeout)

    @property
    def _state(self) -> _Ec2State:
        """Shared by every equal host in this process (orchestrators create or unpickle
        a host per task; the catalog alone takes ~150 ms to load) and keyed by the AWS
        environment, so a switch of endpoint or profile never reuses another account's
        answers."""
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
                state = session.remember(_SHARED, key, _Ec2State())
            return state

    # -- the parts the generic layers ask for (made when first needed) --------------------

    @property
    def region(self) -> str:
        state = self._state
        if state.region is None:
            region = self.region_name or session.default_region()
            if not region:
                raise session.AwsConfigurationError(
                    "no AWS region: pass AllocEC2Instance(region_name=...) or set "
                    "AWS_DEFAULT_REGION"
                )
            state.region = region
        return state.region

    @property
    def registry(self) -> DynamoRegistry:
        state = self._state
        if state.registry is None:
            state.registry = DynamoRegistry(self._client("dynamodb"), names.TABLE_NAME)
        return state.registry

    @property
    def place(self) -> RemotePlace:
        state = self._state
        if state.place is None:
            bucket = names.bucket_name(session.account_id(), self.region)
            state.place = RemotePlace(
                name=bucket,
                store=S3ObjectStore(bucket, self._client("s3")),
                queue=SqsWorkQueue(self._client("sqs")),
                jobs=self.registry,
            )
        return state.place

    @property
    def cache(self) -> CallerCache:
        return self._state.cache

    @property
    def store(self) -> S3ObjectStore:
        store = self.place.store
        assert isinstance(store, S3ObjectStore)
        return store

    @property
    def catalog(self) -> Ec2Catalog:
        state = self._state
        if state.catalog is None:
            state.catalog = Ec2Catalog(self.region)
        return state.catalog

    def _offers(self) -> Sequence[Offer]:
        return self.catalog.offers()

    def _where(self) -> str:
        return f"EC2 {self.region}"

    def _client(self, service: str) -> Any:
        return session.client(service, self.region)

    def _compute(self) -> Ec2Compute:
        subnet, groups = self._check_network()
        return Ec2Compute(
            ec2=self._client("ec2"),
            ssm=self._client("ssm"),
            ami_id=self.ami_id,
            subnet_id=subnet,
            security_group_ids=groups,
            instance_profile=self.iam_role_instance_profile or names.INSTANCE_PROFILE_NAME,
        )

    def _extra_refs(self) -> list[str]:
        return [bootstrap.bundle_key(names.AGENT_EXTRAS)]

    def _before_submit(self) -> None:
        self._check_network()

    def _boot_script(self) -> str:
        """Renewed every ``KNOWN_PRESENT_SECONDS``: the bundle is checked to be in the
        bucket again (a pruned one is uploaded again). The instance fetches it with its
        own role's credentials, so user data (which anyone who may describe the
        instance's attributes can read back) holds no credential of the caller's."""
        state = self._state
        if state.boot_script is None or time.monotonic() - state.boot_script[0] >= (
            KNOWN_PRESENT_SECONDS
        ):
            bundle = bootstrap.publish(self.store, names.AGENT_EXTRAS)
            script = bootstrap.boot_script(
                boot_fetch.snippet(self.store.bucket, bundle.key, self.region),
                bundle.sha256,
                names.AGENT_MODULE,
                {
                    "region": self.region,
                    "bucket": self.store.bucket,
                    "table": names.TABLE_NAME,
                    "idle-timeout": str(self.idle_timeout),
                },
            )
            state.boot_script = (time.monotonic(), script)
        return state.boot_script[1]

    # -- Host: validation ---------------------------------------------------------------

    def check_resources(self, resources: Resources) -> None:
        session.check_credentials()
        session.check_region(self.region)
        check_satisfiable(resources, self.catalog.offers(), where=self._where())

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
        state = self._state
        if state.network is not None and time.monotonic() - state.network[0] < (
            KNOWN_PRESENT_SECONDS
        ):
            return state.network[1]
        network = self._resolve_network()
        state.network = (time.monotonic(), network)
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
        found = self._client("ec2").describe_security_groups(
            Filters=[{"Name": "group-name", "Values": [names.SECURITY_GROUP_NAME]}]
        )["SecurityGroups"]
        if not found:
            raise session.AwsConfigurationError(
                f"Meadow is not installed in {self.region}: run `meadow aws install --region "
                f"{self.region}`, or pass security_group_ids"
            )
        return str(found[0]["GroupId"])
