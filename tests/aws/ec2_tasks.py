"""Functions the EC2 tests run on simulated instances (shipped as a code snapshot)."""

from __future__ import annotations

import time
from pathlib import Path

from meadow_core.clouds.aws import metadata


def instance_id() -> str:
    """The id of the instance this runs on."""
    found = metadata.instance_id()
    assert found is not None, "not on an instance"
    return found


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


def square_when_released(item: tuple[int, str]) -> tuple[int, str]:
    """``item`` is ``(x, gate)``: waits until the file ``gate`` exists (the test creates
    it when it has seen what it needs), then returns x squared and where it ran."""
    x, gate = item
    print(f"squaring {x}")
    deadline = time.monotonic() + 600  # a bound, so a broken test cannot hang a VM forever
    while not Path(gate).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return x * x, instance_id()
