"""boto3 clients from the standard chain, and the checks that run before anything launches.

Credentials, region and endpoint (including ``AWS_ENDPOINT_URL``, which is how the dev
cloud is reached) come from boto3's normal chain, unless a block of code runs under
``using(AwsCredentials(...))``: an orchestrator's stored connection (an Airflow
``aws_conn_id``), scoped to one task by a context variable, so two tasks in one process
(or one triggerer) never see each other's credentials. Clients are cached per (service,
region) and per the configuration that chose them, so a test or a user who switches
profile, endpoint or connection never talks through a stale client.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import difflib
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import boto3
import botocore.exceptions

from meadow_core.errors import InvalidRequestError


class AwsConfigurationError(InvalidRequestError):
    """The AWS account, credentials, region or network settings cannot work as given."""


class MissingCredentialsError(AwsConfigurationError):
    """boto3's credential chain found nothing."""


class UnknownRegionError(AwsConfigurationError):
    """The region does not exist or is not enabled for the account."""


class NetworkConfigurationError(AwsConfigurationError):
    """The subnet or security groups do not exist or are not in one VPC."""


#: Environment variables that change who boto3 is and where it talks to.
_ENV_KEYS = (
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
)
_CREDENTIALS_HELP = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN for temporary "
    "credentials), or AWS_PROFILE naming a profile in ~/.aws/credentials or ~/.aws/config "
    "(`aws configure` or `aws sso login` writes one), or run on an instance with an "
    "instance profile"
)
_BAD_CREDENTIAL_CODES = {
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "ExpiredTokenException",
    "UnrecognizedClientException",
    "AuthFailure",
}


@dataclasses.dataclass(frozen=True)
class AwsCredentials:
    """Who to be and where to talk to, given explicitly instead of by boto3's chain.

    Fields left ``None`` fall back to the chain (a profile, ``AWS_ENDPOINT_URL``, ...).
    ``session`` is a ``boto3.Session`` made elsewhere (Airflow's ``AwsBaseHook`` makes
    one from a connection, assumed roles included, with credentials that refresh):
    clients are made from it, and the key fields are then not used.
    """

    access_key_id: str | None = None
    secret_access_key: str | None = dataclasses.field(default=None, repr=False)
    session_token: str | None = dataclasses.field(default=None, repr=False)
    region_name: str | None = None
    endpoint_url: str | None = None
    profile_name: str | None = None
    session: Any = dataclasses.field(default=None, repr=False)


def as_credentials(value: object) -> AwsCredentials | None:
    """``AwsCredentials`` from what an orchestrator hands ``AllocEC2Instance.credentials``:
    ``None``, an ``AwsCredentials``, a ``boto3.Session``, an object that makes one
    (``get_boto3_session()``, as Prefect's credentials blocks do), or a mapping of
    ``AwsCredentials`` field names (a ``session`` among them, plus its ``endpoint_url``)."""
    if value is None or isinstance(value, AwsCredentials):
        return value
    if isinstance(value, boto3.session.Session):
        return AwsCredentials(session=value, region_name=value.region_name)
    get_session = getattr(value, "get_boto3_session", None)
    if callable(get_session):  # a credentials block (Prefect's AwsCredentials, say)
        made = as_credentials(get_session())
        parameters = getattr(value, "aws_client_parameters", None)
        endpoint = getattr(parameters, "endpoint_url", None)
        if made is not None and endpoint:
            made = dataclasses.replace(made, endpoint_url=str(endpoint))
        return made
    if isinstance(value, Mapping):
        valid = [f.name for f in dataclasses.fields(AwsCredentials)]
        unknown = sorted(set(value) - set(valid))
        if unknown:
            raise AwsConfigurationError(
                f"unknown AWS credential field(s) {', '.join(map(repr, unknown))}: valid "
                f"fields are {', '.join(valid)}"
            )
        return AwsCredentials(**{k: v for k, v in value.items() if v is not None})
    raise AwsConfigurationError(
        f"AWS credentials must be a boto3.Session, a mapping of {AwsCredentials.__name__} "
        f"fields or None, got {type(value).__name__}"
    )


_explicit: contextvars.ContextVar[AwsCredentials | None] = contextvars.ContextVar(
    "meadow_aws_credentials", default=None
)


