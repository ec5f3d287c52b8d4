"""Choose machines for a job or a map: warm instances first, then the cheapest new ones.

Pure functions over plain data (`Offer`, `WarmInstance`, `Resources`) so the same logic
serves any cloud and runs in microseconds in tests. Finding the cheapest set of new
instances is a covering knapsack (minimise the hourly price of instances whose worker
slots add up to the workers wanted); it is solved exactly by dynamic programming over
the few offers that are not dominated (no other offer holds as many workers for no more
money), which is what makes a 1,000-task map over a full catalog take milliseconds.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import NamedTuple

from meadow_core.errors import MeadowError, UnsatisfiableResourcesError
from meadow_core.resources import DEFAULT_TASK_CPU, Resources

#: Spot types whose cost per worker is within this fraction of the cheapest are
#: interchangeable: launches are spread over them so one capacity shortage or one
#: reclaim wave does not take every worker.
DIVERSIFY_WITHIN = 0.01
#: ...as long as spreading costs at most this fraction over the cheapest plan.
DIVERSIFY_MAX_EXTRA_COST = 0.005
#: At most this many types share a map's spot launches.
DIVERSIFY_MAX_TYPES = 4
#: Above this many workers the bulk goes to the cheapest type per worker and the exact
#: search covers only the last this-many, keeping selection fast for huge maps.
EXACT_WORKERS_LIMIT = 2048
_EPS = 1e-9
#: Flags naming a GPU maker; ``"nvidia-old"`` are K80s that current CUDA dropped.
GPU_MAKER_FLAGS = frozenset({"nvidia", "amd_gpu", "nvidia-old"})


class NoCapacityError(MeadowError):
    """Every instance type that fits was tried and none could be launched (capacity or
    quota); retrying later or allowing more types (spot, flags) may succeed."""


@dataclasses.dataclass(frozen=True)
class Offer:
    """One way to buy an instance type: on-demand or spot, at an hourly price."""

    instance_type: str
    spot: bool
    price_per_hour: float
    logical_cpu: float
    memory_gb: float
    gpus: float = 0.0
    gpu_memory_gb: float = 0.0
    #: Spot interruption probability in percent (0 for on-demand).
    eviction_rate: float = 0.0
    flags: frozenset[str] = frozenset()
    architecture: str = "x86_64"

    def describe(self) -> str:
        market = f"spot, {self.eviction_rate:g}% eviction" if self.spot else "on-demand"
        gpus = f", {self.gpus:g} GPUs" if self.gpus else ""
        return (
            f"{self.instance_type} ({market}: {self.logical_cpu:g} CPUs, "
            f"{self.memory_gb:g} GB{gpus}, ${self.price_per_hour:.4f}/h)"
        )


@dataclasses.dataclass(frozen=True)
class WarmInstance:
    """A running Meadow instance and what is still free on it."""

    instance_id: str
    instance_type: str
    logical_cpu: float
    memory_gb: float
    gpus: float = 0.0
    gpu_memory_gb: float = 0.0
    flags: frozenset[str] = frozenset()
    spot: bool = False
    eviction_rate: float = 0.0
    architecture: str = "x86_64"


@dataclasses.dataclass(frozen=True)
class WarmAllocation:
    """``workers`` workers of the job go onto a warm instance."""

    instance: WarmInstance
    workers: int


@dataclasses.dataclass(frozen=True)
class Launch:
    """Launch ``count`` instances of one offer, carrying ``workers`` workers in all."""

    offer: Offer
    count: int
    workers_per_instance: int
    workers: int

    @property
    def cost_per_hour(self) -> float:
        return self.count * self.offer.price_per_hour


class _Candidate(NamedTuple):
    offer: Offer
    fit: int  # workers one instance holds


@dataclasses.dataclass(frozen=True)
class Plan:
    """Where each worker of a job goes: ``warm`` instances, then ``launches``."""

    resources: Resources
    workers: int
    warm: tuple[WarmAllocation, ...]
    launches: tuple[Launch, ...]
    excluded: frozenset[tuple[str, bool]] = frozenset()
    where: str = "the catalog"
    candidates: tuple[_Candidate, ...] = dataclasses.field(default=(), repr=False, compare=False)

    @property
    def cost_per_hour(self) -> float:
        """Hourly price of the instances to launch (warm ones are already paid for)."""
        return sum(launch.cost_per_hour for launch in self.launches)

    @property
    def instances_to_launch(self) -> int:
        return sum(launch.count for launch in self.launches)

    def without(
        self, instance_type: str | None = None, *, spot: bool | None = None, keep: int = 0
    ) -> Plan:
        """The next choice after launching ``instance_type`` failed (capacity, quota).

        ``spot`` limits the exclusion to one market (None: both); ``instance_type=None``
        with ``spot=True`` drops every spot offer (a spot quota). ``keep`` instances of
        the failed launch did start and stay. Other launches keep their order; the
        replacements come last, so a caller resumes at the failed launch's index.
        Raises `NoCapacityError` when no other type fits.
        """
        if instance_type is None and spot is None:
            raise ValueError("Plan.without needs an instance_type, a spot market, or both")

        def matches(offer: Offer) -> bool:
            return (instance_type is None or offer.instance_type == instance_type) and (
                spot is None or offer.spot == spot
            )

        failed = [launch for launch in self.launches if matches(launch.offer)]
        if keep and len(failed) != 1:
            raise ValueError("Plan.without(keep=...) needs exactly one matching launch")
        kept = [launch for launch in self.launches if not matches(launch.offer)]
        replace = sum(launch.workers for launch in failed)
        if keep:
            stays = min(keep, failed[0].count)
            carried = min(failed[0].workers, stays * failed[0].workers_per_instance)
            kept.append(dataclasses.replace(failed[0], count=stays, workers=carried))
            replace -= carried
        excluded = self.excluded | {
            (c.offer.instance_type, c.offer.spot) for c in self.candidates if matches(c.offer)
        }
        candidates = tuple(c for c in self.candidates if not matches(c.offer))
        new: list[Launch] = []
        if replace > 0:
            if not candidates:
                tried = ", ".join(
                    sorted({f"{t} ({'spot' if s else 'on-demand'})" for t, s in excluded})
                )
                raise NoCapacityError(
                    f"no instance type in {self.where} could be launched for {replace} "
                    f"worker(s) of {_describe_resources(self.resources)}; tried {tried}. "
                    "Retry later, raise your EC2 quotas, or allow more types (a higher "
                    "max_eviction_rate, fewer flags_required, smaller resources)"
                )
            new = _cheapest_launches(list(candidates), replace)
        return dataclasses.replace(
            self, launches=(*kept, *new), excluded=excluded, candidates=candidates
        )


def select(
    resources: Resources,
    workers: int,
    offers: Iterable[Offer],
    warm: Sequence[WarmInstance] = (),
    *,
    architectures: Collection[str] = ("x86_64",),
    reserved_memory_gb: float = 0.0,
    where: str = "the catalog",
) -> Plan:
    """Place ``workers`` workers of ``resources`` each: warm instances first (best fit),
    then the cheapest set of new instances, spreading spot launches over equally cheap
    types.

    ``reserved_memory_gb`` is kept free on each new instance for the OS and agent.
    ``where`` names the catalog in error messages. Raises `UnsatisfiableResourcesError`
    when no offer can hold even one worker.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    offers = list(offers)
    candidates = eligible(resources, offers, architectures, reserved_memory_gb)
    allocations, placed = _place_on_warm(resources, workers, warm, architectures)
    if not candidates and placed < workers:
        raise unsatisfiable_error(resources, offers, architectures, where)
    remaining = workers - placed
    launches = _cheapest_launches(candidates, remaining) if remaining else []
    return Plan(
        resources=resources,
        workers=workers,
        warm=tuple(allocations),
        launches=tuple(launches),
        where=where,
        candidates=tuple(candidates),
    )


