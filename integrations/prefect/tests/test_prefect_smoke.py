"""Smoke test for the Prefect integration, run in its own venv (.venvs/prefect).

Checks that Prefect 3.x imports, that the meadow_prefect adapter imports, and
that the Meadow core runs a function beside Prefect in the same environment.
"""

from pathlib import Path

import prefect


def _square(x: int) -> int:
    # Module level on purpose: the plain top-level function the core must run.
    return x * x


def test_prefect_major_version() -> None:
    major = int(prefect.__version__.split(".")[0])
    assert major == 3, f"expected Prefect 3.x, got {prefect.__version__}"


def test_adapter_imports() -> None:
    import meadow_prefect

    assert meadow_prefect.__name__ == "meadow_prefect"


def test_core_runs_beside_prefect(tmp_path: Path) -> None:
    # Imported here rather than at module level so that a broken core fails this
    # test alone instead of turning the whole file into a collection error.
    from meadow_core import LocalHost, run_function_sync

    host = LocalHost(home=tmp_path / "meadow", idle_timeout=5)
    try:
        assert run_function_sync(_square, host, args=(7,)) == 49
    finally:
        host.shutdown()
