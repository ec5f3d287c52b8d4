"""The host most core tests share: one LocalHost per test module, on its own home,
whose agent and workers must all be gone after the module (``tasks.managed_host``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tasks import managed_host

from meadow_core import LocalHost


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalHost]:
    with managed_host(tmp_path_factory.mktemp("meadow")) as h:
        yield h