def check_satisfiable(
    resources: Resources,
    offers: Iterable[Offer],
    *,
    architectures: Collection[str] = ("x86_64",),
    where: str = "the catalog",
) -> None:
    """Raise `UnsatisfiableResourcesError` unless some offer holds one worker (for the
    caller's validation before anything is uploaded or launched)."""
    offers = list(offers)
    if not eligible(resources, offers, architectures):
        raise unsatisfiable_error(resources, offers, architectures, where)


def _need(resources: Resources) -> tuple[float, float, float, float]:
    return (
        resources.logical_cpu or DEFAULT_TASK_CPU,
        resources.memory_gb or 0.0,
        resources.effective_gpus,
        resources.gpu_memory or 0.0,
    )


def _fit(
    need: tuple[float, float, float, float],
    cpu: float,
    memory: float,
    gpus: float,
    gpu_memory: float,
) -> int:
    """How many workers fit into the given free resources."""
    n_cpu, n_mem, n_gpus, n_gpu_mem = need
    fit = math.floor(cpu / n_cpu + _EPS)
    if n_mem:
        fit = min(fit, math.floor(memory / n_mem + _EPS))
    if n_gpus:
        fit = min(fit, math.floor(gpus / n_gpus + _EPS))
        if fit < 1:
            return 0
        if n_gpu_mem:
            # A worker's GPU memory must fit on its own GPUs, not the machine's sum.
            if gpu_memory / gpus * n_gpus + _EPS < n_gpu_mem:
                return 0
            fit = min(fit, math.floor(gpu_memory / n_gpu_mem + _EPS))
    return max(fit, 0)


