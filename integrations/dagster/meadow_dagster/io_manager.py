"""``meadow_io_manager``: step outputs kept in Meadow's object store.

A step on one machine writes its outputs where a step on another machine (and the
orchestrating process, for ``output_for_node``) can read them: the object store of
the Meadow host (``Host.object_store()``). For ``LocalHost`` that is
``<home>/store/<prefix>/...``; inside a Meadow task the task's own store is used
(``meadow_core.current_task().store``), so the same code works on cloud hosts.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Mapping
from typing import Any

import cloudpickle
from dagster import ConfigurableIOManager, InputContext, OutputContext
from pydantic import Field

from meadow_core import LocalHost, current_task, host_from_config


class _Store:
    """The smallest store interface used here: put, get, exists."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def put(self, key: str, data: bytes) -> None:
        self.backend.put(key, data)

    def get(self, key: str) -> bytes:
        return bytes(self.backend.get(key))

    def exists(self, key: str) -> bool:
        return bool(self.backend.exists(key))


def _host_config(host: Mapping[str, Any]) -> dict[str, Any]:
    """``{"type": name, **settings}`` from that form or the executor's ``{name: {...}}``."""
    if "type" in host:
        return dict(host)
    if len(host) != 1:
        raise ValueError(
            f"MeadowIOManager host= is one host config such as the executor's "
            f"{{'local': {{}}}} or {{'type': 'local'}}, got {dict(host)!r}"
        )
    ((name, settings),) = host.items()
    return {"type": name, **(settings or {})}


def object_store(
    home: str | None,
    host: Mapping[str, Any] | None = None,
    credentials: Mapping[str, str] | None = None,
) -> _Store:
    """The Meadow object store to use here: the task's own; else that of ``host`` (a
    host config, reached with ``credentials`` through the host's hook); else
    LocalHost's at ``home``."""
    try:
        task = current_task()
    except Exception:  # outside a task: use the host's store below
        task = None
    if task is not None:
        return _Store(task.store)
    if host is not None:
        chosen = host_from_config(_host_config(host))
        if not credentials:
            return _Store(chosen.object_store())
        with chosen.credentials(dict(credentials)):  # the store's client keeps them
            return _Store(chosen.object_store())
    # LocalHost's store is a directory under its home; reaching it needs no agent.
    return _Store(LocalHost(home=home).object_store())


class MeadowIOManager(ConfigurableIOManager):
    """Pickles outputs into the Meadow object store so steps on any machine share them.

    Keys are ``<prefix>/<run id>/<step>/<output>`` for ops and
    ``<prefix>/assets/<asset key path>`` for assets, so a later run loads an asset
    materialized by an earlier one.
    """

    home: str | None = Field(
        default=None, description="LocalHost home (default $MEADOW_HOME); unused in a task."
    )
    prefix: str = Field(default="dagster", description="Key prefix inside the store.")
    host: dict[str, Any] | None = Field(
        default=None,
        description="The executor's host config (``{ec2: {region_name: ...}}`` or "
        "``{type: ec2, ...}``), so that the orchestrating process (output_for_node, a later "
        "run's assets) reads outputs from that host's store; default: LocalHost at home.",
    )
    ec2_region: str | None = Field(
        default=None, description="Deprecated: host={'ec2': {'region_name': ...}}."
    )
    credentials: dict[str, str] | None = Field(
        default=None,
        description="Credentials for the host's store in the orchestrating process, as "
        "the executor's credentials (values may be EnvVar(...)); tasks use their own.",
    )

    def _host(self) -> dict[str, Any] | None:
        if self.host is None and self.ec2_region is not None:
            return {"type": "ec2", "region_name": self.ec2_region}
        return self.host

    def _key(self, context: InputContext | OutputContext) -> str:
        if isinstance(context, InputContext) and not context.has_asset_key:
            # Loading an output for inspection (output_for_node): key by its producer.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # dagster#7900: fine for a key lookup
                upstream = context.upstream_output
                if upstream is not None:
                    return self._key(upstream)
        if context.has_asset_key:
            parts = ["assets", *context.get_asset_identifier()]
        else:
            parts = list(context.get_identifier())
        clean = [str(p).replace("/", "_").replace("..", "_") for p in parts]
        return "/".join([self.prefix, *clean])

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        if context.dagster_type.is_nothing:
            return
        key = self._key(context)
        data = cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        object_store(self.home, self._host(), self.credentials).put(key, data)
        context.add_output_metadata({"meadow_key": key, "bytes": len(data)})

    def load_input(self, context: InputContext) -> Any:
        if context.dagster_type.is_nothing:
            return None
        key = self._key(context)
        store = object_store(self.home, self._host(), self.credentials)
        if not store.exists(key):
            raise FileNotFoundError(
                f"no output stored under {key!r} in the Meadow object store; did the "
                "upstream step use meadow_io_manager with the same home and prefix?"
            )
        return pickle.loads(store.get(key))


#: The ready-made resource: ``resource_defs={"io_manager": meadow_io_manager}``.
meadow_io_manager = MeadowIOManager()
