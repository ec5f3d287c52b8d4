"""AWS credentials from an Airflow connection, scoped to one task or one trigger.

Airflow users keep credentials in connections, not in the worker's environment. An
``aws_conn_id`` is read the way the Amazon provider reads it (login: access key id,
password: secret access key; extra: ``region_name``, ``endpoint_url``,
``aws_session_token``, ``profile_name``) and applied with
``meadow_core.clouds.aws.session.using``, a context variable: other tasks in the same worker
process or triggerer keep their own credentials. Fields the connection leaves out fall
back to boto3's chain. Nothing secret is ever put into trigger kwargs or XCom: the
trigger gets the connection id and reads the connection itself.

``meadow_core.clouds.aws`` (and so boto3) is imported only when the host is an AWS host.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

from airflow.sdk import BaseHook

from meadow_core import Host

#: Connection extras that ask for what Meadow does not do: refused with a message
#: rather than silently ignored.
_UNSUPPORTED = {
    "role_arn": "assuming a role",
    "assume_role_method": "assuming a role",
    "aws_iam_role": "assuming a role",
}


class AwsConnectionError(ValueError):
    """The connection cannot be turned into credentials Meadow can use."""


def is_aws_host(host: Host) -> bool:
    module = sys.modules.get("meadow_core.clouds.aws.host")  # imported if such a host exists
    return module is not None and isinstance(host, module.AllocEC2Instance)


def credentials_from(conn: Any, conn_id: str | None, region_name: str | None) -> Any:
    """``AwsCredentials`` from a connection (``None``: region only) and a region."""
    from meadow_core.clouds.aws.session import AwsCredentials

    extra: dict[str, Any] = dict(conn.extra_dejson) if conn is not None else {}
    for key, what in _UNSUPPORTED.items():
        if extra.get(key):
            raise AwsConnectionError(
                f"aws_conn_id={conn_id!r} asks for {what} ({key}); Meadow does not do that "
                "yet: give the connection an access key (login/password) or a "
                "profile_name in its extra"
            )
    return AwsCredentials(
        access_key_id=(conn.login or None) if conn is not None else None,
        secret_access_key=(conn.password or None) if conn is not None else None,
        session_token=extra.get("aws_session_token") or None,
        region_name=region_name or extra.get("region_name") or None,
        endpoint_url=extra.get("endpoint_url") or None,
        profile_name=extra.get("profile_name") or None,
    )


def _applies(host: Host, conn_id: str | None, region_name: str | None) -> bool:
    return is_aws_host(host) and (conn_id is not None or region_name is not None)


@contextlib.contextmanager
def aws_scope(host: Host, conn_id: str | None, region_name: str | None) -> Iterator[None]:
    """Run the block as the connection (a no-op for other hosts or without settings)."""
    if not _applies(host, conn_id, region_name):
        yield
        return
    from meadow_core.clouds.aws import session

    conn = BaseHook.get_connection(conn_id) if conn_id is not None else None
    with session.using(credentials_from(conn, conn_id, region_name)):
        yield


async def aws_credentials_async(
    host: Host, conn_id: str | None, region_name: str | None
) -> Any | None:
    """The same credentials for a trigger (the connection is read without blocking)."""
    if not _applies(host, conn_id, region_name):
        return None
    conn = await BaseHook.aget_connection(conn_id) if conn_id is not None else None
    return credentials_from(conn, conn_id, region_name)


def using(credentials: Any | None) -> contextlib.AbstractContextManager[None]:
    """``session.using(credentials)``, or nothing for ``None`` (boto3 is not imported)."""
    if credentials is None:
        return contextlib.nullcontext()
    from meadow_core.clouds.aws import session

    return session.using(credentials)
