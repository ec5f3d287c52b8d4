"""The EC2 price catalog: shipped snapshot, live APIs through moto, fallbacks, cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from meadow_core.allocation.selection import select
from meadow_core.clouds.aws import session
from meadow_core.clouds.aws.catalog import (
    ENV_SOURCE,
    CatalogData,
    Ec2Catalog,
    load_snapshot,
    spot_advisor_bands,
)
from meadow_core.errors import InvalidRequestError
from meadow_core.resources import Resources

#: Common types whose CPU and memory must agree between moto's describe_instance_types
#: (AWS's real specifications) and the shipped snapshot.
COMMON = [
    "t3.micro",
    "t3.medium",
    "m5.large",
    "m5.4xlarge",
    "c5.xlarge",
    "c6i.8xlarge",
    "r5.2xlarge",
    "m6a.large",
    "g4dn.xlarge",
    "g4dn.12xlarge",
    "x1e.32xlarge",
]


def test_snapshot_records_region_date_and_the_whole_catalog() -> None:
    data = load_snapshot()
    assert (data.region, data.date) == ("us-east-2", "2022-11")
    offers = data.offers()
    assert len(offers) == 783
    assert sum(o.spot for o in offers) == 389
    c5 = {o.spot: o for o in offers if o.instance_type == "c5.xlarge"}
    assert (c5[False].logical_cpu, c5[False].memory_gb) == (4.0, 8.0)
    assert {"intel", "avx512", "x86_64"} <= c5[False].flags
    assert c5[False].eviction_rate == 0 and c5[True].eviction_rate in (2.5, 8.0, 13.5, 19.0, 61.0)
    assert c5[True].price_per_hour < c5[False].price_per_hour
    g4dn = next(o for o in offers if o.instance_type == "g4dn.xlarge")
    assert (g4dn.gpus, g4dn.gpu_memory_gb) == (1.0, 16.0) and "nvidia" in g4dn.flags
    # The file round-trips through the project's own format.
    again = CatalogData.from_json(data.to_json())
    assert again.offers() == offers


def test_snapshot_mode_works_without_any_aws_configuration(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(ENV_SOURCE, "snapshot")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    cat = Ec2Catalog("us-east-2", cache_dir=tmp_path / "cache")
    assert len(cat.offers()) == 783
    assert "u-12tb1.112xlarge" in cat.largest_fit_description()
    assert not (tmp_path / "cache").exists()  # nothing fetched, nothing cached
    with pytest.raises(session.UnknownRegionError, match="describe-regions"):
        Ec2Catalog("us-esat-2", cache_dir=tmp_path).offers()


def test_an_unknown_catalog_mode_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_SOURCE, "offline-please")
    with pytest.raises(InvalidRequestError, match="snapshot"):
        Ec2Catalog("us-east-2").offers()


def test_spot_advisor_document_is_read_into_bands() -> None:
    document = {
        "ranges": [{"index": 0, "label": "<5%", "max": 5}],
        "spot_advisor": {
            "us-east-2": {"Linux": {"c5.xlarge": {"s": 70, "r": 0}, "m5.large": {"s": 60, "r": 4}}}
        },
    }
    assert spot_advisor_bands(document, "us-east-2") == {"c5.xlarge": 0, "m5.large": 4}
    assert spot_advisor_bands(document, "eu-west-1") is None


@pytest.fixture
def live_env(aws_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """moto with the catalog in its default (live) mode."""
    monkeypatch.delenv(ENV_SOURCE, raising=False)
    session.reset()
    return aws_env


def test_live_catalog_against_moto_falls_back_to_the_snapshot_for_prices(
    live_env: dict[str, str], tmp_path: Path
) -> None:
    cat = Ec2Catalog("us-east-2", cache_dir=tmp_path)
    offers = cat.offers()
    sources = cat.sources
    # moto has real instance types, no Pricing API, and placeholder spot prices.
    assert sources["instance_types"] == "live"
    assert sources["on_demand"].startswith("snapshot us-east-2 2022-11")
    assert sources["spot"].startswith("snapshot")
    assert min(o.price_per_hour for o in offers) > 0.001  # no $0.00001 placeholders
    snapshot = {(o.instance_type, o.spot): o.price_per_hour for o in load_snapshot().offers()}
    for o in offers:
        assert o.price_per_hour == snapshot[(o.instance_type, o.spot)]
    assert len(offers) > 700
    plan = select(Resources(logical_cpu=2, memory_gb=4), 10, offers, where=cat.describe())
    assert plan.instances_to_launch >= 1
    # The merged catalog is cached on disk for the next caller.
    assert len(list(tmp_path.glob("ec2-us-east-2-*.json"))) == 1

    # moto's describe_instance_types (AWS's real specifications) agrees with the snapshot.
    live, shipped = cat.data().types, load_snapshot().types
    for name in COMMON:
        assert (live[name].logical_cpu, live[name].memory_gb, live[name].gpus) == (
            shipped[name].logical_cpu,
            shipped[name].memory_gb,
            shipped[name].gpus,
        ), name
    both = set(live) & set(shipped)
    agree = [
        n
        for n in both
        if (live[n].logical_cpu, live[n].memory_gb)
        == (shipped[n].logical_cpu, shipped[n].memory_gb)
    ]
    assert len(both) > 350 and len(agree) >= 0.98 * len(both)
    # Flags the API does not state (AVX levels) are kept from the snapshot.
    assert {"avx512", "intel"} <= live["c5.xlarge"].flags


def test_a_fresh_cache_is_used_without_asking_aws(
    live_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cat = Ec2Catalog("us-east-2", cache_dir=tmp_path)
    cached = load_snapshot()
    cached.sources = {"marker": "written by this test"}
    cat._store(cat._cache_path(), cached)

    def no_aws(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached catalog should not call AWS")

    monkeypatch.setattr(session, "client", no_aws)
    assert cat.sources == {"marker": "written by this test"}
    assert cat.offers() == cached.offers()
    # A cache for another endpoint (say, real AWS after the dev cloud) is not reused.
    monkeypatch.setenv("AWS_ENDPOINT_URL", live_env["AWS_ENDPOINT_URL"] + "/")
    with pytest.raises(AssertionError, match="cached catalog"):
        Ec2Catalog("us-east-2", cache_dir=tmp_path).offers()
    monkeypatch.setenv("AWS_ENDPOINT_URL", live_env["AWS_ENDPOINT_URL"])
    with pytest.raises(AssertionError, match="cached catalog"):
        Ec2Catalog("us-east-2", ttl=0, cache_dir=tmp_path).offers()


def test_unknown_region_is_refused_by_describe_regions(
    live_env: dict[str, str], tmp_path: Path
) -> None:
    with pytest.raises(session.UnknownRegionError) as caught:
        Ec2Catalog("us-east-7", cache_dir=tmp_path).offers()
    assert "describe-regions" in str(caught.value)
    assert not list(tmp_path.iterdir())
