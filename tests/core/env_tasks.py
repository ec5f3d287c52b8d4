"""Functions run inside built environments: this module imports only what they have."""

from __future__ import annotations

import sys


def report_environment(_: object = None) -> tuple[str, str]:
    import six  # type: ignore[import-untyped]  # only in the built environment

    return sys.executable, six.__version__
