"""The ``meadow`` command, run as a real subprocess the way a person would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def meadow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    home = tmp_path_factory.mktemp("cli-home")
    env = dict(os.environ, MEADOW_HOME=str(home))

    def run(*args: str, check: int | None = 0) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "meadow_core.cli", "--idle-timeout", "30", *args],
            cwd=TESTS,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check is not None:
            assert result.returncode == check, result.stdout + result.stderr
        return result

    run.home = str(home)  # type: ignore[attr-defined]
    yield run
    run("agent", "stop")


def test_run_prints_the_value_and_the_remote_output(meadow) -> None:  # type: ignore[no-untyped-def]
    result = meadow("run", "cli_tasks:add", "2", "3")
    assert json.loads(result.stdout) == 5
    assert "adding 2 and 3" in result.stderr


def test_run_reports_a_remote_exception(meadow) -> None:  # type: ignore[no-untyped-def]
    result = meadow("run", "cli_tasks:fail_on_two", "2", check=1)
    assert "ValueError" in result.stderr and "two is not allowed" in result.stderr


def test_bad_reference_and_impossible_resources_fail_clearly(meadow) -> None:  # type: ignore[no-untyped-def]
    assert "package.module:function" in meadow("run", "cli_tasks.add", check=2).stderr
    result = meadow("run", "--cpu", "100000", "cli_tasks:square", "1", check=1)
    assert "logical CPUs" in result.stderr


def test_command_exits_with_the_remote_exit_code(meadow) -> None:  # type: ignore[no-untyped-def]
    result = meadow("command", "--", "sh", "-c", "echo from-remote; exit 4", check=4)
    assert "from-remote" in result.stderr


def test_map_prints_results_and_plain_progress_when_not_a_terminal(meadow) -> None:  # type: ignore[no-untyped-def]
    result = meadow("map", "cli_tasks:square", "1", "2", "3")
    assert json.loads(result.stdout) == [1, 4, 9]
    assert "3/3 tasks done" in result.stderr


def test_map_with_a_failing_task_exits_nonzero(meadow) -> None:  # type: ignore[no-untyped-def]
    result = meadow("map", "cli_tasks:fail_on_two", "1", "2", "3", check=1)
    assert json.loads(result.stdout) == [1, None, 3]
    assert "task 1 failed" in result.stderr


def test_detach_then_list_status_logs_wait_and_cancel(meadow) -> None:  # type: ignore[no-untyped-def]
    job_id = meadow("run", "--detach", "cli_tasks:add", "20", "22").stdout.strip()
    assert json.loads(meadow("wait", job_id).stdout) == 42
    listing = meadow("jobs").stdout
    assert job_id in listing and "succeeded" in listing
    assert "succeeded" in meadow("status", job_id).stdout
    assert "adding 20 and 22" in meadow("logs", job_id).stdout

    slow_id = meadow("run", "--detach", "cli_tasks:slow", "60").stdout.strip()
    time.sleep(0.5)
    started = time.monotonic()
    assert "cancelled" in meadow("cancel", slow_id).stdout
    assert time.monotonic() - started < 20
    assert "cancelled" in meadow("status", slow_id).stdout
    assert "not known" in meadow("status", "no-such-job", check=1).stderr


def test_agent_status_and_stop(meadow) -> None:  # type: ignore[no-untyped-def]
    meadow("run", "cli_tasks:square", "3")
    status = meadow("agent", "status").stdout
    assert "agent" in status and "capacity" in status
    assert "stopped agent" in meadow("agent", "stop").stdout
    assert "no agent is running" in meadow("agent", "status").stdout


def test_cache_lists_and_prunes_least_recently_used_first(meadow, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    project = tmp_path / "project"
    project.mkdir()
    (project / "shipped_cli_module.py").write_text("def hello():\n    return 'hi'\n")
    # Ship a code snapshot so the cache has an entry to list.
    script = (
        "from meadow_core import Deployment, LocalHost, run_function_sync\n"
        "d = Deployment.mirror_local(\n"
        f"    include_sys_path=False, additional_sys_paths=[{str(project)!r}])\n"
        "host = LocalHost(idle_timeout=30)\n"
        "print(run_function_sync('shipped_cli_module.hello', host, deployment=d))\n"
    )
    env = dict(os.environ, MEADOW_HOME=meadow.home)
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.stdout.strip() == "hi", done.stderr
    listing = meadow("cache", "list").stdout
    assert "code" in listing and "stored code" in listing
    assert "agent stop" in meadow("cache", "prune", "--max-gb", "0", check=1).stderr
    meadow("agent", "stop")
    assert "removed" in meadow("cache", "prune", "--max-gb", "0").stdout
    assert meadow("cache", "list").stdout.strip().endswith("0 entries, 0 B")


def test_bad_durations_and_bracketed_text_get_plain_errors(meadow) -> None:  # type: ignore[no-untyped-def]
    for bad in ("nan", "-5", "0"):
        result = meadow("--idle-timeout", bad, "jobs", check=2)
        assert "must be a positive number of seconds" in result.stderr
    result = meadow("command", "--timeout", "nan", "--", "true", check=2)
    assert "must be a positive number of seconds" in result.stderr
    # Text the user typed is printed as it is, never read as Rich markup.
    result = meadow("command", "--job-id", "x[/y]", "--", "true", check=1)
    assert "x[/y]" in result.stderr + result.stdout
    assert "MarkupError" not in result.stderr


def test_a_cloud_whose_sdk_is_missing_says_which_extra_to_install() -> None:
    """The CLI finds clouds through the ``meadow.clouds`` entry point; without boto3,
    ``meadow aws ...`` still exists and names the extra instead of a traceback."""
    blocked = "import sys; sys.modules['boto3'] = None; from meadow_core.cli import main; main()"
    result = subprocess.run(
        [sys.executable, "-c", blocked, "aws", "ls"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "meadow-core[aws]" in result.stderr
    assert "Traceback" not in result.stderr
    listed = subprocess.run(
        [sys.executable, "-c", blocked, "--help"], capture_output=True, text=True, timeout=60
    )
    assert "aws" in listed.stdout
