"""Smoke test for the Dagster integration, run in its own venv (.venvs/dagster).

Checks that Dagster 1.x imports, that the meadow_dagster adapter imports, and
that the Meadow core runs a function beside Dagster in the same environment.
"""

from pathlib import Path

import dagster


def _square(x: int) -> int:
    # Module level on purpose: the plain top-level function the core must run.
    return x * x


def test_dagster_major_version() -> None:
    major = int(dagster.__version__.split(".")[0])
    assert major == 1, f"expected Dagster 1.x, got {dagster.__version__}"


def test_adapter_imports() -> None:
    import meadow_dagster

    assert meadow_dagster.__name__ == "meadow_dagster"


def test_core_runs_beside_dagster(tmp_path: Path) -> None:
    # Imported here rather than at module level so that a broken core fails this
    # test alone instead of turning the whole file into a collection error.
    from meadow_core import LocalHost, run_function_sync

    host = LocalHost(home=tmp_path / "meadow", idle_timeout=5)
    try:
        assert run_function_sync(_square, host, args=(7,)) == 49
    finally:
        host.shutdown()