@contextlib.contextmanager
def using(credentials: AwsCredentials | None) -> Iterator[None]:
    """Run the block (and the coroutines and ``asyncio.to_thread`` calls it starts) as
    ``credentials``; ``None`` leaves boto3's chain in charge."""
    token = _explicit.set(credentials)
    try:
        yield
    finally:
        _explicit.reset(token)


_lock = threading.Lock()
#: Distinct credential sets kept per cache: a long-lived triggerer whose connection's
#: session token rotates hourly would otherwise keep every old session and its clients.
CACHED_IDENTITIES = 16
_sessions: dict[tuple[Any, ...], boto3.session.Session] = {}
_clients: dict[tuple[Any, ...], Any] = {}
_regions: dict[tuple[Any, ...], dict[str, str]] = {}
_accounts: dict[tuple[Any, ...], str] = {}


def remember(cache: dict[Any, Any], key: Any, value: Any, limit: int = CACHED_IDENTITIES) -> Any:
    """``cache[key] = value``, dropping the oldest entries beyond ``limit``; returns value."""
    cache[key] = value
    while len(cache) > limit:
        del cache[next(iter(cache))]
    return value


def _env_key() -> tuple[Any, ...]:
    return (_explicit.get(), *(os.environ.get(name) for name in _ENV_KEYS))


def environment_key() -> tuple[Any, ...]:
    """What decides who boto3 is and where it talks to: caches keyed by it never
    serve one account's (or the dev cloud's) answers to another."""
    return _env_key()


def _session() -> boto3.session.Session:
    # boto3 sessions are not thread-safe to create; clients made from them are safe to share.
    key = _env_key()
    explicit = key[0]
    with _lock:
        session = _sessions.get(key)
        if session is None:
            if explicit is None:
                session = boto3.session.Session()
            elif explicit.session is not None:
                session = explicit.session
            else:
                session = boto3.session.Session(
                    aws_access_key_id=explicit.access_key_id,
                    aws_secret_access_key=explicit.secret_access_key,
                    aws_session_token=explicit.session_token,
                    region_name=explicit.region_name,
                    profile_name=explicit.profile_name,
                )
            remember(_sessions, key, session)
        return session


def reset() -> None:
    """Forget cached sessions, clients, regions and account ids (tests; changed config)."""
    with _lock:
        _sessions.clear()
        _clients.clear()
        _regions.clear()
        _accounts.clear()


def default_region() -> str | None:
    """The region boto3's chain picks when none is given (env var or profile)."""
    explicit = _explicit.get()
    if explicit is not None and explicit.region_name:
        return explicit.region_name
    region: str | None = _session().region_name
    return region


def check_credentials() -> None:
    """Raise `MissingCredentialsError` if the chain finds no credentials; makes no request."""
    try:
        credentials = _session().get_credentials()
    except botocore.exceptions.BotoCoreError as exc:
        raise MissingCredentialsError(
            f"AWS credentials could not be loaded ({exc}): {_CREDENTIALS_HELP}"
        ) from exc
    if credentials is None:
        raise MissingCredentialsError(f"no AWS credentials found: {_CREDENTIALS_HELP}")


def client(service: str, region_name: str | None = None) -> Any:
    """A cached boto3 client for ``service`` in ``region_name`` (default: the chain's).

    Raises `MissingCredentialsError` before any request if there are no credentials.
    """
    session = _session()
    region = region_name or default_region()
    if not region:
        raise AwsConfigurationError(
            "no AWS region given: pass region_name or set AWS_DEFAULT_REGION "
            "(or `region` in your AWS profile)"
        )
    key = (_env_key(), service, region)
    with _lock:
        existing = _clients.get(key)
    if existing is not None:
        return existing
    check_credentials()
    with _lock:
        made = _clients.get(key)
        if made is None:
            explicit = _explicit.get()
            endpoint = explicit.endpoint_url if explicit is not None else None
            made = session.client(service, region_name=region, endpoint_url=endpoint)
            # A few services per region per identity.
            remember(_clients, key, made, limit=CACHED_IDENTITIES * 8)
        return made


def translate_auth_error(exc: botocore.exceptions.ClientError) -> AwsConfigurationError | None:
    """A clear error for rejected credentials, or None if ``exc`` is about something else."""
    code = exc.response.get("Error", {}).get("Code", "")
    if code in _BAD_CREDENTIAL_CODES:
        return MissingCredentialsError(
            f"AWS rejected the credentials ({code}): {_CREDENTIALS_HELP}"
        )
    return None