def required_flags(resources: Resources) -> frozenset[str]:
    """``flags_required``, lower-cased; a GPU request naming no GPU maker means NVIDIA,
    since that is what CUDA code (nearly all GPU Python) needs."""
    flags = frozenset(flag.lower() for flag in resources.flags)
    if resources.effective_gpus and not flags & GPU_MAKER_FLAGS:
        flags |= {"nvidia"}
    return flags


def _market_ok(spot: bool, eviction_rate: float, max_eviction_rate: float) -> bool:
    return not spot or (max_eviction_rate > 0 and eviction_rate <= max_eviction_rate + _EPS)


def eligible(
    resources: Resources,
    offers: Iterable[Offer],
    architectures: Collection[str] = ("x86_64",),
    reserved_memory_gb: float = 0.0,
) -> list[_Candidate]:
    """Offers allowed for ``resources`` (market, flags, architecture), with how many
    workers one instance of each holds; offers that hold none are left out."""
    need = _need(resources)
    required = required_flags(resources)
    max_eviction = resources.max_eviction_rate
    result = []
    for offer in offers:
        if offer.spot and not _market_ok(True, offer.eviction_rate, max_eviction):
            continue
        if offer.architecture not in architectures or not required <= offer.flags:
            continue
        fit = _fit(
            need,
            offer.logical_cpu,
            offer.memory_gb - reserved_memory_gb,
            offer.gpus,
            offer.gpu_memory_gb,
        )
        if fit >= 1:
            result.append(_Candidate(offer, fit))
    return result


def _place_on_warm(
    resources: Resources,
    workers: int,
    warm: Sequence[WarmInstance],
    architectures: Collection[str],
) -> tuple[list[WarmAllocation], int]:
    """Best fit: fill the instance left tightest after placement first, so GPU machines
    stay free for GPU work and large holes stay open for large jobs."""
    need = _need(resources)
    required = required_flags(resources)
    open_: list[tuple[WarmInstance, int]] = []
    for instance in warm:
        if not _market_ok(instance.spot, instance.eviction_rate, resources.max_eviction_rate):
            continue
        if instance.architecture not in architectures or not required <= instance.flags:
            continue
        fit = _fit(
            need, instance.logical_cpu, instance.memory_gb, instance.gpus, instance.gpu_memory_gb
        )
        if fit >= 1:
            open_.append((instance, fit))
    allocations: list[WarmAllocation] = []
    placed = 0
    n_cpu, n_mem, n_gpus, _ = need

    def leftover(item: tuple[WarmInstance, int], wanted: int) -> tuple[float, float, str]:
        instance, fit = item
        take = min(fit, wanted)
        cpu_left = instance.logical_cpu - take * n_cpu
        mem_left = instance.memory_gb - take * n_mem
        return (instance.gpus - take * n_gpus, mem_left + 2 * cpu_left, instance.instance_id)

    while open_ and placed < workers:
        wanted = workers - placed
        best = min(open_, key=lambda item: leftover(item, wanted))
        open_.remove(best)
        take = min(best[1], workers - placed)
        allocations.append(WarmAllocation(best[0], take))
        placed += take
    return allocations, placed


