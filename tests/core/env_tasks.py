"""Functions run inside built environments: this module imports only what they have."""

from __future__ import annotations

import sys


def report_environment(_: object = None) -> tuple[str, str]:
    import six  # type: ignore[import-untyped]  # only in the built environment

    return sys.executable, six.__version__


def report_dateutil(_: object = None) -> tuple[str, str]:
    import dateutil  # type: ignore[import-untyped]  # only in the built environment

    return dateutil.__version__, report_environment()[1]
