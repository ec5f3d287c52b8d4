"""Instance selection: cheapest fitting machines, warm first, spread, with fallbacks."""

from __future__ import annotations

import pytest

from meadow_core.allocation.selection import (
    NoCapacityError,
    Offer,
    Plan,
    WarmInstance,
    eligible,
    select,
)
from meadow_core.clouds.aws.catalog import load_snapshot
from meadow_core.errors import UnsatisfiableResourcesError
from meadow_core.resources import Resources

X86 = frozenset({"x86_64", "intel", "avx", "avx2"})


def offer(
    name: str,
    cpu: float,
    mem: float,
    price: float,
    *,
    spot: bool = False,
    eviction: float = 0.0,
    flags: frozenset[str] = X86,
    gpus: float = 0.0,
    gpu_mem: float = 0.0,
) -> Offer:
    return Offer(
        instance_type=name,
        spot=spot,
        price_per_hour=price,
        logical_cpu=cpu,
        memory_gb=mem,
        gpus=gpus,
        gpu_memory_gb=gpu_mem,
        eviction_rate=eviction if spot else 0.0,
        flags=flags,
    )


def launched(plan: Plan) -> dict[tuple[str, bool], int]:
    return {(lc.offer.instance_type, lc.offer.spot): lc.count for lc in plan.launches}


SMALL = offer("s.large", 2, 4, 0.10)
MEDIUM = offer("m.xlarge", 4, 8, 0.15)
BIG = offer("b.2xlarge", 8, 16, 0.50)


def test_picks_the_cheapest_type_that_fits_one_task() -> None:
    plan = select(Resources(logical_cpu=3, memory_gb=6), 1, [SMALL, MEDIUM, BIG])
    assert launched(plan) == {("m.xlarge", False): 1}
    assert plan.cost_per_hour == pytest.approx(0.15)
    assert plan.warm == ()


def test_memory_alone_can_rule_out_a_type() -> None:
    plan = select(Resources(logical_cpu=1, memory_gb=10), 1, [SMALL, MEDIUM, BIG])
    assert launched(plan) == {("b.2xlarge", False): 1}


def test_packs_many_tasks_per_instance_and_covers_the_rest_with_a_small_type() -> None:
    dense = offer("d.4xlarge", 16, 64, 0.64)  # $0.04 per worker
    tiny = offer("t.large", 2, 8, 0.10)  # $0.05 per worker
    plan = select(Resources(logical_cpu=1, memory_gb=2), 100, [dense, tiny])
    # 6 dense instances hold 96; the last 4 are cheaper on two small ones than a 7th.
    assert launched(plan) == {("d.4xlarge", False): 6, ("t.large", False): 2}
    assert plan.cost_per_hour == pytest.approx(6 * 0.64 + 2 * 0.10)
    assert sum(lc.workers for lc in plan.launches) == 100
    by_type = {lc.offer.instance_type: lc for lc in plan.launches}
    assert by_type["d.4xlarge"].workers_per_instance == 16
    assert by_type["t.large"].workers == 4


def test_max_eviction_rate_zero_means_on_demand_only() -> None:
    cheap_spot = offer("m.xlarge", 4, 8, 0.05, spot=True, eviction=2.5)
    plan = select(
        Resources(logical_cpu=4, memory_gb=8, max_eviction_rate=0), 1, [MEDIUM, cheap_spot]
    )
    assert launched(plan) == {("m.xlarge", False): 1}
    plan = select(
        Resources(logical_cpu=4, memory_gb=8, max_eviction_rate=5), 1, [MEDIUM, cheap_spot]
    )
    assert launched(plan) == {("m.xlarge", True): 1}


def test_spot_types_above_max_eviction_rate_are_skipped() -> None:
    risky = offer("r.xlarge", 4, 8, 0.03, spot=True, eviction=19)
    calm = offer("c.xlarge", 4, 8, 0.06, spot=True, eviction=8)
    plan = select(Resources(logical_cpu=4, max_eviction_rate=10), 1, [risky, calm, MEDIUM])
    assert launched(plan) == {("c.xlarge", True): 1}


