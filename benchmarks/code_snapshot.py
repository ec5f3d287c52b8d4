"""Code snapshots (``Deployment.mirror_local``) against ``tar`` + ``zstd`` of the same tree.

Case 1, a generated tree of ``--files`` files and ``--megabytes`` MB (text that
compresses like source code, in 40 packages of 5 folders):

- ``tar -cf - . | zstd`` of the tree (best of ``--repeats``);
- Meadow's first snapshot and upload into a fresh ``LocalObjectStore`` with empty
  in-process caches (best of ``--repeats``, each into a new store);
- one file edited, then snapshot and upload again in the same process (the digest
  cache knows every other file): bytes uploaded and time.

Case 2, one ``--megabytes`` MB file: first snapshot, then 100 bytes overwritten in the
middle and snapshot again: content-defined chunks mean about one chunk is uploaded,
not the file. Both materialize byte for byte.

Run from the repository root::

    .venv/bin/python benchmarks/code_snapshot.py

Targets (issue 3): first snapshot + upload <= 1.5x tar + zstd; after one edit, bytes
uploaded <= 2x the file + the manifest and time <= 10 % of the first. Prints MET or
MISSED and exits 0 either way; it fails only if a snapshot does not round-trip.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from meadow_core import code_snapshot  # noqa: E402
from meadow_core.transport.local import LocalObjectStore  # noqa: E402

#: Files written less than this long ago are hashed again on every snapshot (the
#: digest cache's guard against same-tick edits); a real tree is older than this.
SETTLE_SECONDS = 2.2


def _text(size: int, rng: random.Random) -> bytes:
    """Source-like text: words from a 3,000-word vocabulary, Zipf-like frequencies."""
    words = [
        "".join(rng.choices("abcdefghijklmnopqrstuvwxyz_", k=rng.randint(2, 10)))
        for _ in range(3000)
    ]
    words += ["\n", "    ", "(", ")", ":", " = ", "self.", "def ", "return ", ", "] * 60
    weights = [1 / (i + 1) ** 0.9 for i in range(len(words))]
    out: list[str] = []
    length = 0
    while length < size:
        batch = rng.choices(words, weights, k=50_000)
        out.append(" ".join(batch))
        length += sum(len(w) + 1 for w in batch)
    return "".join(out).encode()[:size]


def make_tree(root: Path, files: int, total: int, seed: int = 1) -> list[Path]:
    rng = random.Random(seed)
    corpus = _text(total + (1 << 20), rng)
    sizes = [rng.lognormvariate(0, 1) for _ in range(files)]
    scale = total / sum(sizes)
    paths = []
    offset = 0
    for i, s in enumerate(sizes):
        size = max(1, int(s * scale))
        folder = root / f"pkg{i % 40}" / f"sub{(i // 40) % 5}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"mod{i}.py"
        path.write_bytes(f"# module {i}\n".encode() + corpus[offset : offset + size])
        offset = (offset + size) % (len(corpus) - total // files * 20)
        paths.append(path)
    return paths


def tar_zstd(tree: Path, out: Path) -> tuple[float, int]:
    started = time.perf_counter()
    subprocess.run(f"tar -C '{tree}' -cf - . | zstd -q -o '{out}'", shell=True, check=True)
    return time.perf_counter() - started, out.stat().st_size


def snapshot_and_upload(
    tree: Path, store: LocalObjectStore
) -> tuple[float, code_snapshot.UploadStats]:
    started = time.perf_counter()
    snapshot, sources = code_snapshot.build_snapshot([str(tree)], None)
    stats = code_snapshot.upload_snapshot_stats(snapshot, sources, store)
    return time.perf_counter() - started, stats


def check_round_trip(tree: Path, key: str, store: LocalObjectStore, cache: Path) -> float:
    started = time.perf_counter()
    paths, _ = code_snapshot.materialize(key, store, cache)
    elapsed = time.perf_counter() - started
    copy = Path(paths[0])
    for path in tree.rglob("*"):
        if path.is_file():
            twin = copy / path.relative_to(tree)
            if (
                hashlib.sha256(path.read_bytes()).digest()
                != hashlib.sha256(twin.read_bytes()).digest()
            ):
                raise SystemExit(f"materialized {twin} differs from {path}")
    return elapsed


def _settle(since: float) -> None:
    time.sleep(max(0.0, since + SETTLE_SECONDS - time.time()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--megabytes", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--dir", default=None, help="where the tree and stores go (default: the system temp dir)"
    )
    args = parser.parse_args()
    console = Console(width=150)
    total = args.megabytes * 1_000_000
    rows: list[tuple[str, str, str, str, str, str]] = []

    def verdict(ok: bool) -> str:
        return "[green]MET[/green]" if ok else "[red]MISSED[/red]"

    with tempfile.TemporaryDirectory(prefix="meadow-bench-code-", dir=args.dir) as tmp:
        base = Path(tmp)
        tree = base / "tree"
        console.print(f"[dim]generating {args.files} files, {args.megabytes} MB...[/dim]")
        paths = make_tree(tree, args.files, total)
        _settle(time.time())
        tree_bytes = sum(p.stat().st_size for p in paths)

        tar_runs = [tar_zstd(tree, base / f"tree{i}.tar.zst") for i in range(args.repeats)]
        tar_s = min(t for t, _ in tar_runs)
        first_runs = []
        for i in range(args.repeats):
            code_snapshot.clear_caches()
            store = LocalObjectStore(base / f"store{i}")
            first_runs.append(snapshot_and_upload(tree, store))
        first_s, first = min(first_runs, key=lambda r: r[0])
        edited = paths[len(paths) // 2]
        edited.write_bytes(edited.read_bytes().replace(b" ", b"  ", 3))
        again_s, again = snapshot_and_upload(tree, store)
        materialize_s = check_round_trip(tree, again.key, store, base / "machine")
        limit = 2 * edited.stat().st_size + again.manifest_bytes

        rows.append(
            (
                f"tar | zstd (best of {args.repeats})",
                f"{tar_s:.3f}",
                f"{tar_runs[0][1] / 1e6:.1f} MB",
                "1.00x",
                "",
                "",
            )
        )
        rows.append(
            (
                f"Meadow first snapshot + upload (best of {args.repeats})",
                f"{first_s:.3f}",
                f"{first.bytes / 1e6:.1f} MB in {first.objects} objects",
                f"{first_s / tar_s:.2f}x tar+zstd",
                "<= 1.5x",
                verdict(first_s <= 1.5 * tar_s),
            )
        )
        rows.append(
            (
                "Meadow after editing one file: time",
                f"{again_s:.3f}",
                "",
                f"{again_s / first_s:.1%} of first",
                "<= 10 %",
                verdict(again_s <= 0.1 * first_s),
            )
        )
        rows.append(
            (
                "Meadow after editing one file: bytes",
                "",
                f"{again.bytes + again.manifest_bytes:,} B",
                f"file {edited.stat().st_size:,} B + manifest {again.manifest_bytes:,} B",
                f"<= {limit:,} B",
                verdict(again.bytes + again.manifest_bytes <= limit),
            )
        )
        rows.append(
            (
                "Meadow materialize on a machine (informational)",
                f"{materialize_s:.3f}",
                f"{tree_bytes / 1e6:.1f} MB",
                "",
                "",
                "",
            )
        )

        big_dir = base / "large"
        big_dir.mkdir()
        big = big_dir / "data.bin"
        big.write_bytes(random.Random(2).randbytes(total))
        _settle(time.time())
        code_snapshot.clear_caches()
        big_store = LocalObjectStore(base / "store-large")
        big_first_s, big_first = snapshot_and_upload(big_dir, big_store)
        with open(big, "r+b") as f:
            f.seek(total // 2)
            f.write(b"x" * 100)
        big_again_s, big_again = snapshot_and_upload(big_dir, big_store)
        check_round_trip(big_dir, big_again.key, big_store, base / "machine-large")
        rows.append(
            (
                f"large file ({args.megabytes} MB): first snapshot + upload",
                f"{big_first_s:.3f}",
                f"{big_first.bytes / 1e6:.1f} MB in {big_first.objects} chunks",
                "",
                "",
                "",
            )
        )
        rows.append(
            (
                "large file: 100 B overwritten in the middle",
                f"{big_again_s:.3f}",
                f"{big_again.bytes / 1e6:.2f} MB in {big_again.objects} chunks",
                f"{big_again.bytes / total:.1%} of the file",
                "about one chunk",
                verdict(big_again.objects <= 2),
            )
        )

    table = Table(title=f"Code snapshot: {args.files} files, {tree_bytes / 1e6:.0f} MB")
    for column in ("row", "seconds", "uploaded / written", "ratio", "target", "result"):
        table.add_column(column, justify="left" if column == "row" else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    zstd_version = subprocess.run(["zstd", "--version"], capture_output=True, text=True).stdout
    console.print(
        f"{zstd_version.strip()}; CPUs {os.cpu_count()}, load "
        f"{os.getloadavg()[0]:.2f}; temp dir {args.dir or tempfile.gettempdir()}"
    )
    shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