def _cheapest_cover(candidates: Sequence[_Candidate], workers: int) -> list[_Candidate]:
    """The cheapest multiset of instances holding ``workers`` workers (exact).

    Only offers on the Pareto frontier of (workers held, capped at ``workers``; price)
    can be in an optimum, and there are few, so the DP is small.
    """
    chosen: list[_Candidate] = []
    if workers <= 0:
        return chosen
    if workers > EXACT_WORKERS_LIMIT:
        bulk = min(candidates, key=_slot_key(workers))
        n_bulk = math.ceil((workers - EXACT_WORKERS_LIMIT) / bulk.fit)
        chosen = [bulk] * n_bulk
        workers -= n_bulk * bulk.fit
        if workers <= 0:
            return chosen
    frontier = _frontier(candidates, workers)
    caps = [min(c.fit, workers) for c in frontier]
    prices = [c.offer.price_per_hour for c in frontier]
    cost = [0.0] * (workers + 1)
    pick = [0] * (workers + 1)
    pairs = list(enumerate(zip(caps, prices, strict=True)))
    for x in range(1, workers + 1):
        best = math.inf
        best_i = 0
        for i, (cap, price) in pairs:
            rest = x - cap
            value = price + (cost[rest] if rest > 0 else 0.0)
            if value < best - _EPS:
                best = value
                best_i = i
        cost[x] = best
        pick[x] = best_i
    x = workers
    while x > 0:
        i = pick[x]
        chosen.append(frontier[i])
        x -= caps[i]
    return chosen


def _frontier(candidates: Sequence[_Candidate], workers: int) -> list[_Candidate]:
    """Offers no other offer beats on both capacity (capped) and price; ties go to the
    lower eviction rate, then the name, so plans are deterministic."""
    ordered = sorted(
        candidates,
        key=lambda c: (
            -min(c.fit, workers),
            c.offer.price_per_hour,
            c.offer.eviction_rate,
            c.offer.instance_type,
        ),
    )
    frontier: list[_Candidate] = []
    cheapest = math.inf
    for candidate in ordered:
        if candidate.offer.price_per_hour < cheapest - _EPS:
            frontier.append(candidate)
            cheapest = candidate.offer.price_per_hour
    return frontier


def _slot_key(workers: int) -> Callable[[_Candidate], tuple[float, float, str]]:
    def key(c: _Candidate) -> tuple[float, float, str]:
        per_worker = c.offer.price_per_hour / min(c.fit, workers)
        return (per_worker, c.offer.eviction_rate, c.offer.instance_type)

    return key


def _cost(chosen: Iterable[_Candidate]) -> float:
    return sum(c.offer.price_per_hour for c in chosen)


def _diversified(
    candidates: Sequence[_Candidate], workers: int, cheapest: list[_Candidate]
) -> list[_Candidate]:
    """Spread full spot instances round-robin over equally cheap types, cover the rest
    exactly, and keep the spread only if it costs little more than ``cheapest``."""
    if sum(1 for c in cheapest if c.offer.spot) < 2:
        return cheapest
    key = _slot_key(workers)
    spot = sorted((c for c in candidates if c.offer.spot), key=key)
    best = spot[0].offer.price_per_hour / min(spot[0].fit, workers)
    similar = [
        c
        for c in spot
        if c.offer.price_per_hour / min(c.fit, workers) <= best * (1 + DIVERSIFY_WITHIN) + _EPS
    ][:DIVERSIFY_MAX_TYPES]
    budget = _cost(cheapest) * (1 + DIVERSIFY_MAX_EXTRA_COST) + _EPS
    for n_types in range(len(similar), 1, -1):
        spread: list[_Candidate] = []
        left = workers
        turn = 0
        while True:
            candidate = similar[turn % n_types]
            if candidate.fit > left:
                break
            spread.append(candidate)
            left -= candidate.fit
            turn += 1
        if len({c.offer.instance_type for c in spread}) < 2:
            continue
        plan = spread + _cheapest_cover(candidates, left)
        if _cost(plan) <= budget:
            return plan
    return cheapest


def _cheapest_launches(candidates: Sequence[_Candidate], workers: int) -> list[Launch]:
    """Launches for ``workers`` new workers, grouped by offer, cheapest per worker first."""
    chosen = _diversified(candidates, workers, _cheapest_cover(candidates, workers))
    # Largest first, so only the smallest instance is partly used; one that would get
    # no worker at all is not launched.
    chosen.sort(key=lambda c: (-c.fit, c.offer.price_per_hour))
    grouped: dict[Offer, list[int]] = {}
    left = workers
    for candidate in chosen:
        take = min(candidate.fit, left)
        if take == 0:
            continue
        left -= take
        entry = grouped.setdefault(candidate.offer, [0, candidate.fit, 0])
        entry[0] += 1
        entry[2] += take
    launches = [
        Launch(offer=offer, count=count, workers_per_instance=fit, workers=carried)
        for offer, (count, fit, carried) in grouped.items()
    ]
    launches.sort(key=lambda x: (x.cost_per_hour / x.workers, x.offer.instance_type))
    return launches


