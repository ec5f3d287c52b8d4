"""The package face: what importing meadow_core loads, and what a user's type checker sees."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

import meadow_core
from meadow_core import _runtime

REPO = Path(__file__).resolve().parents[2]

#: The caller's API, and the cloud SDKs, which an agent or a worker never needs.
CALLER_SIDE = {"meadow_core.api", "meadow_core.hosts.local", "meadow_core.deployment"}
CLOUD_SDKS = {"boto3", "botocore"}


def _loaded_by(statement: str) -> set[str]:
    script = f"import sys\n{statement}\nprint(*sorted(sys.modules), sep='\\n')"
    return set(
        subprocess.run(
            [sys.executable, "-c", script], check=True, capture_output=True, text=True
        ).stdout.split()
    )


@pytest.mark.parametrize(
    "module", ["meadow_core.protocol", "meadow_core.agent.worker", "meadow_core.agent.agent"]
)
def test_importing_a_submodule_loads_neither_the_caller_api_nor_a_cloud_sdk(module: str) -> None:
    loaded = _loaded_by(f"import {module}")
    assert module in loaded
    assert not loaded & (CALLER_SIDE | CLOUD_SDKS)


def test_exports_load_on_first_use() -> None:
    loaded = _loaded_by(
        "import meadow_core\n"
        "assert meadow_core.run_function_sync.__module__ == 'meadow_core.api'\n"
        "assert meadow_core.__version__\n"
    )
    assert loaded >= CALLER_SIDE
    assert not loaded & CLOUD_SDKS


def test_every_export_resolves_and_matches_what_type_checkers_see() -> None:
    """``__all__``, the lazy table and the ``TYPE_CHECKING`` imports name the same things."""
    tree = ast.parse((REPO / "meadow_core" / "__init__.py").read_text())
    block = next(
        n for n in tree.body if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n)
    )
    seen = {
        alias.asname or alias.name: node.module
        for node in block.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    assert seen == meadow_core._MODULE_OF
    assert set(seen) == {*meadow_core.__all__, "__version__"}
    for name in meadow_core.__all__:
        assert getattr(meadow_core, name) is not None
    with pytest.raises(AttributeError):
        meadow_core.no_such_name  # type: ignore[attr-defined]  # noqa: B018


def test_version_falls_back_to_pyproject_version() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert _runtime._FALLBACK_VERSION == project["version"] == meadow_core.__version__


USER_SCRIPT = """
from collections.abc import Iterator

from meadow_core import (
    AllocEC2Instance,
    JobCompletion,
    JobHandle,
    LocalHost,
    Resources,
    TaskResult,
    run_command_sync,
    run_function_sync,
    run_map_as_completed_sync,
    run_map_sync,
)


def describe(n: int) -> str:
    return f"item {n}"


def main() -> None:
    host = LocalHost()
    value: int = run_function_sync(lambda: 6 * 7, host)
    names: list[str] = run_map_sync(describe, [1, 2], host, Resources(memory_gb=0.5))
    reveal_type(run_map_sync(describe, [1, 2], host))
    reveal_type(run_function_sync(describe, host, args=[3]))
    handle: JobHandle = run_function_sync(describe, host, args=[3], wait_for_result=False)
    done: JobCompletion[None] = run_command_sync("echo hi", host)
    each: Iterator[TaskResult[str]] = run_map_as_completed_sync(describe, range(3), host)
    ec2 = AllocEC2Instance(region_name="us-east-2")
    remote = run_function_sync("package.module.function", ec2, Resources(logical_cpu=2))
    print(value, names, handle.job_id, done.return_code, list(each), remote)
"""


def test_a_users_script_type_checks_strictly_with_real_types(tmp_path: Path) -> None:
    """The README's calls under ``mypy --strict`` against the installed package (which
    needs ``py.typed``): the sync twins return the function's types, not ``Any``."""
    (tmp_path / "user_script.py").write_text(textwrap.dedent(USER_SCRIPT))
    (tmp_path / "mypy.ini").write_text("[mypy]\n")  # not the repository's configuration
    mypy = Path(sys.executable).with_name("mypy")
    result = subprocess.run(
        [
            str(mypy),
            "--strict",
            "--no-incremental",
            "--cache-dir",
            str(tmp_path / "cache"),
            "user_script.py",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    revealed = [
        line.split("Revealed type is ")[1].replace("builtins.", "")
        for line in result.stdout.splitlines()
        if "Revealed type is" in line
    ]
    assert revealed == ['"list[str]"', '"str"'], result.stdout
