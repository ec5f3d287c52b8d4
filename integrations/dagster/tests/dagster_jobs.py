"""Jobs the tests run with ``execute_job(reconstructable(...))``.

They live in an importable module (not in the test files) because the remote side
reloads the job from its code origin, as a real Dagster deployment does.
"""

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

from dagster import (
    AssetExecutionContext,
    Definitions,
    DynamicOut,
    DynamicOutput,
    EnvVar,
    In,
    JobDefinition,
    Nothing,
    OpExecutionContext,
    Out,
    RetryPolicy,
    asset,
    define_asset_job,
    fs_io_manager,
    job,
    mem_io_manager,
    op,
)
from meadow_dagster import RESOURCES_TAG, MeadowCredentials, meadow_executor, meadow_io_manager
from meadow_dagster.io_manager import MeadowIOManager

RESOURCES = {"io_manager": meadow_io_manager}


@op
def make_numbers(context: OpExecutionContext) -> list[int]:
    context.log.info(f"making numbers in pid {os.getpid()}")
    return [1, 2, 3]


@op
def double(numbers: list[int]) -> list[int]:
    print("doubling on the remote side")
    return [n * 2 for n in numbers]


@op
def total(numbers: list[int]) -> int:
    return sum(numbers)


@job(executor_def=meadow_executor, resource_defs=RESOURCES)
def pipeline_job() -> None:
    total(double(make_numbers()))


#: The dev cloud's region (test_ec2.py): steps run on EC2, outputs go through its bucket.
EC2_REGION = "us-east-2"


@job(
    executor_def=meadow_executor,
    resource_defs={"io_manager": MeadowIOManager(host={"ec2": {"region_name": EC2_REGION}})},
)
def ec2_pipeline_job() -> None:
    total(double(make_numbers()))


# -- resources ----------------------------------------------------------------------------


@op(tags={RESOURCES_TAG: json.dumps({"logical_cpu": 2, "memory_gb": 1.5})})
def big_step() -> dict[str, str]:
    return {"pid": str(os.getpid())}


@job(executor_def=meadow_executor, resource_defs=RESOURCES)
def resources_job() -> None:
    big_step()


@op(tags={RESOURCES_TAG: json.dumps({"logical_cpu": 4096})})
def impossible_step() -> int:
    return 1


@job(executor_def=meadow_executor, resource_defs=RESOURCES)
def impossible_job() -> None:
    impossible_step()


# -- failures -----------------------------------------------------------------------------


class PipelineBroke(Exception):
    pass


def _explode(x: int) -> None:
    raise PipelineBroke(f"remote op failed on purpose with {x}")


@op
def failing_step(context: OpExecutionContext) -> int:
    context.log.info("about to fail")
    _explode(42)
    return 0


@job(executor_def=meadow_executor, resource_defs=RESOURCES)
def failing_job() -> None:
    failing_step()


