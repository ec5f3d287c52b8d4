"""The one rule for tests that need simulated VMs, shared by the core's and the
adapters' suites: without root and iproute2 they skip, except in CI, where a missing
service is a failure."""

from __future__ import annotations

import os

import pytest
from meadow_devcloud.vm.simulator import DevCloudError, check_host


def require_vm_host() -> None:
    try:
        check_host()
    except DevCloudError as error:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must be able to run the dev cloud: {error}")
        pytest.skip(str(error))
