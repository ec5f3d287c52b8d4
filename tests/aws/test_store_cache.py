"""`meadow aws cache`: what the bucket keeps for reuse, and pruning what no recent job
used, against moto in server mode. A bucket cannot be aged, so the prune is asked to
judge as of 35 days from now."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from meadow_core import code_snapshot, protocol
from meadow_core.clouds.aws import admin, session
from meadow_core.clouds.aws.cli import aws
from meadow_core.clouds.aws.registry import DynamoRegistry
from meadow_core.clouds.aws.store import S3ObjectStore
from meadow_core.keys import spec_key
from meadow_core.protocol import Environment, JobSpec
from meadow_core.remote import store_cache

pytestmark = [pytest.mark.devcloud]

DAY = 86400.0
THIRTY_DAYS = 30 * DAY


@pytest.fixture
def installed(aws_env: dict[str, str]) -> tuple[str, S3ObjectStore, DynamoRegistry]:
    session.reset()
    region = aws_env["AWS_DEFAULT_REGION"]
    admin.install(region, publish_bundle=False)
    store, registry = admin._installed(region)
    return region, store, registry


def _upload_code(tree: Path, files: dict[str, str], store: S3ObjectStore) -> tuple[str, set[str]]:
    """A real snapshot of ``files`` in the bucket: its manifest key and object keys."""
    tree.mkdir()
    for name, text in files.items():
        (tree / name).write_text(text)
    code_snapshot.clear_caches()
    snapshot, sources = code_snapshot.build_snapshot([str(tree)], None)
    key = code_snapshot.upload_snapshot_stats(snapshot, sources, store).key
    return key, set(snapshot.object_keys())


def _keys(store: S3ObjectStore) -> set[str]:
    return set(store.list_keys(""))


def test_prune_keeps_what_recent_and_unfinished_jobs_use_and_deletes_the_rest(
    installed: tuple[str, S3ObjectStore, DynamoRegistry], tmp_path: Path
) -> None:
    _, store, registry = installed
    shared = "def shared():\n    return 1\n"
    old_manifest, old_files = _upload_code(
        tmp_path / "old", {"a.py": "A = 1\n", "shared.py": shared}, store
    )
    new_manifest, new_files = _upload_code(
        tmp_path / "new", {"b.py": "B = 2\n", "shared.py": shared}, store
    )
    for key in (
        "functions/old",
        "functions/new",
        "functions/stuck",
        "envs/specs/old",
        "envs/packed/old-0123456789abcdef.tar.zst",
        "envs/specs/new",
        "envs/packed/new-0123456789abcdef.tar.zst",
        "envs/packed/new-fedcba9876543210.tar.gz",  # built by another Meadow: kept too
        "bootstrap/old.tar.gz",
        "results/some-job/outcomes/00000000.0001",
    ):
        store.put(key, b"x" * 100)
    judged_at = time.time() + 35 * DAY  # every object is now 35 days old
    registry.put_job(
        "old-job",
        {
            "state": "succeeded",
            "created": judged_at - 40 * DAY,
            "refs": ["functions/old", old_manifest, "envs/specs/old", "bootstrap/old.tar.gz"],
        },
    )
    registry.put_job(
        "recent-job",
        {
            "state": "failed",
            "created": judged_at - 2 * DAY,
            "refs": ["functions/new", new_manifest, "envs/specs/new"],
        },
    )
    registry.put_job(
        "stuck-job",  # never finished: whatever it names stays
        {"state": "running", "created": judged_at - 90 * DAY, "refs": ["functions/stuck"]},
    )
    before = _keys(store)

    rows = {r.kind: r for r in store_cache.summarize(store, registry, THIRTY_DAYS, judged_at)}
    assert (rows["code files"].objects, rows["code files"].unused_objects) == (3, 1)
    assert rows["environment archives"].unused_objects == 1
    dry = store_cache.prune(store, registry, THIRTY_DAYS, judged_at, dry_run=True)
    assert _keys(store) == before, "a dry run deletes nothing"

    report = store_cache.prune(store, registry, THIRTY_DAYS, judged_at)
    expected_gone = {
        "functions/old",
        old_manifest,
        "envs/specs/old",
        "envs/packed/old-0123456789abcdef.tar.zst",
        "bootstrap/old.tar.gz",
        *(old_files - new_files),  # a.py; shared.py is also the recent job's
    }
    assert {o.key for o in report.deleted} == {o.key for o in dry.deleted} == expected_gone
    after = _keys(store)
    assert after == before - expected_gone
    assert new_files <= after and new_manifest in after and "functions/stuck" in after
    assert "results/some-job/outcomes/00000000.0001" in after, "results are clean's business"
    # What is left still materializes: the recent job's code is whole.
    paths, _ = code_snapshot.materialize(new_manifest, store, tmp_path / "machine")
    assert (Path(paths[0]) / "shared.py").read_text() == shared


def test_nothing_younger_than_the_window_is_pruned(
    installed: tuple[str, S3ObjectStore, DynamoRegistry],
) -> None:
    _, store, registry = installed
    store.put("functions/unreferenced-but-new", b"x")
    report = store_cache.prune(store, registry, THIRTY_DAYS)
    assert report.deleted == [] and "functions/unreferenced-but-new" in _keys(store)


def test_a_job_recorded_while_the_prune_looks_keeps_what_it_uses(
    installed: tuple[str, S3ObjectStore, DynamoRegistry],
) -> None:
    """The registry is read again just before deleting: a job recorded in between
    (here: invisible to the first read) keeps its old objects."""
    _, store, registry = installed
    store.put("functions/late", b"x")
    store.put("functions/unused", b"x")
    judged_at = time.time() + 35 * DAY
    registry.put_job(
        "late-job", {"state": "running", "created": judged_at, "refs": ["functions/late"]}
    )

    class FirstReadMissesTheLateJob:
        def __init__(self) -> None:
            self.reads = 0

        def all_jobs(self) -> list[dict[str, Any]]:
            self.reads += 1
            jobs = registry.all_jobs()
            return [j for j in jobs if j["job_id"] != "late-job"] if self.reads == 1 else jobs

    racing = FirstReadMissesTheLateJob()
    report = store_cache.prune(store, racing, THIRTY_DAYS, judged_at)  # type: ignore[arg-type]
    assert racing.reads == 2
    assert [o.key for o in report.deleted] == ["functions/unused"]
    assert "functions/late" in _keys(store)


def test_an_unfinished_job_without_refs_keeps_what_its_spec_names(
    installed: tuple[str, S3ObjectStore, DynamoRegistry],
) -> None:
    """A job submitted by an older caller (no ``refs``) still running: its stored spec
    says what it reads."""
    _, store, registry = installed
    store.put("functions/old-caller", b"x")
    store.put("functions/unused", b"x")
    spec = JobSpec(
        job_id="old-caller-job",
        kind="function",
        name="f",
        environment=Environment(interpreter="python3", sys_path=[], working_directory="/"),
        resources={},
        num_tasks=1,
        function_key="functions/old-caller",
    )
    store.put(spec_key(spec.job_id), protocol.pack(spec.to_wire()))
    registry.put_job(spec.job_id, {"state": "running", "created": time.time()})
    report = store_cache.prune(store, registry, THIRTY_DAYS, time.time() + 35 * DAY)
    assert [o.key for o in report.deleted] == ["functions/unused"]


def test_the_cli_lists_and_prunes(installed: tuple[str, S3ObjectStore, DynamoRegistry]) -> None:
    region, store, _ = installed
    store.put("functions/f", b"x" * 2_000_000)
    listed = CliRunner().invoke(aws, ["cache", "list", "--region", region])
    assert listed.exit_code == 0, listed.output
    assert "functions" in listed.output and "2.0 MB" in listed.output
    pruned = CliRunner().invoke(aws, ["cache", "prune", "--region", region])
    assert pruned.exit_code == 0, pruned.output
    assert "deleted 0 objects (0.0 MB); kept 1 (2.0 MB)" in pruned.output  # it is new
    too_short = CliRunner().invoke(
        aws, ["cache", "prune", "--region", region, "--older-than-days", "0.001"]
    )
    assert too_short.exit_code != 0 and "--older-than-days" in too_short.output
    assert "functions/f" in _keys(store)


def test_the_cli_says_to_install_first(aws_env: dict[str, str]) -> None:
    session.reset()
    result = CliRunner().invoke(aws, ["cache", "list", "--region", aws_env["AWS_DEFAULT_REGION"]])
    assert result.exit_code != 0 and "meadow aws install" in result.output
