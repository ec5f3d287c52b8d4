"""Sum pytest's JUnit XML reports into the one closing line CI reads:
"N passed, M failed[, K skipped]".

    python3 scripts/junit_totals.py REPORT.xml...

A missing or empty report (its run died before writing it) adds nothing; that run's
step has failed already.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def main(paths: list[str]) -> None:
    tests = failed = skipped = 0
    for path in map(Path, paths):
        if not path.exists() or path.stat().st_size == 0:
            continue
        root = ET.parse(path).getroot()
        for suite in [root] if root.tag == "testsuite" else root.iter("testsuite"):
            tests += int(suite.get("tests", 0))
            failed += int(suite.get("failures", 0)) + int(suite.get("errors", 0))
            skipped += int(suite.get("skipped", 0))
    line = f"{tests - failed - skipped} passed, {failed} failed"
    print(f"{line}, {skipped} skipped" if skipped else line)


if __name__ == "__main__":
    main(sys.argv[1:])
