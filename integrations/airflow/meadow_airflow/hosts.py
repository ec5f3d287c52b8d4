"""Describe a Meadow host as plain data, so a trigger or an XCom reference can carry it.

Trigger kwargs and XCom values must be JSON-like; a ``Host`` object is not. Hosts are
dataclasses of settings (``LocalHost.__getstate__`` says as much), so the description is
the class path plus those settings, and the triggerer rebuilds an equal host from it.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Any

from meadow_core import Host, LocalHost


def host_to_spec(host: Host) -> dict[str, Any]:
    """``{"class": "module.Class", "settings": {...}}`` for a dataclass host."""
    if not dataclasses.is_dataclass(host):
        raise TypeError(
            f"host {type(host).__name__} cannot be described for the triggerer; "
            "use a dataclass Host such as LocalHost()"
        )
    settings: dict[str, Any] = {}
    for field in dataclasses.fields(host):
        value = getattr(host, field.name)
        settings[field.name] = str(value) if isinstance(value, Path) else value
    if isinstance(host, LocalHost):
        # Pin the home: the triggerer may run with another $MEADOW_HOME.
        settings["home"] = str(host.place.home)
    cls = type(host)
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "settings": settings}


def host_from_spec(spec: dict[str, Any]) -> Host:
    """Rebuild the host ``host_to_spec`` described."""
    module_name, _, class_name = str(spec["class"]).rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    host = cls(**spec.get("settings", {}))
    if not isinstance(host, Host):
        raise TypeError(f"{spec['class']} is not a meadow_core Host")
    return host
