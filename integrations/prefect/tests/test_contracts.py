"""Contracts Prefect's own task runners keep (ThreadPoolTaskRunner, ProcessPoolTaskRunner
and prefect-dask, as Prefect's ``tests/test_task_runners.py`` checks them), against
MeadowTaskRunner: issue 17's Prefect items.
"""

from __future__ import annotations

from pathlib import Path

from meadow_prefect import MeadowTaskRunner

from meadow_core import LocalHost


def test_runners_with_equal_settings_are_equal(tmp_path: Path) -> None:
    home = tmp_path / "home"
    runner = MeadowTaskRunner(host=LocalHost(home=home), max_workers=4)
    assert runner == MeadowTaskRunner(host=LocalHost(home=home), max_workers=4)
    assert runner.duplicate() == runner
    assert runner != MeadowTaskRunner(host=LocalHost(home=home), max_workers=2)
    assert runner != MeadowTaskRunner(host=LocalHost(home=tmp_path / "other"), max_workers=4)
    assert runner != MeadowTaskRunner(host=LocalHost(home=home), max_workers=4, timeout_seconds=5)
    assert runner != "not a runner"
