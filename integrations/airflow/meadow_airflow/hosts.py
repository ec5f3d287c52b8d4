"""Describe a Meadow host as plain data, so a trigger or an XCom reference can carry it.

Trigger kwargs and XCom values must be JSON-like; a ``Host`` object is not. The core's
host registry does the round trip (``{"type": "local", **settings}``), so this module
knows no host type. Triggers and references written by earlier versions carry
``{"class": "module.Class", "settings": {...}}``; those are still read.
"""

from __future__ import annotations

import importlib
from typing import Any

from meadow_core import Host, host_from_config, host_to_config


def host_to_spec(host: Host) -> dict[str, Any]:
    """The host's plain config (``meadow_core.host_to_config``)."""
    return host_to_config(host)


def host_from_spec(spec: dict[str, Any], **unset_settings: Any) -> Host:
    """Rebuild the host ``host_to_spec`` described. ``unset_settings`` fill settings the
    spec leaves ``None`` (an old trigger's or reference's separate ``region_name``)."""
    if "class" in spec:
        module_name, _, class_name = str(spec["class"]).rpartition(".")
        cls = getattr(importlib.import_module(module_name), class_name)
        if not (isinstance(cls, type) and issubclass(cls, Host)):
            raise TypeError(f"{spec['class']} is not a meadow_core Host")
        spec = host_to_config(cls(**spec.get("settings", {})))
    config = dict(spec)
    for name, value in unset_settings.items():
        if value is not None and name in config and config[name] is None:
            config[name] = value
    return host_from_config(config)
