"""The EC2 price catalog: what each instance type offers and costs, on-demand and spot.

Instance types come from ``describe_instance_types``, on-demand prices from the Pricing
API, spot prices from ``describe_spot_price_history`` and eviction-rate bands from AWS's
spot advisor data (an `EvictionSource`; by default the shipped snapshot's, since the
advisor is a web download and a live fetch can be plugged in). The merged result is
cached on disk for ``ttl`` seconds per region and endpoint. Any source that is
unavailable or returns placeholders (moto has no Pricing API and answers every spot
query with $0.00001) falls back to the snapshot shipped in ``data/``, which is also what
``MEADOW_AWS_CATALOG=snapshot`` forces for offline use and tests.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import platformdirs

from meadow_core.allocation.selection import Offer, largest_description
from meadow_core.clouds.aws import session
from meadow_core.errors import InvalidRequestError

log = logging.getLogger(__name__)

#: ``snapshot`` reads only the shipped snapshot; ``live`` (default) asks the APIs.
ENV_SOURCE = "MEADOW_AWS_CATALOG"
DEFAULT_TTL = 4 * 3600.0
FORMAT = "meadow-ec2-catalog/1"
SNAPSHOT_FILE = "ec2-us-east-2-2022-11.json"
#: Spot advisor interruption bands (upper bounds in percent, as AWS publishes them);
#: a type's eviction rate is its band's midpoint, as Meadowrun did.
EVICTION_BANDS: tuple[tuple[str, float], ...] = (
    ("<5%", 5.0),
    ("5-10%", 11.0),
    ("10-15%", 16.0),
    ("15-20%", 22.0),
    (">20%", 100.0),
)
#: Eviction rate assumed for a spot type the advisor does not list.
UNKNOWN_EVICTION_RATE = 80.0
#: Below this a spot price is an emulator's placeholder, not a market price.
_PLACEHOLDER_PRICE = 0.0001
_COLUMNS = (
    "logical_cpu",
    "memory_gb",
    "gpus",
    "gpu_memory_gb",
    "architecture",
    "flags",
    "on_demand",
    "spot",
    "eviction_band",
)

#: Region -> {instance type: eviction band index}; None when it has no data.
EvictionSource = Callable[[str], Mapping[str, int] | None]


def band_rate(band: int | None) -> float:
    """Midpoint eviction rate (percent) of a spot advisor band."""
    if band is None or not 0 <= band < len(EVICTION_BANDS):
        return UNKNOWN_EVICTION_RATE
    low = EVICTION_BANDS[band - 1][1] if band else 0.0
    return (low + EVICTION_BANDS[band][1]) / 2


@dataclasses.dataclass(frozen=True)
class InstanceType:
    """Hardware of one instance type; ``flags`` are what ``flags_required`` matches."""

    name: str
    logical_cpu: float
    memory_gb: float
    gpus: float
    gpu_memory_gb: float
    architecture: str
    flags: frozenset[str]


@dataclasses.dataclass
class CatalogData:
    """One region's instance types, prices and eviction bands, and where each came from."""

    region: str
    date: str
    sources: dict[str, str]
    types: dict[str, InstanceType]
    on_demand: dict[str, float]
    spot: dict[str, float]
    eviction_band: dict[str, int]

    def offers(self) -> list[Offer]:
        """An on-demand offer per priced type, plus a spot offer where spot is priced."""
        result = []
        for name, kind in self.types.items():
            base = Offer(
                instance_type=name,
                spot=False,
                price_per_hour=self.on_demand.get(name, 0.0),
                logical_cpu=kind.logical_cpu,
                memory_gb=kind.memory_gb,
                gpus=kind.gpus,
                gpu_memory_gb=kind.gpu_memory_gb,
                flags=kind.flags,
                architecture=kind.architecture,
            )
            if name in self.on_demand:
                result.append(base)
            if name in self.spot:
                rate = band_rate(self.eviction_band.get(name))
                result.append(
                    dataclasses.replace(
                        base, spot=True, price_per_hour=self.spot[name], eviction_rate=rate
                    )
                )
        return result

    def to_json(self) -> str:
        """The compact file format: one line per instance type, for readable diffs."""
        head = {
            "format": FORMAT,
            "region": self.region,
            "date": self.date,
            "sources": self.sources,
            "eviction_bands": [{"label": label, "max": top} for label, top in EVICTION_BANDS],
            "columns": list(_COLUMNS),
        }
        lines = []
        for name in sorted(self.types):
            kind = self.types[name]
            row = [
                kind.logical_cpu,
                kind.memory_gb,
                kind.gpus,
                kind.gpu_memory_gb,
                kind.architecture,
                " ".join(sorted(kind.flags)),
                self.on_demand.get(name),
                self.spot.get(name),
                self.eviction_band.get(name),
            ]
            lines.append(f"    {json.dumps(name)}: {json.dumps(row)}")
        top = [f"  {json.dumps(key)}: {json.dumps(value)}" for key, value in head.items()]
        body = "{\n" + ",\n".join(lines) + "\n  }"
        return "{\n" + ",\n".join(top) + f',\n  "instance_types": {body}\n}}\n'

    @classmethod
    def from_json(cls, text: str) -> CatalogData:
        raw = json.loads(text)
        if raw.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} file (format={raw.get('format')!r})")
        data = cls(raw["region"], raw["date"], dict(raw["sources"]), {}, {}, {}, {})
        for name, row in raw["instance_types"].items():
            cpu, mem, gpus, gpu_mem, arch, flags, on_demand, spot, band = row
            data.types[name] = InstanceType(
                name,
                float(cpu),
                float(mem),
                float(gpus),
                float(gpu_mem),
                arch,
                frozenset(flags.split()),
            )
            if on_demand is not None:
                data.on_demand[name] = float(on_demand)
            if spot is not None:
                data.spot[name] = float(spot)
            if band is not None:
                data.eviction_band[name] = int(band)
        return data


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


