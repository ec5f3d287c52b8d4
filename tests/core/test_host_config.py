"""Hosts as plain config (``meadow_core.hosts.config``), ``--host`` on the command line,
and object stores opened by URL scheme: what lets adapters and the CLI name no cloud."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from meadow_core import (
    Host,
    HostConfigError,
    LocalHost,
    host_from_config,
    host_from_string,
    host_to_config,
    register_host,
)
from meadow_core import cli as cli_module
from meadow_core.hosts import config as host_config
from meadow_core.transport import open_store
from meadow_core.transport.local import LocalObjectStore


@dataclasses.dataclass(eq=False)
class TaggedHost(LocalHost):
    """A host with settings of its own: each is a setting everywhere, adapters unchanged."""

    tag: str = "blue"
    labels: list[str] = dataclasses.field(default_factory=list)
    retries: int = 1
    verbose: bool = False


@pytest.fixture
def tagged() -> Iterator[None]:
    register_host("tagged", f"{__name__}:TaggedHost")
    yield
    host_config._registry.pop("tagged", None)


def test_local_host_round_trips_through_json(tmp_path: Path) -> None:
    host = LocalHost(home=tmp_path, idle_timeout=12, logical_cpu=2)
    config = host_to_config(host)
    assert config == {
        "type": "local",
        "home": str(tmp_path),
        "idle_timeout": 12,
        "logical_cpu": 2,
        "memory_gb": None,
    }
    rebuilt = host_from_config(json.loads(json.dumps(config)))
    assert isinstance(rebuilt, LocalHost)
    assert host_config.host_type_of(rebuilt) == "local"
    assert (rebuilt.place.home, rebuilt.idle_timeout, rebuilt.logical_cpu) == (tmp_path, 12, 2)


def test_local_config_pins_the_resolved_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A triggerer with another $MEADOW_HOME must find the same home."""
    monkeypatch.setenv("MEADOW_HOME", str(tmp_path))
    assert host_to_config(LocalHost())["home"] == str(tmp_path)


def test_a_new_host_field_is_a_setting_with_no_other_change(tagged: None, tmp_path: Path) -> None:
    host = TaggedHost(home=tmp_path, tag="red", labels=["a", "b"], retries=3)
    config = host_to_config(host)
    assert config["type"] == "tagged" and config["labels"] == ["a", "b"]
    rebuilt = host_from_config(config)
    assert isinstance(rebuilt, TaggedHost)
    assert (rebuilt.tag, rebuilt.labels, rebuilt.retries) == ("red", ["a", "b"], 3)
    schema = {s.name: s for s in TaggedHost.config_schema()}
    assert (schema["tag"].kind, schema["tag"].default, schema["tag"].nullable) == (
        "str",
        "blue",
        False,
    )
    assert (schema["labels"].kind, schema["labels"].default) == ("str_list", [])
    assert (schema["retries"].kind, schema["verbose"].kind) == ("int", "bool")
    assert (schema["home"].kind, schema["home"].nullable) == ("str", True)
    assert schema["idle_timeout"].kind == "float" and not schema["idle_timeout"].required


def test_errors_name_the_valid_types_and_settings(tagged: None) -> None:
    with pytest.raises(HostConfigError, match=r"unknown host type 'gcp': choose one of .*local"):
        host_from_config({"type": "gcp"})
    with pytest.raises(HostConfigError, match=r"needs 'type', one of .*tagged"):
        host_from_config({"home": "/x"})
    with pytest.raises(
        HostConfigError,
        match=r"unknown setting 'colour' for host type 'tagged': valid settings are "
        r"home, idle_timeout, logical_cpu, memory_gb, tag, labels, retries, verbose",
    ):
        host_from_config({"type": "tagged", "colour": "red"})
    with pytest.raises(HostConfigError, match="unknown settings 'a', 'b'"):
        host_from_config({"type": "local", "a": 1, "b": 2})
    with pytest.raises(HostConfigError, match="'idle_timeout' must be a float, got str"):
        host_from_config({"type": "local", "idle_timeout": "soon"})
    with pytest.raises(HostConfigError, match="'retries' must be a int, got bool"):
        host_from_config({"type": "tagged", "retries": True})
    with pytest.raises(HostConfigError, match="'tag' must be a str, got NoneType"):
        host_from_config({"type": "tagged", "tag": None})
    with pytest.raises(HostConfigError, match="is a mapping"):
        host_from_config("local")  # type: ignore[arg-type]


