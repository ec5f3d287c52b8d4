"""What the EC2 flow's tasks run: plain functions without Prefect imports, so an
instance needs only this module, ``meadow_prefect`` and a small environment."""

from __future__ import annotations

import urllib.request


def instance_id() -> str:
    """The id of the instance this runs on, from its metadata endpoint (IMDSv2)."""
    token = urllib.request.urlopen(
        urllib.request.Request(
            "http://169.254.169.254/latest/api/token",
            method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"},
        ),
        timeout=2,
    ).read()
    found = urllib.request.urlopen(
        urllib.request.Request(
            "http://169.254.169.254/latest/meta-data/instance-id",
            headers={"X-aws-ec2-metadata-token": token.decode()},
        ),
        timeout=2,
    ).read()
    return found.decode()


def square_where(x: int) -> tuple[int, str]:
    print(f"squaring {x} on an instance")
    return x * x, instance_id()