def _describe_resources(resources: Resources) -> str:
    parts = [f"logical_cpu={resources.logical_cpu or DEFAULT_TASK_CPU:g}"]
    if resources.memory_gb:
        parts.append(f"memory_gb={resources.memory_gb:g}")
    if resources.effective_gpus:
        parts.append(f"gpus={resources.effective_gpus:g}")
    if resources.gpu_memory:
        parts.append(f"gpu_memory={resources.gpu_memory:g}")
    if resources.flags:
        parts.append(f"flags_required={list(resources.flags)}")
    parts.append(f"max_eviction_rate={resources.max_eviction_rate:g}")
    return "Resources(" + ", ".join(parts) + ")"


def largest_description(offers: Iterable[Offer]) -> str:
    """The largest instance types by CPUs, by memory and by GPUs, for error messages."""
    by_type = {o.instance_type: o for o in offers}
    if not by_type:
        return "no instance types at all"
    types = list(by_type.values())
    cpu = max(types, key=lambda o: (o.logical_cpu, o.memory_gb, o.instance_type))
    mem = max(types, key=lambda o: (o.memory_gb, o.logical_cpu, o.instance_type))
    text = (
        f"most CPUs: {cpu.instance_type} ({cpu.logical_cpu:g} CPUs, {cpu.memory_gb:g} GB); "
        f"most memory: {mem.instance_type} ({mem.logical_cpu:g} CPUs, {mem.memory_gb:g} GB)"
    )
    gpu_types = [o for o in types if o.gpus]
    if gpu_types:
        gpu = max(gpu_types, key=lambda o: (o.gpus, o.gpu_memory_gb, o.instance_type))
        gmem = max(gpu_types, key=lambda o: (o.gpu_memory_gb, o.gpus, o.instance_type))
        text += f"; most GPUs: {gpu.instance_type} ({gpu.gpus:g} GPUs, {gpu.gpu_memory_gb:g} GB)"
        if gmem is not gpu:
            text += (
                f"; most GPU memory: {gmem.instance_type} "
                f"({gmem.gpus:g} GPUs, {gmem.gpu_memory_gb:g} GB)"
            )
    else:
        text += "; no type has GPUs"
    return text


def unsatisfiable_error(
    resources: Resources,
    offers: Sequence[Offer],
    architectures: Collection[str] = ("x86_64",),
    where: str = "the catalog",
) -> UnsatisfiableResourcesError:
    """The error for resources no offer can hold, naming the constraint that rules
    every type out and the largest types that exist."""
    what = _describe_resources(resources)
    in_arch = [o for o in offers if o.architecture in architectures]
    need = _need(resources)
    big_enough = [
        o for o in in_arch if _fit(need, o.logical_cpu, o.memory_gb, o.gpus, o.gpu_memory_gb)
    ]
    if not big_enough:
        return UnsatisfiableResourcesError(
            f"no instance type in {where} is large enough for one worker of {what}. "
            f"The largest are: {largest_description(in_arch)}. Ask for at most that, or "
            "split the work into smaller tasks"
        )
    required = required_flags(resources)
    with_flags = [o for o in big_enough if required <= o.flags]
    if not with_flags:
        known = sorted(set().union(*(o.flags for o in big_enough)))
        asked = {flag.lower() for flag in resources.flags}
        implied = " ('nvidia' comes with asking for GPUs)" if "nvidia" in required - asked else ""
        return UnsatisfiableResourcesError(
            f"no instance type in {where} that is large enough for {what} has all of "
            f"flags {sorted(required)}{implied}; flags those types have: {known}. "
            "Drop or change flags_required, or ask for less"
        )
    return UnsatisfiableResourcesError(
        f"no offer in {where} for {what} allows max_eviction_rate="
        f"{resources.max_eviction_rate:g}: the types that fit are only sold with higher "
        "spot eviction rates; raise max_eviction_rate or ask for less"
    )
