"""Smoke test for the Airflow integration, run in its own venv (.venvs/airflow).

Checks that Airflow 3.x imports, that the meadow_airflow adapter imports, and
that the Meadow core runs a function beside Airflow in the same environment.
"""

from pathlib import Path

import airflow.sdk


def _square(x: int) -> int:
    # Module level on purpose: the plain top-level function the core must run.
    return x * x


def test_airflow_major_version() -> None:
    major = int(airflow.__version__.split(".")[0])
    assert major == 3, f"expected Airflow 3.x, got {airflow.__version__}"


def test_adapter_imports() -> None:
    import meadow_airflow

    assert meadow_airflow.__name__ == "meadow_airflow"


def test_core_runs_beside_airflow(tmp_path: Path) -> None:
    # Imported here rather than at module level so that a broken core fails this
    # test alone instead of turning the whole file into a collection error.
    from meadow_core import LocalHost, run_function_sync

    host = LocalHost(home=tmp_path / "meadow", idle_timeout=5)
    try:
        assert run_function_sync(_square, host, args=(7,)) == 49
    finally:
        host.shutdown()
