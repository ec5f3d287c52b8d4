"""Hosts as plain config: a registry of host types, and the round trip through it.

Adapters and the CLI take any host without naming a cloud: a host is ``{"type": name,
**settings}`` (plain JSON values), the registry maps ``name`` to a lazy import path,
and the settings are the host's dataclass fields. A new field on a host is therefore a
new setting everywhere (Dagster's config schema, Airflow's trigger kwargs, the CLI's
``--host``) with no adapter change, and a new cloud is one line in ``_BUILTIN`` (or an
entry point in the ``meadow.hosts`` group for a host shipped elsewhere).

Importing this module imports no host: a type's class is imported when it is used, so
naming ``ec2`` loads boto3 and naming ``local`` does not.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import json
import threading
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from meadow_core.errors import InvalidRequestError
from meadow_core.hosts.base import Host

#: Host types Meadow ships: name -> ``module:Class``, imported on first use.
_BUILTIN: dict[str, str] = {
    "local": "meadow_core.hosts.local:LocalHost",
    "ec2": "meadow_core.clouds.aws.host:AllocEC2Instance",
}
#: Entry-point group through which other distributions add host types.
ENTRY_POINT_GROUP = "meadow.hosts"

_lock = threading.Lock()
_registry: dict[str, str] = dict(_BUILTIN)
_entry_points_loaded = False


class HostConfigError(InvalidRequestError):
    """A host config names an unknown type or setting, or a value of the wrong kind."""


def register_host(name: str, path: str) -> None:
    """Register host type ``name`` as ``"module:Class"`` (imported when first used)."""
    if ":" not in path:
        raise ValueError(f"host path {path!r} must look like 'package.module:Class'")
    with _lock:
        _registry[name] = path


def _types() -> dict[str, str]:
    global _entry_points_loaded
    with _lock:
        if not _entry_points_loaded:
            _entry_points_loaded = True
            for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                _registry.setdefault(entry.name, entry.value)
        return dict(_registry)


def host_types() -> list[str]:
    """The registered host type names."""
    return sorted(_types())


def host_class(name: str) -> type[Host]:
    """The class of host type ``name`` (importing it now)."""
    known = _types()
    path = known.get(name)
    if path is None:
        raise HostConfigError(
            f"unknown host type {name!r}: choose one of {', '.join(sorted(known))}"
        )
    module_name, _, attribute = path.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attribute)
    except ImportError as exc:
        raise HostConfigError(
            f"host type {name!r} ({path}) cannot be imported: {exc}; install what it "
            f"needs (for Meadow's own clouds: pip install 'meadow-core[{_extra(name)}]')"
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, Host) and dataclasses.is_dataclass(cls)):
        raise HostConfigError(f"host type {name!r} ({path}) is not a dataclass Host")
    return cls


def _extra(name: str) -> str:
    return {"ec2": "aws"}.get(name, name)


def host_type_of(host: Host | type[Host]) -> str:
    """The registered name of ``host``'s class."""
    cls = host if isinstance(host, type) else type(host)
    path = f"{cls.__module__}:{cls.__qualname__}"
    for name, registered in _types().items():
        if registered == path:
            return name
    raise HostConfigError(
        f"host class {path} is not registered: register it with "
        f"meadow_core.register_host(name, {path!r}) or an entry point in the "
        f"{ENTRY_POINT_GROUP!r} group"
    )


# -- settings and their schema ------------------------------------------------------------

Kind = Literal["str", "int", "float", "bool", "str_list", "any"]
_NO_DEFAULT: Any = dataclasses.MISSING


@dataclasses.dataclass(frozen=True)
class HostSetting:
    """One setting of a host type, for adapters that build their own config schema."""

    name: str
    kind: Kind
    nullable: bool
    #: ``dataclasses.MISSING`` when the setting is required.
    default: Any = _NO_DEFAULT
    description: str = ""

    @property
    def required(self) -> bool:
        return self.default is _NO_DEFAULT


def _kind(annotation: Any) -> tuple[Kind, bool]:
    """The plain kind of a field's type, and whether ``None`` is allowed."""
    origin = typing.get_origin(annotation)
    members = (
        typing.get_args(annotation) if origin in (typing.Union, types.UnionType) else (annotation,)
    )
    nullable = type(None) in members
    members = tuple(m for m in members if m is not type(None))
    for member in members:  # a list of strings is the general form of "one or several"
        if typing.get_origin(member) in (list, tuple, Sequence) and typing.get_args(member)[:1] == (
            str,
        ):
            return "str_list", nullable
    for kind, python_types in (
        ("str", (str, Path)),
        ("bool", (bool,)),
        ("float", (float,)),
        ("int", (int,)),
    ):
        if any(m in python_types for m in members):
            return kind, nullable  # type: ignore[return-value]
    return "any", nullable


def settings_of(cls: type[Host]) -> list[HostSetting]:
    """The settings of a dataclass host: its ``init`` fields, typed and with defaults."""
    hints = typing.get_type_hints(cls)
    found = []
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not field.init:
            continue
        kind, nullable = _kind(hints.get(field.name, Any))
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            default = _NO_DEFAULT
        description = str(field.metadata.get("description", ""))
        found.append(HostSetting(field.name, kind, nullable, _plain(default), description))
    return found