@op
def killed_step() -> int:
    print("killing my own worker", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    return 0


@op
def after_killed(x: int) -> int:
    return x


@job(executor_def=meadow_executor, resource_defs=RESOURCES)
def killed_job() -> None:
    after_killed(killed_step())


@op(retry_policy=RetryPolicy(max_retries=2))
def flaky_step(context: OpExecutionContext) -> int:
    marker = Path(os.environ["MEADOW_DAGSTER_TEST_DIR"]) / "flaky-attempts"
    attempts = int(marker.read_text()) + 1 if marker.exists() else 1
    marker.write_text(str(attempts))
    context.log.info(f"flaky attempt {attempts} (dagster retry {context.retry_number})")
    if attempts < 3:
        raise RuntimeError(f"flaky failure {attempts}")
    return attempts


@job(executor_def=meadow_executor, resource_defs=RESOURCES)
def flaky_job() -> None:
    flaky_step()


@op(retry_policy=RetryPolicy(max_retries=1))
def crash_once() -> str:
    marker = Path(os.environ["MEADOW_DAGSTER_TEST_DIR"]) / "crashed-once"
    if not marker.exists():
        marker.write_text("x")
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


@job(executor_def=meadow_executor, resource_defs=RESOURCES)
def crash_once_job() -> None:
    crash_once()


@op
def slow_step() -> int:
    marker = Path(os.environ["MEADOW_DAGSTER_TEST_DIR"]) / "slow-started"
    marker.write_text(str(os.getpid()))
    time.sleep(120)
    return 1


@job(executor_def=meadow_executor, resource_defs=RESOURCES)
def slow_job() -> None:
    slow_step()


# -- no shared database -------------------------------------------------------------------


@op
def inspect_environment(context: OpExecutionContext) -> dict[str, object]:
    """What the remote side can see of the orchestrator's instance directory."""
    instance_dir = os.environ["MEADOW_DAGSTER_TEST_HIDDEN_DIR"]
    # The test harness (not the executor) names the directory so this op can look; that
    # one variable is left out of the comparison below.
    env = {k: v for k, v in os.environ.items() if k != "MEADOW_DAGSTER_TEST_HIDDEN_DIR"}
    fds = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            fds.append(os.readlink(f"/proc/self/fd/{fd}"))
    try:
        listing: list[str] | None = sorted(os.listdir(instance_dir))
    except OSError:
        listing = None
    context.log.info(f"remote view of the instance directory: {listing}")
    return {
        "cwd": os.getcwd(),
        "env_mentions": sorted(k for k, v in env.items() if instance_dir in v),
        "open_files": [f for f in fds if f.startswith(instance_dir)],
        "listing": listing,
        "pid": os.getpid(),
    }


@job(executor_def=meadow_executor, resource_defs=RESOURCES)
def isolation_job() -> None:
    inspect_environment()


# -- bad input ----------------------------------------------------------------------------


@op
def local_output() -> int:
    return 1


@job(executor_def=meadow_executor, resource_defs={"io_manager": fs_io_manager})
def fs_io_job() -> None:
    local_output()


@op(out=Out(Nothing))
def side_effect_only() -> None:
    pass


@op(ins={"after": In(Nothing)})
def after_side_effect() -> None:
    pass


@job(executor_def=meadow_executor)
def nothing_outputs_job() -> None:
    """Default IO manager, but nothing crosses machines: allowed."""
    after_side_effect(side_effect_only())


# -- contracts of Dagster's own executors (issue 17) ------------------------------------


@op(config_schema={"factor": int})
def scaled(context: OpExecutionContext) -> int:
    return 7 * int(context.op_config["factor"])


@op(config_schema={"label": str})
def labelled(context: OpExecutionContext) -> str:
    return str(context.op_config["label"])


@job(executor_def=meadow_executor, resource_defs=RESOURCES)
def selectable_job() -> None:
    """Two ops that each need their own config: a subset needs only its ops' config."""
    scaled()
    labelled()


def _gate(name: str) -> None:
    """Say this op started (a marker file), then wait until the test is done with it."""
    work = Path(os.environ["MEADOW_DAGSTER_TEST_DIR"])
    (work / f"{name}-started").write_text(str(os.getpid()))
    deadline = time.monotonic() + 120
    while not (work / f"{name}-go").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


@op
def waits_a() -> int:
    _gate("waits_a")
    return 1


@op
def waits_b() -> int:
    _gate("waits_b")
    return 2


@job(executor_def=meadow_executor, resource_defs=RESOURCES)
def two_waiting_job() -> None:
    waits_a()
    waits_b()


def _interval(name: str) -> None:
    """Record when this op ran, for the tests of tag concurrency."""
    work = Path(os.environ["MEADOW_DAGSTER_TEST_DIR"])
    start = time.time()
    time.sleep(1.0)
    (work / f"interval-{name}").write_text(f"{start} {time.time()}")


@op(tags={"database": "warehouse"})
def load_a() -> None:
    _interval("load_a")


@op(tags={"database": "warehouse"})
def load_b() -> None:
    _interval("load_b")


@op(tags={"database": "warehouse"})
def load_c() -> None:
    _interval("load_c")


@job(executor_def=meadow_executor, resource_defs=RESOURCES)
def tagged_job() -> None:
    load_a()
    load_b()
    load_c()


@job(executor_def=meadow_executor, resource_defs={"io_manager": mem_io_manager})
def mem_io_job() -> None:
    total(double(make_numbers()))


@op
def logs_then_waits(context: OpExecutionContext) -> int:
    context.log.info("halfway through the step")
    print("printed by the step", flush=True)
    _gate("logs_then_waits")
    return 1


@job(executor_def=meadow_executor, resource_defs=RESOURCES)
def live_job() -> None:
    logs_then_waits()


@op(retry_policy=RetryPolicy(max_retries=1))
def logs_then_crashes_once(context: OpExecutionContext) -> str:
    marker = Path(os.environ["MEADOW_DAGSTER_TEST_DIR"]) / "logged-then-crashed"
    if not marker.exists():
        marker.write_text("x")
        context.log.info("last words before the crash")
        time.sleep(0.5)  # let the line leave before the process dies
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


@job(executor_def=meadow_executor, resource_defs=RESOURCES)
def logs_then_crashes_job() -> None:
    logs_then_crashes_once()


@op
def asks_the_instance(context: OpExecutionContext) -> dict[str, object]:
    run = context.instance.get_run_by_id(context.run_id)
    return {"found": run is not None, "tags": dict(run.tags) if run is not None else {}}


@job(executor_def=meadow_executor, resource_defs=RESOURCES)
def instance_job() -> None:
    asks_the_instance()


# -- credentials from a resource (issue 13) ----------------------------------------------

#: Resolved in the orchestrating process only; the step's machine never has the variable.
CREDENTIALS = MeadowCredentials(
    values={"token": EnvVar("MEADOW_DAGSTER_TEST_TOKEN"), "user": "analyst"}
)


@job(executor_def=meadow_executor, resource_defs={**RESOURCES, "meadow_credentials": CREDENTIALS})
def credentials_job() -> None:
    total(double(make_numbers()))


# -- dynamic outputs and asset subsets -------------------------------------------------


@op(out=DynamicOut(int))
def fan_out() -> Iterator[DynamicOutput[int]]:
    for n in (1, 2, 3):
        yield DynamicOutput(n, mapping_key=f"n{n}")


@op
def square(n: int) -> int:
    return n * n


@op
def add_up(values: list[int]) -> int:
    return sum(values)


@job(executor_def=meadow_executor, resource_defs=RESOURCES)
def dynamic_job() -> None:
    add_up(fan_out().map(square).collect())


@asset(config_schema={"base": int})
def base_number(context: AssetExecutionContext) -> int:
    return int(context.op_config["base"])


@asset(config_schema={"offset": int})
def shifted_number(context: AssetExecutionContext, base_number: int) -> int:
    return base_number + int(context.op_config["offset"])


assets_defs = Definitions(
    assets=[base_number, shifted_number],
    jobs=[define_asset_job("number_assets_job")],
    executor=meadow_executor,
    resources=RESOURCES,
)


def number_assets_job() -> JobDefinition:
    """The asset job, from a module-level function as ``reconstructable`` needs."""
    return assets_defs.resolve_job_def("number_assets_job")


# -- priorities ----------------------------------------------------------------------------


@op(tags={"dagster/priority": "-1"})
def low_priority() -> None:
    _interval("low_priority")


@op(tags={"dagster/priority": "5"})
def high_priority() -> None:
    _interval("high_priority")


@op
def default_priority() -> None:
    _interval("default_priority")


@job(executor_def=meadow_executor, resource_defs=RESOURCES)
def priority_job() -> None:
    low_priority()
    default_priority()
    high_priority()


# -- pools (op concurrency on the instance) ----------------------------------------------


@op(pool="meadow_test_pool")
def pooled_a() -> None:
    _interval("pooled_a")


@op(pool="meadow_test_pool")
def pooled_b() -> None:
    _interval("pooled_b")


@job(executor_def=meadow_executor, resource_defs=RESOURCES)
def pooled_job() -> None:
    pooled_a()
    pooled_b()


@op
def logs_a_huge_line(context: OpExecutionContext) -> int:
    huge = os.urandom(1024 * 1024).hex()  # 2 MiB that does not compress much
    context.log.info(f"huge:{huge}")
    print("after the huge line", flush=True)
    return len(huge)


@job(executor_def=meadow_executor, resource_defs=RESOURCES)
def huge_line_job() -> None:
    logs_a_huge_line()
