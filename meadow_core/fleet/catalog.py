"""The price catalog's frame, for any cloud: instance types and prices as ``Offer``s.

A cloud's ``PriceSource`` answers four questions (instance types, on-demand prices,
spot prices, eviction bands) and ships a snapshot. ``Catalog`` merges the answers,
caches the result on disk for ``ttl`` seconds per region and endpoint, and falls back
to the snapshot for any source that is unavailable or returns placeholders (emulators
have no price APIs), which is also what the source's mode variable set to ``snapshot``
forces for offline use and tests.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from meadow_core.allocation.selection import Offer, largest_description
from meadow_core.errors import InvalidRequestError

log = logging.getLogger(__name__)

DEFAULT_TTL = 4 * 3600.0
#: The file format's name (it predates other clouds; it holds any cloud's catalog).
FORMAT = "meadow-ec2-catalog/1"
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


class PriceSource(Protocol):
    """One cloud region's answers; each may raise one of ``errors`` (then the
    snapshot's answer is used)."""

    region: str
    #: Names the cloud in messages (``EC2``).
    cloud: str
    #: Environment variable: ``snapshot`` reads only the shipped snapshot, ``live`` asks.
    mode_variable: str
    #: What a failing source raises.
    errors: tuple[type[BaseException], ...]

    def snapshot(self) -> CatalogData: ...

    def check_region(self, live: bool) -> None:
        """Raise for a region that does not exist (asking the cloud when ``live``)."""

    def cache_key(self) -> str:
        """Tells endpoints apart in the cache file name (an emulator from the cloud)."""

    def instance_types(self) -> dict[str, InstanceType]: ...

    def on_demand(self) -> dict[str, float]: ...

    def spot(self) -> dict[str, float]: ...

    def eviction_bands(self) -> Mapping[str, int] | None: ...


class Catalog:
    """Offers of one region, from the cloud's APIs (cached) or the shipped snapshot."""

    def __init__(self, source: PriceSource, ttl: float, cache_dir: Path) -> None:
        self.source = source
        self.region_name = source.region
        self.ttl = ttl
        self.cache_dir = cache_dir
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
        """Raise for a region that does not exist."""
        self.source.check_region(self._mode() == "live")

    # -- loading -----------------------------------------------------------------------

    def _mode(self) -> str:
        variable = self.source.mode_variable
        mode = os.environ.get(variable, "live").strip().lower() or "live"
        if mode not in ("live", "snapshot"):
            raise InvalidRequestError(
                f"{variable}={mode!r} is not understood: use 'snapshot' (offline, the "
                f"prices shipped with Meadow) or 'live' (the {self.source.cloud} APIs, cached)"
            )
        return mode

    def _cache_path(self) -> Path:
        cloud = self.source.cloud.lower()
        return self.cache_dir / f"{cloud}-{self.region_name}-{self.source.cache_key()}.json"

    def _load(self) -> CatalogData:
        if self._mode() == "snapshot":
            self.check_region()
            data = self.source.snapshot()
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
            log.warning("could not cache the %s catalog at %s: %s", self.source.cloud, path, exc)

    def _fetch(self) -> CatalogData:
        """Ask each API; any that fails or returns placeholders falls back to the snapshot."""
        source = self.source
        snapshot = source.snapshot()
        stale = f"snapshot {snapshot.region} {snapshot.date}"
        sources: dict[str, str] = {}

        types = self._attempt("instance types", source.instance_types)
        if types:
            for name, kind in list(types.items()):
                known = snapshot.types.get(name)
                if known is not None:  # the snapshot knows AVX levels the API does not say
                    types[name] = dataclasses.replace(kind, flags=kind.flags | known.flags)
            sources["instance_types"] = "live"
        else:
            types, sources["instance_types"] = dict(snapshot.types), stale

        on_demand = self._attempt("on-demand prices", source.on_demand)
        if on_demand:
            sources["on_demand"] = "live"
        else:
            on_demand, sources["on_demand"] = dict(snapshot.on_demand), stale

        spot = self._attempt("spot prices", source.spot) or {}
        if spot:
            sources["spot"] = "live"
        else:
            spot, sources["spot"] = dict(snapshot.spot), stale

        bands = self._attempt("eviction rates", source.eviction_bands)
        sources["eviction"] = getattr(source, "eviction_name", "eviction source")
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
        errors: tuple[type[BaseException], ...] = (
            *self.source.errors,
            OSError,
            ValueError,
            KeyError,
        )
        try:
            return fetch()
        except errors as exc:
            log.warning(
                "%s %s unavailable in %s (%s); using the snapshot",
                self.source.cloud,
                what,
                self.region_name,
                str(exc).splitlines()[0][:200],
            )
            return None
