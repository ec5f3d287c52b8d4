"""Resources: validation on construction, and LocalHost refusing what it cannot provide."""

from __future__ import annotations

import math

import pytest
from tasks import add, managed_host

from meadow_core import (
    InvalidRequestError,
    LocalHost,
    Resources,
    UnsatisfiableResourcesError,
    run_function_sync,
    run_map_sync,
)

# -- validation -----------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -1, -0.5, math.nan])
def test_logical_cpu_must_be_positive(value: float) -> None:
    with pytest.raises(ValueError, match="logical_cpu"):
        Resources(logical_cpu=value)


@pytest.mark.parametrize("value", [0, -2, 0.01, 0.049])
def test_memory_below_the_minimum_is_rejected(value: float) -> None:
    with pytest.raises(ValueError, match="memory_gb"):
        Resources(memory_gb=value)


def test_memory_at_the_minimum_is_accepted() -> None:
    assert Resources(memory_gb=0.05).memory_gb == 0.05


def test_gpu_memory_with_zero_gpus_is_rejected() -> None:
    with pytest.raises(ValueError, match="gpu_memory"):
        Resources(gpus=0, gpu_memory=8)


@pytest.mark.parametrize("rate", [-1, 100.5, 1000])
def test_max_eviction_rate_is_a_percentage(rate: float) -> None:
    with pytest.raises(ValueError, match="max_eviction_rate"):
        Resources(max_eviction_rate=rate)


@pytest.mark.parametrize("rate", [0, 50, 100])
def test_max_eviction_rate_bounds_are_accepted(rate: float) -> None:
    assert Resources(max_eviction_rate=rate).max_eviction_rate == rate


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"logical_cpu": "2"}, "logical_cpu"),
        ({"logical_cpu": True}, "logical_cpu"),
        ({"memory_gb": "4"}, "memory_gb"),
        ({"max_eviction_rate": "80"}, "max_eviction_rate"),
        ({"gpus": [1]}, "gpus"),
        ({"gpu_memory": "16GB"}, "gpu_memory"),
        ({"ephemeral_storage": "10"}, "ephemeral_storage"),
        ({"flags_required": ["avx2", 3]}, "flags_required"),
    ],
)
def test_wrong_types_raise_type_error(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(TypeError, match=field):
        Resources(**kwargs)  # type: ignore[arg-type]


def test_flags_required_string_becomes_a_tuple() -> None:
    resources = Resources(flags_required="avx2")
    assert resources.flags_required == ("avx2",)
    assert resources.flags == ("avx2",)
    assert Resources(flags_required=["avx2", "sse4_2"]).flags_required == ("avx2", "sse4_2")
    assert Resources().flags == ()


def test_gpu_memory_alone_implies_one_gpu() -> None:
    assert Resources(gpu_memory=16).effective_gpus == 1
    assert Resources(gpus=2, gpu_memory=16).effective_gpus == 2
    assert Resources().effective_gpus == 0


def test_with_memory_multiplied() -> None:
    base = Resources(logical_cpu=2, memory_gb=0.5, flags_required="avx2")
    tripled = base.with_memory_multiplied(3)
    assert tripled.memory_gb == pytest.approx(1.5)
    assert tripled.logical_cpu == 2 and tripled.flags_required == ("avx2",)
    assert base.memory_gb == 0.5  # the original is unchanged
    no_memory = Resources(logical_cpu=1)
    assert no_memory.with_memory_multiplied(4) == no_memory


# -- LocalHost checks resources before it creates a job ----------------------------------


@pytest.mark.parametrize(
    "resources, names",
    [
        (Resources(logical_cpu=10_000), ["logical_cpu", "logical CPUs"]),
        (Resources(memory_gb=100_000), ["memory_gb", "GB memory"]),
        (Resources(gpus=1), ["gpus", "GPUs"]),
        (Resources(gpu_memory=8), ["gpus", "GPUs"]),
        (Resources(flags_required="no_such_flag"), ["no_such_flag"]),
    ],
)
def test_unsatisfiable_resources_fail_before_any_job(
    host: LocalHost, resources: Resources, names: list[str]
) -> None:
    before = host.place.queue.list_jobs()
    with pytest.raises(UnsatisfiableResourcesError) as info:
        run_function_sync(add, host=host, resources=resources, args=(1, 2))
    message = str(info.value)
    for name in names:
        assert name in message
    # The error says what this machine has, so the caller knows what to ask for.
    assert "logical CPUs" in message and "GB memory" in message
    assert host.place.queue.list_jobs() == before
    assert isinstance(info.value, InvalidRequestError)


def test_unsatisfiable_map_fails_before_any_job(host: LocalHost) -> None:
    before = host.place.queue.list_jobs()
    with pytest.raises(UnsatisfiableResourcesError, match="logical CPUs"):
        run_map_sync(add, [1, 2], host=host, resources_per_task=Resources(logical_cpu=10_000))
    assert host.place.queue.list_jobs() == before


def test_nothing_was_launched_for_rejected_requests(host: LocalHost) -> None:
    """Every request in this module was refused, so no agent had to start."""
    assert host.place.queue.list_jobs() == []
    assert host.agent_pid() is None


def test_host_capacity_caps_resources(tmp_path) -> None:
    with managed_host(tmp_path, logical_cpu=1, memory_gb=1) as small:
        with pytest.raises(UnsatisfiableResourcesError, match="logical_cpu"):
            run_function_sync(add, host=small, resources=Resources(logical_cpu=2), args=(1, 2))
        with pytest.raises(UnsatisfiableResourcesError, match="memory_gb"):
            run_function_sync(add, host=small, resources=Resources(memory_gb=2), args=(1, 2))
        assert small.place.queue.list_jobs() == []
