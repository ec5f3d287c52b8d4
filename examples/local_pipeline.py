"""A small pipeline on LocalHost: extract, a parallel transform, a reduce and a command.

Run it with ``bash scripts/example.sh``. Every step runs in Meadow workers started by a
real agent on this machine; the agent exits by itself once it has been idle for
``IDLE_TIMEOUT`` seconds.
"""

from __future__ import annotations

import collections
import logging
import random
import re
import sys
import time

from meadow_core import (
    LocalHost,
    Resources,
    run_command_sync,
    run_function_sync,
    run_map_sync,
)

IDLE_TIMEOUT = 15
WORDS = "meadow agent worker task queue result retry memory cloud spot price cache".split()  # noqa: SIM905


def extract(num_documents: int, seed: int) -> list[str]:
    """Make the input: documents of random words (a stand-in for reading a source)."""
    rng = random.Random(seed)
    print(f"extracting {num_documents} documents")
    return [" ".join(rng.choices(WORDS, k=200)) for _ in range(num_documents)]


def count_words(document: str) -> dict[str, int]:
    """The heavy step, one task per document."""
    return dict(collections.Counter(re.findall(r"\w+", document)))


def merge(counts: list[dict[str, int]]) -> list[tuple[str, int]]:
    total: collections.Counter[str] = collections.Counter()
    for partial in counts:
        total.update(partial)
    print(f"merged {len(counts)} partial counts")
    return total.most_common(5)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="  remote | %(message)s")
    host = LocalHost(idle_timeout=IDLE_TIMEOUT)
    started = time.perf_counter()

    documents = run_function_sync(extract, host, args=(200, 7))
    counts = run_map_sync(
        count_words,
        documents,
        host,
        resources_per_task=Resources(logical_cpu=1, memory_gb=0.5),
        num_concurrent_tasks=2,
    )
    top = run_function_sync(merge, host, args=(counts,))
    report = run_command_sync(
        [sys.executable, "-c", "import sys; print('report:', sys.argv[1])", repr(top)], host
    )

    print(f"\nextracted {len(documents)} documents, counted them in {len(counts)} tasks")
    print(f"most common words: {top}")
    print(f"command exit code {report.return_code}, its log: {report.log.strip()}")
    print(f"pipeline took {time.perf_counter() - started:.2f}s on {host.place.home}")
    print(f"the agent exits by itself after {IDLE_TIMEOUT}s without work")
    counted = sum(sum(partial.values()) for partial in counts)
    return 0 if counted == sum(len(d.split()) for d in documents) else 1


if __name__ == "__main__":
    sys.exit(main())