def _plain(value: Any) -> Any:
    if value is _NO_DEFAULT or value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence):
        return [_plain(v) for v in value]
    raise TypeError(f"{type(value).__name__} {value!r} is not plain config")


#: The Python types a plain value of each kind may have (bools are not numbers here).
_ACCEPTS: dict[str, tuple[type, ...]] = {"str": (str,), "bool": (bool,), "int": (int,)}


def _check_value(type_name: str, setting: HostSetting, value: Any) -> Any:
    if value is None:
        if setting.nullable:
            return None
    elif setting.kind == "any":
        return value
    elif setting.kind == "float":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif setting.kind == "str_list":
        if isinstance(value, str):
            return [value]
        if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
            return list(value)
    elif isinstance(value, _ACCEPTS[setting.kind]) and (
        setting.kind == "bool" or not isinstance(value, bool)
    ):
        return value
    expected = {"str_list": "a string or a list of strings"}.get(setting.kind, f"a {setting.kind}")
    raise HostConfigError(
        f"host type {type_name!r} setting {setting.name!r} must be {expected}"
        f"{' or null' if setting.nullable else ''}, got {type(value).__name__} {value!r}"
    )


# -- the round trip -----------------------------------------------------------------------


def host_to_config(host: Host) -> dict[str, Any]:
    """``{"type": name, **settings}`` with plain JSON values; ``host_from_config``
    rebuilds an equal host from it (in another process, or after json.dumps)."""
    if not dataclasses.is_dataclass(host):
        raise HostConfigError(
            f"host {type(host).__name__} cannot be described as config: hosts are dataclasses "
            "of settings (such as LocalHost())"
        )
    name = host_type_of(host)
    settings = {key: _plain(value) for key, value in host.config_settings().items()}
    return {"type": name, **settings}


def host_from_config(config: Mapping[str, Any]) -> Host:
    """The host ``{"type": name, **settings}`` describes; settings left out take their
    defaults. Errors name the valid types, the valid settings, or the expected kind."""
    if not isinstance(config, Mapping):
        raise HostConfigError(
            f"a host config is a mapping such as {{'type': 'local'}}, got {type(config).__name__}"
        )
    settings = dict(config)
    name = settings.pop("type", None)
    if not isinstance(name, str):
        raise HostConfigError(
            f"a host config needs 'type', one of {', '.join(host_types())}; got {dict(config)!r}"
        )
    cls = host_class(name)
    known = {s.name: s for s in settings_of(cls)}
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise HostConfigError(
            f"unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"for host type {name!r}: valid settings are {', '.join(known)}"
        )
    missing = [s.name for s in known.values() if s.required and s.name not in settings]
    if missing:
        raise HostConfigError(f"host type {name!r} needs setting(s) {', '.join(missing)}")
    checked = {key: _check_value(name, known[key], value) for key, value in settings.items()}
    return cls(**checked)


# -- the CLI's string form ----------------------------------------------------------------


def _split_settings(text: str) -> list[str]:
    """Split ``a=1,b=[x,y]`` on the commas outside brackets and quotes."""
    parts: list[str] = []
    current: list[str] = []
    depth, quote = 0, ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return [p for p in (p.strip() for p in parts) if p]


def _parse_value(type_name: str, setting: HostSetting | None, text: str) -> Any:
    if setting is None or setting.kind == "any":
        try:
            return json.loads(text)
        except ValueError:
            return text
    if setting.nullable and text.lower() in ("null", "none"):
        return None
    if setting.kind == "str":
        return text
    if setting.kind == "str_list":
        if text.startswith("["):
            try:
                return json.loads(text)
            except ValueError:
                return [v.strip().strip("\"'") for v in text.strip("[]").split(",") if v.strip()]
        return [v for v in text.split("+") if v]
    if setting.kind == "bool":
        lowered = text.lower()
        if lowered in ("true", "yes", "1", "on"):
            return True
        if lowered in ("false", "no", "0", "off"):
            return False
    try:
        return int(text) if setting.kind == "int" else float(text)
    except ValueError:
        pass
    raise HostConfigError(
        f"host type {type_name!r} setting {setting.name!r} must be a {setting.kind}, got {text!r}"
    )


def parse_host_string(text: str) -> dict[str, Any]:
    """The config a command line names: ``local``, ``ec2:region_name=us-east-2,idle_timeout=60``
    (a list as ``[a,b]`` or ``a+b``), or the config as JSON."""
    text = text.strip()
    if text.startswith("{"):
        try:
            loaded = json.loads(text)
        except ValueError as exc:
            raise HostConfigError(f"host {text!r} is not valid JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise HostConfigError(f"host {text!r} must be a JSON object")
        return loaded
    name, _, rest = text.partition(":")
    name = name.strip()
    if not name:
        raise HostConfigError(f"host {text!r} names no type: use one of {', '.join(host_types())}")
    known = {s.name: s for s in settings_of(host_class(name))}
    config: dict[str, Any] = {"type": name}
    for part in _split_settings(rest):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not key:
            raise HostConfigError(
                f"host {text!r}: {part!r} must look like setting=value (settings of "
                f"{name!r}: {', '.join(known)})"
            )
        config[key] = _parse_value(name, known.get(key), value.strip())
    return config


def host_from_string(text: str) -> Host:
    """The host a command line names (see ``parse_host_string``)."""
    return host_from_config(parse_host_string(text))
