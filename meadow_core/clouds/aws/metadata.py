"""The instance metadata service (IMDSv2), as seen from inside an EC2 instance.

The instance agent reads its id and spot notices here; a task may ask which instance
it runs on (`instance_id`). Plain urllib, no boto3, so it works in any task's
environment. ``MEADOW_IMDS_URL`` points it elsewhere (the dev cloud serves the same
paths at the same address inside each simulated VM).
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request

IMDS = os.environ.get("MEADOW_IMDS_URL", "http://169.254.169.254")
#: Set by the instance agent for its tasks: the instance's id, known without asking.
INSTANCE_ID_VARIABLE = "MEADOW_INSTANCE_ID"
#: The longest life IMDSv2 gives a token.
TOKEN_TTL_SECONDS = 21600


def token(ttl_seconds: int = TOKEN_TTL_SECONDS, timeout: float = 2.0) -> str:
    """A session token for the other requests (IMDSv2)."""
    request = urllib.request.Request(
        f"{IMDS}/latest/api/token",
        method="PUT",
        headers={"X-aws-ec2-metadata-token-ttl-seconds": str(ttl_seconds)},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return str(response.read().decode())


def get(path: str, session_token: str | None = None, timeout: float = 2.0) -> str | None:
    """GET ``latest/<path>``; None on 404 (no such item, e.g. no spot notice yet)."""
    headers = {"X-aws-ec2-metadata-token": session_token} if session_token else {}
    request = urllib.request.Request(f"{IMDS}/latest/{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return str(response.read().decode())
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def instance_id() -> str | None:
    """The id of the EC2 instance this code runs on, or None off EC2."""
    known = os.environ.get(INSTANCE_ID_VARIABLE)
    if known:
        return known
    try:
        return get("meta-data/instance-id", token(ttl_seconds=60, timeout=1.0), timeout=1.0)
    except OSError:  # no metadata service answers here
        return None