def test_flags_and_gpus_are_honoured() -> None:
    amd = offer("a.xlarge", 4, 8, 0.10, flags=frozenset({"x86_64", "amd", "avx", "avx2"}))
    intel512 = offer("i.xlarge", 4, 8, 0.20, flags=X86 | {"avx512"})
    amd_gpu = offer(
        "ga.xlarge", 4, 16, 0.40, gpus=1, gpu_mem=8, flags=frozenset({"x86_64", "amd", "amd_gpu"})
    )
    nvidia = offer("gn.xlarge", 4, 16, 0.50, gpus=1, gpu_mem=16, flags=X86 | {"nvidia"})
    offers = [amd, intel512, amd_gpu, nvidia]
    assert launched(select(Resources(logical_cpu=2), 1, offers)) == {("a.xlarge", False): 1}
    plan = select(Resources(logical_cpu=2, flags_required="avx512"), 1, offers)
    assert launched(plan) == {("i.xlarge", False): 1}
    # A GPU request naming no maker means NVIDIA (CUDA), not the cheaper AMD GPU.
    assert launched(select(Resources(gpus=1), 1, offers)) == {("gn.xlarge", False): 1}
    plan = select(Resources(gpus=1, flags_required="amd_gpu"), 1, offers)
    assert launched(plan) == {("ga.xlarge", False): 1}
    with pytest.raises(UnsatisfiableResourcesError, match="flags"):
        select(Resources(gpu_memory=12, flags_required="amd_gpu"), 1, offers)


def test_warm_capacity_is_used_first_then_new_instances() -> None:
    warm = WarmInstance("i-warm", "b.2xlarge", logical_cpu=4, memory_gb=16, flags=X86)
    plan = select(Resources(logical_cpu=1, memory_gb=1), 6, [SMALL, MEDIUM], [warm])
    assert [(a.instance.instance_id, a.workers) for a in plan.warm] == [("i-warm", 4)]
    assert sum(lc.workers for lc in plan.launches) == 2
    assert launched(plan) == {("s.large", False): 1}


def test_warm_only_plan_launches_nothing() -> None:
    warm = WarmInstance("i-warm", "b.2xlarge", logical_cpu=8, memory_gb=16, flags=X86)
    plan = select(Resources(logical_cpu=2), 3, [SMALL], [warm])
    assert plan.launches == () and plan.cost_per_hour == 0
    assert plan.warm[0].workers == 3


def test_warm_best_fit_prefers_the_tightest_instance_and_spares_gpu_boxes() -> None:
    roomy = WarmInstance("i-roomy", "b.2xlarge", logical_cpu=8, memory_gb=32, flags=X86)
    snug = WarmInstance("i-snug", "m.xlarge", logical_cpu=2, memory_gb=4, flags=X86)
    gpu = WarmInstance(
        "i-gpu", "g.xlarge", logical_cpu=2, memory_gb=4, gpus=1, flags=X86 | {"nvidia"}
    )
    plan = select(Resources(logical_cpu=2, memory_gb=4), 1, [BIG], [roomy, gpu, snug])
    assert [a.instance.instance_id for a in plan.warm] == ["i-snug"]
    plan = select(Resources(logical_cpu=2, memory_gb=4), 2, [BIG], [roomy, gpu, snug])
    assert sorted(a.instance.instance_id for a in plan.warm) == ["i-roomy", "i-snug"]
    plan = select(Resources(logical_cpu=2, gpus=1), 1, [BIG], [roomy, gpu, snug])
    assert [a.instance.instance_id for a in plan.warm] == ["i-gpu"]


def test_warm_spot_instance_is_not_used_by_an_on_demand_only_job() -> None:
    spot = WarmInstance(
        "i-spot", "m.xlarge", logical_cpu=4, memory_gb=8, flags=X86, spot=True, eviction_rate=2.5
    )
    plan = select(Resources(logical_cpu=1, max_eviction_rate=0), 1, [SMALL], [spot])
    assert plan.warm == () and launched(plan) == {("s.large", False): 1}
    plan = select(Resources(logical_cpu=1), 1, [SMALL], [spot])
    assert [a.instance.instance_id for a in plan.warm] == ["i-spot"]


def test_equally_cheap_spot_types_share_the_launches() -> None:
    a = offer("a.4xlarge", 16, 32, 0.40, spot=True, eviction=2.5)
    b = offer("b.4xlarge", 16, 32, 0.40, spot=True, eviction=2.5)
    c = offer("c.4xlarge", 16, 32, 0.402, spot=True, eviction=2.5)  # within 1 %
    pricey = offer("p.4xlarge", 16, 32, 0.60, spot=True, eviction=2.5)
    plan = select(Resources(logical_cpu=1), 16 * 9, [a, b, c, pricey])
    counts = launched(plan)
    assert set(counts) == {("a.4xlarge", True), ("b.4xlarge", True), ("c.4xlarge", True)}
    assert sorted(counts.values()) == [3, 3, 3]
    # Spreading costs at most half a percent over the cheapest plan.
    assert plan.cost_per_hour <= 9 * 0.40 * 1.005


