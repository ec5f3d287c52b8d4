"""Meadow's environment cache against plain uv, for a 10-package environment.

Rows, all in one run on the same warm uv cache (a cache of this run's own, primed
first, so downloads from the package index are not part of any number):

1. uv: ``uv venv`` + ``uv pip install -r requirements.txt`` into an empty venv.
2. Meadow cold: what a first use of ``PipRequirementsFile`` costs: the caller's
   resolution check (``environment_spec()``, fresh ``MEADOW_CACHE_DIR``), storing the
   spec, and ``envcache.ensure_environment`` with an empty cache root and an empty
   object store (uv build with Meadow's worker runtime), until the interpreter is
   ready. Packing into the store runs in the background after that
   (``wait_for_upload=False``, off the task's path); the time until the archive is
   stored is printed below the table, not part of the row.
3. Meadow warm hits, each ``ensure_environment`` for the same spec in another process:
   (a) another machine: an empty cache root but the same object store, so it unpacks
   the archive instead of building; (b) this machine: the same cache root, so it is a
   directory lookup.
4. Meadow one package bumped: a spec with one pin changed, cold on this machine's cache
   root (the store has only the first environment), caller's check included: the
   build starts from the first environment and swaps the one package.

Run from the repository root::

    .venv/bin/python benchmarks/env_cache.py

Targets (issue 3): cold <= 1.3x uv, warm <= 5 % of cold, bump <= 1/2 cold. The script
prints MET or MISSED and exits 0 either way; it fails only if a build fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from meadow_core.interpreters import uv_binary

_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

#: Ten pinned packages, a closed set (each one's dependencies are in the list), small
#: wheels only.
REQUIREMENTS = [
    "requests==2.31.0",
    "urllib3==2.2.1",
    "idna==3.7",
    "certifi==2024.2.2",
    "charset-normalizer==3.3.2",
    "six==1.16.0",
    "python-dateutil==2.9.0.post0",
    "attrs==23.2.0",
    "tabulate==0.9.0",
    "toolz==0.12.1",
]
BUMP = ("toolz==0.12.1", "toolz==0.12.0")

_WARM_CHILD = """
import sys, time
from pathlib import Path
from meadow_core.envcache import ensure_environment
from meadow_core.transport.local import LocalObjectStore
started = time.perf_counter()
python = ensure_environment(sys.argv[1], LocalObjectStore(Path(sys.argv[2])), Path(sys.argv[3]))
print(time.perf_counter() - started)
"""


def _run(args: list[str], env: dict[str, str]) -> None:
    subprocess.run(args, env=env, check=True, capture_output=True, text=True)


def _time_uv(requirements: Path, venv: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    _run([uv_binary(), "venv", "--python", sys.executable, str(venv)], env)
    _run(
        [
            uv_binary(),
            "pip",
            "install",
            "--python",
            str(venv / "bin" / "python"),
            "-r",
            str(requirements),
        ],
        env,
    )
    return time.perf_counter() - started


def _check_versions(python: str, expected: dict[str, str], env: dict[str, str]) -> None:
    code = (
        "import importlib.metadata as m, json, sys; "
        "print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))"
    )
    out = subprocess.run(
        [python, "-c", code, *expected], env=env, check=True, capture_output=True, text=True
    ).stdout
    import json

    got = json.loads(out)
    if got != expected:
        raise SystemExit(f"{python} has {got}, expected {expected}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.parse_args()
    console = Console(width=150)
    with tempfile.TemporaryDirectory(prefix="meadow-bench-env-") as tmp:
        base = Path(tmp)
        env = dict(
            os.environ,
            UV_CACHE_DIR=str(base / "uv-cache"),
            MEADOW_CACHE_DIR=str(base / "caller-cache"),
            UV_PYTHON_DOWNLOADS="never",
        )
        env.pop("VIRTUAL_ENV", None)
        os.environ.update(env)
        os.environ.pop("VIRTUAL_ENV", None)
        # Imported after the environment is set: the builder's uv calls inherit it.
        from meadow_core.envcache import (
            ensure_environment,
            entry_name,
            meadow_runtime_requirements,
            packed_key,
            wait_for_uploads,
        )
        from meadow_core.interpreters import PipRequirementsFile
        from meadow_core.transport.local import LocalObjectStore

        requirements = base / "requirements.txt"
        requirements.write_text("\n".join(REQUIREMENTS) + "\n")
        bumped = base / "requirements-bumped.txt"
        bumped.write_text(requirements.read_text().replace(BUMP[0], BUMP[1]))
        console.print("[dim]priming the uv cache (not timed)...[/dim]", style="dim")
        prime = base / "prime"
        _run([uv_binary(), "venv", "--python", sys.executable, str(prime)], env)
        for req in (requirements, bumped):
            _run(
                [
                    uv_binary(),
                    "pip",
                    "install",
                    "--python",
                    str(prime / "bin" / "python"),
                    "-r",
                    str(req),
                ],
                env,
            )
        _run(
            [
                uv_binary(),
                "pip",
                "install",
                "--python",
                str(prime / "bin" / "python"),
                *meadow_runtime_requirements(),
            ],
            env,
        )
        shutil.rmtree(prime)

        uv_s = _time_uv(requirements, base / "uv-venv", env)
        expected = dict(r.split("==") for r in REQUIREMENTS)
        _check_versions(str(base / "uv-venv" / "bin" / "python"), expected, env)

        store_root = base / "store"
        store = LocalObjectStore(store_root)
        started = time.perf_counter()
        spec = PipRequirementsFile(str(requirements)).environment_spec()
        store.put(spec.key, spec.to_bytes())
        resolved_s = time.perf_counter() - started
        python = ensure_environment(spec.key, store, base / "machine-a", wait_for_upload=False)
        cold_s = time.perf_counter() - started
        wait_for_uploads()
        stored_s = time.perf_counter() - started
        _check_versions(python, expected, env)
        archive = next(
            k for k in (packed_key(spec.key), packed_key(spec.key, ".tar.gz")) if store.exists(k)
        )
        packed_mb = (store_root / archive).stat().st_size / 1e6

        def warm(cache_root: Path) -> float:
            child = subprocess.run(
                [sys.executable, "-c", _WARM_CHILD, spec.key, str(store_root), str(cache_root)],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            )
            return float(child.stdout.strip().splitlines()[-1])

        warm_s = warm(base / "machine-b")
        local_s = warm(base / "machine-a")
        _check_versions(
            str(base / "machine-b" / entry_name(spec.key) / "bin" / "python"), expected, env
        )

        started = time.perf_counter()
        spec_b = PipRequirementsFile(str(bumped)).environment_spec()
        store.put(spec_b.key, spec_b.to_bytes())
        python_b = ensure_environment(spec_b.key, store, base / "machine-a", wait_for_upload=False)
        bump_s = time.perf_counter() - started
        wait_for_uploads()
        expected_b = dict(expected, toolz=BUMP[1].split("==")[1])
        _check_versions(python_b, expected_b, env)

    table = Table(title="Environment cache: 10 packages, warm uv cache (same run)")
    for column in ("row", "seconds", "ratio", "target", "result"):
        table.add_column(column, justify="right" if column != "row" else "left")

    def verdict(ok: bool) -> str:
        return "[green]MET[/green]" if ok else "[red]MISSED[/red]"

    table.add_row("uv venv + uv pip install -r", f"{uv_s:.2f}", "1.00x uv", "", "")
    table.add_row(
        f"Meadow cold (of which caller resolve check {resolved_s:.2f}s)",
        f"{cold_s:.2f}",
        f"{cold_s / uv_s:.2f}x uv",
        "<= 1.30x uv",
        verdict(cold_s <= 1.3 * uv_s),
    )
    table.add_row(
        "Meadow warm hit, other machine (other process, unpack)",
        f"{warm_s:.3f}",
        f"{warm_s / cold_s:.1%} of cold",
        "<= 5 %",
        verdict(warm_s <= 0.05 * cold_s),
    )
    table.add_row(
        "Meadow warm hit, this machine (other process, lookup)",
        f"{local_s:.4f}",
        f"{local_s / cold_s:.1%} of cold",
        "<= 5 %",
        verdict(local_s <= 0.05 * cold_s),
    )
    table.add_row(
        f"Meadow one package bumped ({BUMP[0]} -> {BUMP[1]})",
        f"{bump_s:.2f}",
        f"{bump_s / cold_s:.0%} of cold",
        "<= 50 %",
        verdict(bump_s <= 0.5 * cold_s),
    )
    console.print(table)
    console.print(
        f"packed into the store in the background: {archive.rsplit('/', 1)[-1]} "
        f"{packed_mb:.1f} MB, stored {stored_s:.2f}s after the cold start "
        f"({stored_s - cold_s:.2f}s after the interpreter was ready); "
        f"CPUs {os.cpu_count()}, load {os.getloadavg()[0]:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