def test_an_unregistered_or_unimportable_host_says_how_to_fix_it() -> None:
    with pytest.raises(HostConfigError, match=r"TaggedHost is not registered.*register_host"):
        host_to_config(TaggedHost())
    register_host("broken", "no_such_module_for_meadow:Host")
    try:
        with pytest.raises(HostConfigError, match=r"'broken'.*cannot be imported"):
            host_from_config({"type": "broken"})
    finally:
        host_config._registry.pop("broken")


def test_third_party_hosts_come_from_the_entry_point_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    entry = importlib.metadata.EntryPoint(
        name="plugged", value=f"{__name__}:TaggedHost", group=host_config.ENTRY_POINT_GROUP
    )

    def entry_points(group: str) -> list[importlib.metadata.EntryPoint]:
        return [entry] if group == host_config.ENTRY_POINT_GROUP else []

    monkeypatch.setattr(host_config, "_registry", dict(host_config._BUILTIN))
    monkeypatch.setattr(host_config, "_entry_points_loaded", False)
    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    assert "plugged" in host_config.host_types()
    assert isinstance(host_from_config({"type": "plugged", "tag": "x"}), TaggedHost)


def test_the_string_form(tagged: None, tmp_path: Path) -> None:
    assert host_config.parse_host_string("local") == {"type": "local"}
    assert host_config.parse_host_string(
        f"tagged:home={tmp_path},idle_timeout=60,labels=[a, b],retries=2,verbose=yes,tag=x=y"
    ) == {
        "type": "tagged",
        "home": str(tmp_path),
        "idle_timeout": 60.0,
        "labels": ["a", "b"],
        "retries": 2,
        "verbose": True,
        "tag": "x=y",
    }
    assert host_config.parse_host_string("tagged:labels=a+b,logical_cpu=null")["labels"] == [
        "a",
        "b",
    ]
    assert host_config.parse_host_string('{"type": "local", "idle_timeout": 5}') == {
        "type": "local",
        "idle_timeout": 5,
    }
    host = host_from_string(f"local:home={tmp_path},logical_cpu=1.5")
    assert isinstance(host, LocalHost) and host.logical_cpu == 1.5
    with pytest.raises(HostConfigError, match="'retries' must be a int, got 'many'"):
        host_config.parse_host_string("tagged:retries=many")
    with pytest.raises(HostConfigError, match="must look like setting=value"):
        host_config.parse_host_string("tagged:verbose")
    with pytest.raises(HostConfigError, match="unknown host type 'nope'"):
        host_from_string("nope:a=1")


def test_credentials_are_a_no_op_for_a_host_that_needs_none() -> None:
    host: Host = LocalHost()
    assert not host.takes_credentials
    with host.credentials({"anything": "at all"}):
        pass


def _cli(*args: str) -> Any:
    return CliRunner().invoke(cli_module.cli, list(args), obj={})


def test_cli_host_option(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[Host] = []
    monkeypatch.setattr(
        cli_module.api, "list_jobs_sync", lambda host, limit: seen.append(host) or []
    )
    assert _cli("--idle-timeout", "7", "--host", f"local:home={tmp_path}", "jobs").exit_code == 0
    assert isinstance(seen[-1], LocalHost)
    assert (seen[-1].place.home, seen[-1].idle_timeout) == (tmp_path, 7)
    # A setting given in --host wins over the global option of the same name.
    assert _cli("--idle-timeout", "7", "--host", "local:idle_timeout=9", "jobs").exit_code == 0
    assert seen[-1].idle_timeout == 9

    result = _cli("--host", "gcp", "jobs")
    assert result.exit_code == 2 and "unknown host type 'gcp'" in result.output
    result = _cli("--host", "local:colour=red", "jobs")
    assert result.exit_code == 2 and "valid settings are home, idle_timeout" in result.output
    result = _cli("--host", "local", "--ec2", "jobs")
    assert result.exit_code == 2 and "leave out --ec2 and --region" in result.output


def test_open_store_by_scheme(tmp_path: Path) -> None:
    for location in (str(tmp_path), f"file://{tmp_path}"):
        store = open_store(location)
        assert isinstance(store, LocalObjectStore) and store.root == tmp_path
    with pytest.raises(
        ValueError, match=r"no object store for 'gopher://x': known schemes .*s3://"
    ):
        open_store("gopher://x")