def test_a_single_spot_instance_is_not_spread() -> None:
    a = offer("a.4xlarge", 16, 32, 0.40, spot=True, eviction=2.5)
    b = offer("b.4xlarge", 16, 32, 0.40, spot=True, eviction=8)
    plan = select(Resources(logical_cpu=1), 10, [a, b])
    # Ties go to the lower eviction rate.
    assert launched(plan) == {("a.4xlarge", True): 1}


def test_fallback_after_a_capacity_failure_gives_the_next_choice() -> None:
    first = offer("a.xlarge", 4, 8, 0.10)
    second = offer("b.xlarge", 4, 8, 0.12)
    third = offer("c.xlarge", 4, 8, 0.20)
    plan = select(Resources(logical_cpu=4), 3, [first, second, third])
    assert launched(plan) == {("a.xlarge", False): 3}
    after = plan.without("a.xlarge")
    assert launched(after) == {("b.xlarge", False): 3}
    assert sum(lc.workers for lc in after.launches) == 3
    # Two b.xlarge started before capacity ran out: they stay, one more comes from c.
    partial = after.without("b.xlarge", keep=2)
    assert launched(partial) == {("b.xlarge", False): 2, ("c.xlarge", False): 1}
    assert sum(lc.workers for lc in partial.launches) == 3
    with pytest.raises(NoCapacityError, match=r"a\.xlarge.*b\.xlarge.*c\.xlarge"):
        partial.without("c.xlarge")


def test_spot_quota_failure_falls_back_to_on_demand() -> None:
    spot = offer("a.xlarge", 4, 8, 0.03, spot=True, eviction=2.5)
    plan = select(Resources(logical_cpu=4), 2, [spot, MEDIUM])
    assert launched(plan) == {("a.xlarge", True): 2}
    assert launched(plan.without(spot=True)) == {("m.xlarge", False): 2}


def test_other_launches_keep_their_place_when_one_type_fails() -> None:
    dense = offer("d.4xlarge", 16, 64, 0.64)
    tiny = offer("t.large", 2, 8, 0.10)
    other = offer("o.large", 2, 8, 0.11)
    plan = select(Resources(logical_cpu=1), 100, [dense, tiny, other])
    after = plan.without("t.large")
    assert after.launches[0] == plan.launches[0]
    assert launched(after) == {("d.4xlarge", False): 6, ("o.large", False): 2}


def test_impossible_resources_name_the_largest_types() -> None:
    offers = load_snapshot().offers()
    with pytest.raises(UnsatisfiableResourcesError) as caught:
        select(Resources(logical_cpu=1000, memory_gb=4), 1, offers, where="us-east-2")
    message = str(caught.value)
    assert "us-east-2" in message and "logical_cpu=1000" in message
    assert "u-12tb1.112xlarge (448 CPUs, 12288 GB)" in message  # most CPUs and memory
    assert "p2.16xlarge (16 GPUs" in message and "p4d.24xlarge (8 GPUs, 320 GB)" in message
    with pytest.raises(UnsatisfiableResourcesError, match=r"most GPUs: p2\.16xlarge"):
        select(Resources(gpus=32), 1, offers)


def test_a_bad_worker_count_is_refused() -> None:
    with pytest.raises(ValueError, match="positive integer"):
        select(Resources(logical_cpu=1), 0, [SMALL])


@pytest.mark.parametrize(
    "resources",
    [
        Resources(logical_cpu=1, memory_gb=2, max_eviction_rate=0),
        Resources(logical_cpu=4, memory_gb=30),
        Resources(logical_cpu=4, memory_gb=16, gpus=1),
    ],
    ids=["1cpu-on-demand", "4cpu-30gb-spot", "1gpu-spot"],
)
def test_a_thousand_task_map_over_the_full_catalog_is_near_optimal(
    resources: Resources,
) -> None:
    np = pytest.importorskip("numpy")
    optimize = pytest.importorskip("scipy.optimize")
    offers = load_snapshot().offers()
    plan = select(resources, 1000, offers)
    assert sum(lc.workers for lc in plan.launches) == 1000
    candidates = eligible(resources, offers)
    result = optimize.milp(
        c=np.array([c.offer.price_per_hour for c in candidates]),
        constraints=optimize.LinearConstraint(
            np.array([[c.fit for c in candidates]], dtype=float), lb=1000, ub=np.inf
        ),
        integrality=np.ones(len(candidates)),
    )
    assert result.success
    # Speed (target 50 ms) is measured by benchmarks/selection.py, not asserted here.
    assert plan.cost_per_hour <= result.fun * 1.01