def account_id() -> str:
    """The account the credentials belong to (one STS call per configuration)."""
    key = _env_key()
    with _lock:
        known = _accounts.get(key)
    if known is not None:
        return known
    try:
        found: str = client("sts").get_caller_identity()["Account"]
    except botocore.exceptions.ClientError as exc:
        raise (translate_auth_error(exc) or exc) from exc
    with _lock:
        remember(_accounts, key, found)
    return found


def available_regions() -> dict[str, str]:
    """Every region EC2 knows, with its opt-in status; asked once per configuration."""
    key = _env_key()
    with _lock:
        known = _regions.get(key)
    if known is not None:
        return known
    probe = default_region() or "us-east-1"
    try:
        answer = client("ec2", probe).describe_regions(AllRegions=True)
    except botocore.exceptions.ClientError as exc:
        raise (translate_auth_error(exc) or exc) from exc
    regions = {
        r["RegionName"]: r.get("OptInStatus", "opt-in-not-required") for r in answer["Regions"]
    }
    with _lock:
        remember(_regions, key, regions)
    return regions


def check_region(region_name: str) -> None:
    """Raise `UnknownRegionError` unless ``region_name`` exists and is enabled."""
    regions = available_regions()
    status = regions.get(region_name)
    if status is None:
        close = difflib.get_close_matches(str(region_name), list(regions), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UnknownRegionError(
            f"unknown AWS region {region_name!r}{hint}: pass one of the regions EC2 lists; "
            "see them with `aws ec2 describe-regions --all-regions --query "
            "'Regions[].RegionName'`"
        )
    if status == "not-opted-in":
        raise UnknownRegionError(
            f"AWS region {region_name!r} is not enabled for this account: enable it in the "
            "AWS console (Account > AWS Regions) or choose another region"
        )


def _not_found(exc: botocore.exceptions.ClientError, *codes: str) -> bool:
    code: str = exc.response.get("Error", {}).get("Code", "")
    return code in codes


def check_network(
    subnet_id: str | None,
    security_group_ids: Sequence[str] | None,
    region_name: str | None = None,
) -> str | None:
    """Check the subnet and security groups exist and share one VPC; return that VPC.

    Without a subnet, instances go to the default VPC, so the groups must be there.
    """
    ec2 = client("ec2", region_name)
    region_name = region_name or default_region()
    vpc_id: str | None = None
    where = ""
    if subnet_id:
        try:
            subnets = ec2.describe_subnets(SubnetIds=[subnet_id])["Subnets"]
        except botocore.exceptions.ClientError as exc:
            if _not_found(
                exc,
                "InvalidSubnetID.NotFound",
                "InvalidSubnetID.Malformed",
                "InvalidSubnetId.Malformed",
            ):
                raise NetworkConfigurationError(
                    f"subnet {subnet_id!r} does not exist in {region_name}: pass a subnet_id "
                    f"from `aws ec2 describe-subnets --region {region_name}` or leave it out "
                    "to use the default VPC"
                ) from exc
            raise (translate_auth_error(exc) or exc) from exc
        vpc_id = subnets[0]["VpcId"]
        where = f"subnet {subnet_id} is in {vpc_id}"
    groups = list(security_group_ids or [])
    if not groups:
        return vpc_id
    if vpc_id is None:
        vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
        if not vpcs:
            raise NetworkConfigurationError(
                f"{region_name} has no default VPC, so security groups {groups} need a "
                "subnet_id from their VPC"
            )
        vpc_id = vpcs[0]["VpcId"]
        where = f"no subnet_id was given, so instances go to the default VPC {vpc_id}"
    try:
        found = ec2.describe_security_groups(GroupIds=groups)["SecurityGroups"]
    except botocore.exceptions.ClientError as exc:
        if _not_found(
            exc, "InvalidGroup.NotFound", "InvalidGroupId.Malformed", "InvalidGroupId.NotFound"
        ):
            raise NetworkConfigurationError(
                f"security group(s) {groups} not found in {region_name}: pass ids from "
                f"`aws ec2 describe-security-groups --region {region_name}`"
            ) from exc
        raise (translate_auth_error(exc) or exc) from exc
    for group in found:
        if group["VpcId"] != vpc_id:
            raise NetworkConfigurationError(
                f"security group {group['GroupId']} is in {group['VpcId']} but {where}: "
                f"pass a security group from {vpc_id} or a subnet_id from {group['VpcId']}"
            )
    return vpc_id
