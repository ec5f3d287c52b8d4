"""Credentials from an Airflow connection, handed to the host's own hook, for one task
or one trigger.

Airflow users keep credentials in connections, not in the worker's environment. The
operator names a connection; if the host takes credentials (``Host.takes_credentials``)
the connection is turned into what the host's ``credentials`` hook accepts, by the
provider that owns its connection type, and the block runs under it. The host applies
it to this task only (a context variable for EC2), so other tasks in the same worker or
triggerer keep their own. Nothing secret is put into trigger kwargs or XCom: the
trigger gets the connection id and reads the connection itself.

The table below is the only place that knows a connection type. ``aws``: the Amazon
provider's ``AwsBaseHook`` builds the ``boto3.Session`` (assumed roles, profiles and
the rest of what the provider supports); without that provider, a small fallback reads
an access key, session token, profile, region and endpoint from the connection and
refuses what it cannot do.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from airflow.sdk import BaseHook

from meadow_core import Host


class ConnectionCredentialsError(ValueError):
    """The connection cannot be turned into credentials for the host."""


def _aws(conn_id: str, conn: Any) -> object:
    """A ``boto3.Session`` from the Amazon provider's hook, with the connection's
    endpoint and region; the fallback's mapping without the provider."""
    try:
        from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
    except ImportError:
        return _aws_fallback(conn)
    hook = AwsBaseHook(aws_conn_id=conn_id, client_type=None)
    config = hook.conn_config  # the provider's reading of the connection (no client made)
    return {
        "session": hook.get_session(),
        "endpoint_url": config.endpoint_url,
        "region_name": config.region_name,
    }


#: Connection extras the fallback cannot honour: refused rather than silently ignored.
_NEEDS_THE_PROVIDER = {
    "role_arn": "assuming a role",
    "assume_role_method": "assuming a role",
    "aws_iam_role": "assuming a role",
}


def _aws_fallback(conn: Any) -> object:
    extra: dict[str, Any] = dict(conn.extra_dejson)
    for key, what in _NEEDS_THE_PROVIDER.items():
        if extra.get(key):
            raise ConnectionCredentialsError(
                f"asks for {what} ({key}); without apache-airflow-providers-amazon Meadow "
                "does not do that: install the provider (its AwsBaseHook then builds the "
                "session), or give the connection an access key (login/password) or a "
                "profile_name in its extra"
            )
    return {
        "access_key_id": conn.login or None,
        "secret_access_key": conn.password or None,
        "session_token": extra.get("aws_session_token") or None,
        "region_name": extra.get("region_name") or None,
        "endpoint_url": extra.get("endpoint_url") or None,
        "profile_name": extra.get("profile_name") or None,
    }


#: Airflow connection type -> what turns such a connection into credentials.
CONNECTION_TYPES: dict[str, Callable[[str, Any], object]] = {"aws": _aws}


def credentials_from(conn_id: str, conn: Any) -> object:
    """What the host's ``credentials`` hook takes, from connection ``conn_id``."""
    conn_type = conn.conn_type or ""
    make = CONNECTION_TYPES.get(conn_type)
    if make is None:
        raise ConnectionCredentialsError(
            f"is a {conn_type or 'typeless'!r} connection; Meadow takes credentials from "
            f"connection types {', '.join(sorted(CONNECTION_TYPES))}"
        )
    return make(conn_id, conn)


def _applies(host: Host, conn_id: str | None) -> bool:
    return conn_id is not None and host.takes_credentials


@contextlib.contextmanager
def connection_scope(host: Host, conn_id: str | None) -> Iterator[None]:
    """Run the block as connection ``conn_id`` (a no-op without one, or for a host that
    takes no credentials)."""
    if not _applies(host, conn_id):
        yield
        return
    assert conn_id is not None
    credentials = credentials_from(conn_id, BaseHook.get_connection(conn_id))
    with host.credentials(credentials):
        yield


async def credentials_async(host: Host, conn_id: str | None) -> object | None:
    """The same credentials for a trigger: the connection is read without blocking and
    the provider's session (which may call STS) is built in a thread."""
    if not _applies(host, conn_id):
        return None
    assert conn_id is not None
    conn = await BaseHook.aget_connection(conn_id)
    return await asyncio.to_thread(credentials_from, conn_id, conn)
