"""What the EC2 flow's tasks run: plain functions without Prefect imports, so an
instance needs only this module, ``meadow_prefect`` and a small environment."""

from __future__ import annotations

from meadow_core.clouds.aws import metadata


def instance_id() -> str:
    return metadata.instance_id() or "not on an instance"


def square_where(x: int) -> tuple[int, str]:
    print(f"squaring {x} on an instance")
    return x * x, instance_id()
