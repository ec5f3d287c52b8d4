"""The EC2 price source for the fleet layer's ``Catalog``.

Instance types come from ``describe_instance_types``, on-demand prices from the Pricing
API, spot prices from ``describe_spot_price_history`` and eviction-rate bands from AWS's
spot advisor data (an `EvictionSource`; by default the shipped snapshot's, since the
advisor is a web download and a live fetch can be plugged in). moto has no Pricing API
and answers every spot query with $0.00001: those answers count as unavailable, so the
snapshot shipped in ``data/`` is used, which is also what ``MEADOW_AWS_CATALOG=snapshot``
forces for offline use and tests.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import platformdirs

from meadow_core.clouds.aws import session
from meadow_core.fleet.catalog import (
    DEFAULT_TTL,
    EVICTION_BANDS,
    Catalog,
    CatalogData,
    InstanceType,
    band_rate,
)

__all__ = [
    "DEFAULT_TTL",
    "ENV_SOURCE",
    "EVICTION_BANDS",
    "CatalogData",
    "Ec2Catalog",
    "Ec2PriceSource",
    "InstanceType",
    "band_rate",
    "load_snapshot",
    "spot_advisor_bands",
]

log = logging.getLogger(__name__)

#: ``snapshot`` reads only the shipped snapshot; ``live`` (default) asks the APIs.
ENV_SOURCE = "MEADOW_AWS_CATALOG"
SNAPSHOT_FILE = "ec2-us-east-2-2022-11.json"
#: Below this a spot price is an emulator's placeholder, not a market price.
_PLACEHOLDER_PRICE = 0.0001

#: Region -> {instance type: eviction band index}; None when it has no data.
EvictionSource = Callable[[str], Mapping[str, int] | None]


def load_snapshot() -> CatalogData:
    """The snapshot shipped in the package (see ``data/README.md``)."""
    path = importlib_resources.files("meadow_core.clouds.aws") / "data" / SNAPSHOT_FILE
    return CatalogData.from_json(path.read_text())


def snapshot_eviction_bands(region: str) -> Mapping[str, int] | None:
    """The default `EvictionSource`: the snapshot's bands (another region's are a guess)."""
    snapshot = load_snapshot()
    if region != snapshot.region:
        log.warning(
            "no spot advisor data for %s offline; using %s's bands from %s",
            region,
            snapshot.region,
            snapshot.date,
        )
    return snapshot.eviction_band


def spot_advisor_bands(document: Mapping[str, Any], region: str) -> dict[str, int] | None:
    """Bands from AWS's public spot advisor JSON (``spot-advisor-data.json``), for a live
    `EvictionSource` that downloads it."""
    linux = document.get("spot_advisor", {}).get(region, {}).get("Linux")
    if not linux:
        return None
    return {name: int(entry["r"]) for name, entry in linux.items() if "r" in entry}


def _flags_from_api(item: Mapping[str, Any]) -> frozenset[str]:
    flags: set[str] = set()
    vendor = str(item.get("ProcessorInfo", {}).get("Manufacturer", "")).lower()
    if vendor in ("intel", "amd"):
        flags.add(vendor)
    for gpu in item.get("GpuInfo", {}).get("Gpus", []):
        maker = str(gpu.get("Manufacturer", "")).lower()
        if maker == "nvidia":
            # K80s (p2) need drivers current CUDA no longer supports.
            flags.add("nvidia-old" if gpu.get("Name") == "K80" else "nvidia")
        elif maker == "amd":
            flags.add("amd_gpu")
    return frozenset(flags)


def instance_type_from_api(item: Mapping[str, Any]) -> InstanceType | None:
    """An `InstanceType` from one ``describe_instance_types`` entry; None for types
    Meadow cannot run on (Mac hosts, 32-bit only)."""
    archs = item.get("ProcessorInfo", {}).get("SupportedArchitectures", [])
    arch = "x86_64" if "x86_64" in archs else "arm64" if "arm64" in archs else None
    name = str(item["InstanceType"])
    if arch is None or name.startswith("mac"):
        return None
    gpu_info = item.get("GpuInfo", {})
    gpus = sum(float(g.get("Count", 0)) for g in gpu_info.get("Gpus", []))
    return InstanceType(
        name=name,
        logical_cpu=float(item["VCpuInfo"]["DefaultVCpus"]),
        memory_gb=item["MemoryInfo"]["SizeInMiB"] / 1024,
        gpus=gpus,
        gpu_memory_gb=gpu_info.get("TotalGpuMemoryInMiB", 0) / 1024,
        architecture=arch,
        flags=_flags_from_api(item) | {arch},
    )


def _on_demand_price(document: Mapping[str, Any]) -> tuple[str, float] | None:
    name = document.get("product", {}).get("attributes", {}).get("instanceType")
    for term in document.get("terms", {}).get("OnDemand", {}).values():
        for dimension in term.get("priceDimensions", {}).values():
            usd = dimension.get("pricePerUnit", {}).get("USD")
            if name and usd and float(usd) > 0:
                return str(name), float(usd)
    return None


def _is_placeholder(price: float, timestamp: Any) -> bool:
    year = getattr(timestamp, "year", 9999)
    return price < _PLACEHOLDER_PRICE or year < 2017


class Ec2PriceSource:
    """The ``PriceSource`` of one EC2 region."""

    cloud = "EC2"
    mode_variable = ENV_SOURCE
    errors: tuple[type[BaseException], ...] = (
        botocore.exceptions.BotoCoreError,
        botocore.exceptions.ClientError,
    )

    def __init__(self, region: str, eviction_source: EvictionSource) -> None:
        self.region = region
        self.region_name = region
        self.eviction_source = eviction_source
        self.eviction_name = getattr(eviction_source, "__name__", "eviction source")

    def snapshot(self) -> CatalogData:
        return load_snapshot()

    def cache_key(self) -> str:
        endpoint = os.environ.get("AWS_ENDPOINT_URL", "")
        return hashlib.sha256(endpoint.encode()).hexdigest()[:12]

    def check_region(self, live: bool) -> None:
        """Raise `UnknownRegionError` for a region that does not exist; asks EC2 where
        it is reachable, otherwise checks botocore's offline list."""
        if live:
            try:
                session.check_region(self.region)
                return
            except session.AwsConfigurationError:
                raise
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                log.info("describe_regions unavailable (%s); checking offline", exc)
        known: set[str] = set()
        boto = boto3.session.Session()
        for partition in boto.get_available_partitions():
            known.update(boto.get_available_regions("ec2", partition_name=partition))
        if self.region not in known:
            raise session.UnknownRegionError(
                f"unknown AWS region {self.region!r}: use one of {sorted(known)}; "
                "see them with `aws ec2 describe-regions --all-regions --query "
                "'Regions[].RegionName'`"
            )

    def eviction_bands(self) -> Mapping[str, int] | None:
        return self.eviction_source(self.region)

    def instance_types(self) -> dict[str, InstanceType]:
        ec2 = session.client("ec2", self.region_name)
        result = {}
        for page in ec2.get_paginator("describe_instance_types").paginate():
            for item in page["InstanceTypes"]:
                kind = instance_type_from_api(item)
                if kind is not None:
                    result[kind.name] = kind
        return result

    def on_demand(self) -> dict[str, float]:
        # The Pricing API lives in us-east-1 and answers for every region.
        pricing = session.client("pricing", "us-east-1")
        filters = {
            "regionCode": self.region_name,
            "operatingSystem": "Linux",
            "tenancy": "Shared",
            "preInstalledSw": "NA",
            "capacitystatus": "Used",
            "licenseModel": "No License required",
        }
        result: dict[str, float] = {}
        pages = pricing.get_paginator("get_products").paginate(
            ServiceCode="AmazonEC2",
            Filters=[{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in filters.items()],
        )
        for page in pages:
            for text in page["PriceList"]:
                found = _on_demand_price(json.loads(text))
                if found:
                    result[found[0]] = found[1]
        return result

    def spot(self) -> dict[str, float]:
        """Current spot price per type, the highest over availability zones (a launch
        may land in any); placeholder answers are dropped."""
        ec2 = session.client("ec2", self.region_name)
        now = datetime.datetime.now(datetime.UTC)
        result: dict[str, float] = {}
        pages = ec2.get_paginator("describe_spot_price_history").paginate(
            ProductDescriptions=["Linux/UNIX", "Linux/UNIX (Amazon VPC)"],
            StartTime=now,
            EndTime=now,
        )
        placeholders = 0
        for page in pages:
            for entry in page["SpotPriceHistory"]:
                price = float(entry["SpotPrice"])
                if _is_placeholder(price, entry.get("Timestamp")):
                    placeholders += 1
                    continue
                name = entry["InstanceType"]
                result[name] = max(price, result.get(name, 0.0))
        if placeholders and not result:
            log.info("spot price history in %s holds only placeholders", self.region_name)
        return result


class Ec2Catalog(Catalog):
    """Offers of one EC2 region, from the APIs (cached) or the shipped snapshot."""

    def __init__(
        self,
        region_name: str,
        ttl: float = DEFAULT_TTL,
        *,
        cache_dir: Path | None = None,
        eviction_source: EvictionSource = snapshot_eviction_bands,
    ) -> None:
        super().__init__(
            Ec2PriceSource(region_name, eviction_source),
            ttl,
            cache_dir or Path(platformdirs.user_cache_dir("meadow")) / "aws-catalog",
        )
