"""Hosts: where jobs run. ``LocalHost`` is this machine; cloud hosts come later."""

from meadow_core.hosts.base import Host
from meadow_core.hosts.local import LocalHost

__all__ = ["Host", "LocalHost"]
