"""Functions the EC2 tests run on simulated instances (shipped as a code snapshot)."""

from __future__ import annotations

import time
import urllib.request


def instance_id() -> str:
    """The id of the instance this runs on, from its metadata endpoint (IMDSv2)."""
    token_request = urllib.request.Request(
        "http://169.254.169.254/latest/api/token",
        method="PUT",
        headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"},
    )
    with urllib.request.urlopen(token_request, timeout=2) as response:
        token = response.read().decode()
    request = urllib.request.Request(
        "http://169.254.169.254/latest/meta-data/instance-id",
        headers={"X-aws-ec2-metadata-token": token},
    )
    with urllib.request.urlopen(request, timeout=2) as response:
        return str(response.read().decode())


def six_version() -> tuple[str, str]:
    """Proves the environment from the requirements file is the one the task runs in."""
    import six

    return instance_id(), str(six.__version__)


def square_slowly(item: int | tuple[int, float]) -> tuple[int, str]:
    """``item`` is ``x`` or ``(x, seconds)``: returns x squared and where it ran."""
    x, seconds = (item, 0.5) if isinstance(item, int) else item
    print(f"squaring {x}")
    time.sleep(seconds)
    return x * x, instance_id()