class Ec2Catalog:
    """Offers of one region, from the APIs (cached) or the shipped snapshot."""

    def __init__(
        self,
        region_name: str,
        ttl: float = DEFAULT_TTL,
        *,
        cache_dir: Path | None = None,
        eviction_source: EvictionSource = snapshot_eviction_bands,
    ) -> None:
        self.region_name = region_name
        self.ttl = ttl
        self.cache_dir = cache_dir or Path(platformdirs.user_cache_dir("meadow")) / "aws-catalog"
        self.eviction_source = eviction_source
        self._data: CatalogData | None = None
        self._loaded_at = 0.0
        self._offers: list[Offer] | None = None

    # -- the interface the host uses ---------------------------------------------------

    def offers(self) -> list[Offer]:
        """Every offer of the region (on-demand and spot)."""
        data = self.data()
        if self._offers is None:
            self._offers = data.offers()
        return self._offers

    def data(self) -> CatalogData:
        if self._data is None or time.time() - self._loaded_at > self.ttl:
            self._data = self._load()
            self._loaded_at = time.time()
            self._offers = None
        return self._data

    @property
    def sources(self) -> dict[str, str]:
        """Where each part of the catalog came from (``live``, ``snapshot ...``)."""
        return self.data().sources

    def largest_fit_description(self) -> str:
        """The largest types by CPUs, memory and GPUs, for "too large" errors."""
        return largest_description(self.offers())

    def describe(self) -> str:
        """Names the catalog in error messages."""
        data = self.data()
        return f"{self.region_name} (prices as of {data.date})"

    def check_region(self) -> None:
        """Raise `UnknownRegionError` for a region that does not exist; asks EC2 where
        it is reachable, otherwise checks botocore's offline list."""
        if self._mode() == "live":
            try:
                session.check_region(self.region_name)
                return
            except session.AwsConfigurationError:
                raise
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                log.info("describe_regions unavailable (%s); checking offline", exc)
        known: set[str] = set()
        boto = boto3.session.Session()
        for partition in boto.get_available_partitions():
            known.update(boto.get_available_regions("ec2", partition_name=partition))
        if self.region_name not in known:
            raise session.UnknownRegionError(
                f"unknown AWS region {self.region_name!r}: use one of {sorted(known)}; "
                "see them with `aws ec2 describe-regions --all-regions --query "
                "'Regions[].RegionName'`"
            )

    # -- loading -----------------------------------------------------------------------

    def _mode(self) -> str:
        mode = os.environ.get(ENV_SOURCE, "live").strip().lower() or "live"
        if mode not in ("live", "snapshot"):
            raise InvalidRequestError(
                f"{ENV_SOURCE}={mode!r} is not understood: use 'snapshot' (offline, the "
                "prices shipped with Meadow) or 'live' (the AWS APIs, cached)"
            )
        return mode

    def _cache_path(self) -> Path:
        endpoint = os.environ.get("AWS_ENDPOINT_URL", "")
        digest = hashlib.sha256(endpoint.encode()).hexdigest()[:12]
        return self.cache_dir / f"ec2-{self.region_name}-{digest}.json"

    def _load(self) -> CatalogData:
        if self._mode() == "snapshot":
            self.check_region()
            data = load_snapshot()
            if data.region != self.region_name:
                log.warning(
                    "the shipped price snapshot is for %s; using it for %s",
                    data.region,
                    self.region_name,
                )
            return data
        path = self._cache_path()
        try:
            if time.time() - path.stat().st_mtime < self.ttl:
                return CatalogData.from_json(path.read_text())
        except (OSError, ValueError, KeyError) as exc:
            log.debug("catalog cache %s unusable: %s", path, exc)
        self.check_region()  # a cached region was checked when it was fetched
        data = self._fetch()
        self._store(path, data)
        return data

    def _store(self, path: Path, data: CatalogData) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".catalog-")
            with os.fdopen(fd, "w") as out:
                out.write(data.to_json())
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("could not cache the EC2 catalog at %s: %s", path, exc)

    def _fetch(self) -> CatalogData:
        """Ask each API; any that fails or returns placeholders falls back to the snapshot."""
        snapshot = load_snapshot()
        stale = f"snapshot {snapshot.region} {snapshot.date}"
        sources: dict[str, str] = {}

        types = self._attempt("instance types", self._fetch_types)
        if types:
            for name, kind in list(types.items()):
                known = snapshot.types.get(name)
                if known is not None:  # the snapshot knows AVX levels the API does not say
                    types[name] = dataclasses.replace(kind, flags=kind.flags | known.flags)
            sources["instance_types"] = "live"
        else:
            types, sources["instance_types"] = dict(snapshot.types), stale

        on_demand = self._attempt("on-demand prices", self._fetch_on_demand)
        if on_demand:
            sources["on_demand"] = "live"
        else:
            on_demand, sources["on_demand"] = dict(snapshot.on_demand), stale

        spot = self._attempt("spot prices", self._fetch_spot) or {}
        if spot:
            sources["spot"] = "live"
        else:
            spot, sources["spot"] = dict(snapshot.spot), stale

        bands = self._attempt("eviction rates", lambda: self.eviction_source(self.region_name))
        sources["eviction"] = getattr(self.eviction_source, "__name__", "eviction source")
        types = {name: kind for name, kind in types.items() if name in on_demand or name in spot}
        return CatalogData(
            region=self.region_name,
            date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%MZ"),
            sources=sources,
            types=types,
            on_demand={n: p for n, p in on_demand.items() if n in types},
            spot={n: p for n, p in spot.items() if n in types},
            eviction_band={n: b for n, b in (bands or {}).items() if n in types},
        )

    def _attempt(self, what: str, fetch: Callable[[], Any]) -> Any:
        try:
            return fetch()
        except (
            botocore.exceptions.BotoCoreError,
            botocore.exceptions.ClientError,
            OSError,
            ValueError,
            KeyError,
        ) as exc:
            log.warning(
                "EC2 %s unavailable in %s (%s); using the snapshot",
                what,
                self.region_name,
                str(exc).splitlines()[0][:200],
            )
            return None

    def _fetch_types(self) -> dict[str, InstanceType]:
        ec2 = session.client("ec2", self.region_name)
        result = {}
        for page in ec2.get_paginator("describe_instance_types").paginate():
            for item in page["InstanceTypes"]:
                kind = instance_type_from_api(item)
                if kind is not None:
                    result[kind.name] = kind
        return result

    def _fetch_on_demand(self) -> dict[str, float]:
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

    def _fetch_spot(self) -> dict[str, float]:
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
