"""The ``meadow`` command: run functions, commands and maps; list, follow and cancel jobs."""

from __future__ import annotations

import datetime
import importlib
import importlib.metadata
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from meadow_core import api, cache
from meadow_core._portal import portal
from meadow_core.errors import MeadowError
from meadow_core.hosts import config as host_config
from meadow_core.hosts.base import Host
from meadow_core.hosts.config import HostConfigError
from meadow_core.hosts.local import DEFAULT_IDLE_TIMEOUT, LocalHost
from meadow_core.protocol import JobRecord, Outcome
from meadow_core.resources import Resources
from meadow_core.results import RunMapTasksFailedException, TaskException

_console = Console(stderr=True)


def _local_host(ctx: click.Context) -> LocalHost:
    """This machine's host (the agent and cache commands are about this machine only)."""
    host: LocalHost | None = ctx.obj.get("local_host")
    if host is None:
        options = ctx.obj["options"]
        host = LocalHost(
            home=options["home"],
            idle_timeout=options["idle_timeout"] or DEFAULT_IDLE_TIMEOUT,
        )
        ctx.obj["local_host"] = host
    return host


def _host(ctx: click.Context) -> Host:
    """Where job commands go: ``--host`` (``--ec2`` and ``--region`` name the ``ec2``
    host), else this machine. ``--home`` and ``--idle-timeout`` fill in the host's
    settings of those names that ``--host`` left out."""
    host: Host | None = ctx.obj.get("host")
    if host is not None:
        return host
    options = ctx.obj["options"]
    if options["host"] is not None and (options["ec2"] or options["region"]):
        raise click.UsageError("--host names the host: leave out --ec2 and --region")
    try:
        if options["host"] is not None:
            config = host_config.parse_host_string(options["host"])
        elif options["ec2"] or options["region"]:
            config = {"type": "ec2", "region_name": options["region"]}
        else:
            return _local_host(ctx)
        known = {s.name for s in host_config.host_class(config["type"]).config_schema()}
        for name in ("home", "idle_timeout"):
            if name in known and name not in config and options[name] is not None:
                config[name] = options[name]
        host = host_config.host_from_config(config)
    except HostConfigError as exc:
        raise click.UsageError(str(exc)) from None
    ctx.obj["host"] = host
    return host


def _parse_value(text: str) -> Any:
    """A CLI argument: JSON when it parses (numbers, lists, quoted strings), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _import_function(reference: str) -> Callable[..., Any]:
    module_name, sep, attr = reference.partition(":")
    if not sep or not attr:
        raise click.BadParameter(f"{reference!r} must look like 'package.module:function'")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise click.BadParameter(f"cannot import {reference!r}: {exc}") from exc
    if not callable(target):
        raise click.BadParameter(f"{reference!r} is not callable")
    return target  # type: ignore[no-any-return]


def _resources(cpu: float | None, memory_gb: float | None) -> Resources | None:
    if cpu is None and memory_gb is None:
        return None
    try:
        return Resources(logical_cpu=cpu, memory_gb=memory_gb)
    except (TypeError, ValueError) as exc:
        raise click.BadParameter(str(exc)) from exc


def _setup_logging(quiet: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("meadow")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False


def _positive_seconds(
    ctx: click.Context, param: click.Parameter, value: float | None
) -> float | None:
    """A duration option: a positive finite number (click's FloatRange lets nan in)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"must be a positive number of seconds, got {value}")
    return value


def _fail(exc: BaseException) -> None:
    _console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, markup=True)
    raise SystemExit(1)


_resource_options = [
    click.option("--cpu", type=float, default=None, help="Logical CPUs per task."),
    click.option("--memory-gb", type=float, default=None, help="Memory per task, in GB."),
    click.option(
        "--timeout",
        "timeout_seconds",
        type=float,
        default=None,
        callback=_positive_seconds,
        help="Seconds.",
    ),
    click.option("--job-id", default=None, help="Reattach to this job id if it exists."),
]


def _with_resource_options(function: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_resource_options):
        function = option(function)
    return function


@click.group()
@click.option(
    "--home",
    envvar="MEADOW_HOME",
    default=None,
    help="LocalHost home directory (default: $MEADOW_HOME or the user state directory).",
)
@click.option(
    "--idle-timeout",
    type=float,
    default=None,
    callback=_positive_seconds,
    help=f"Seconds an agent (or a cloud machine) started by this command waits without "
    f"work before exiting, for a host with an idle_timeout setting [default: the host's; "
    f"{DEFAULT_IDLE_TIMEOUT:g} here].",
)
@click.option(
    "--host",
    "host",
    default=None,
    metavar="TYPE[:SETTING=VALUE,...]",
    help="Where job commands run: a host type and its settings, e.g. `local` or "
    "`ec2:region_name=us-east-2,idle_timeout=60` (a list as [a,b]; or the config as "
    "JSON) [default: this machine].",
)
@click.option("--ec2", is_flag=True, help="Same as --host ec2.")
@click.option(
    "--region",
    default=None,
    help="Same as --host ec2:region_name=REGION (default: AWS_DEFAULT_REGION or your profile's).",
)
@click.option("--quiet", "-q", is_flag=True, help="Do not print the remote output.")
@click.pass_context
def cli(
    ctx: click.Context,
    home: str | None,
    idle_timeout: float | None,
    host: str | None,
    ec2: bool,
    region: str | None,
    quiet: bool,
) -> None:
    """Meadow runs functions, commands and maps on machines it provisions: this one, or
    a cloud's with --host (e.g. --host ec2)."""
    ctx.ensure_object(dict)
    ctx.obj["options"] = {
        "home": home,
        "idle_timeout": idle_timeout,
        "host": host,
        "ec2": ec2,
        "region": region,
    }
    _setup_logging(quiet)


@cli.command("run")
@click.argument("function")
@click.argument("args", nargs=-1)
@_with_resource_options
@click.option("--detach", is_flag=True, help="Print the job id and return at once.")
@click.pass_context
def run_cmd(
    ctx: click.Context,
    function: str,
    args: tuple[str, ...],
    cpu: float | None,
    memory_gb: float | None,
    timeout_seconds: float | None,
    job_id: str | None,
    detach: bool,
) -> None:
    """Run FUNCTION ('package.module:function') with ARGS (JSON or text) and print its value."""
    target = _import_function(function)
    try:
        result = api.run_function_sync(
            target,
            _host(ctx),
            _resources(cpu, memory_gb),
            args=[_parse_value(a) for a in args],
            wait_for_result=not detach,
            job_id=job_id,
            timeout_seconds=timeout_seconds,
        )
    except (MeadowError, TaskException) as exc:
        _fail(exc)
    if detach:
        click.echo(result.job_id)
    else:
        click.echo(json.dumps(result, default=repr))


@cli.command("command", context_settings={"ignore_unknown_options": True})
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@_with_resource_options
@click.option("--detach", is_flag=True, help="Print the job id and return at once.")
@click.pass_context
def command_cmd(
    ctx: click.Context,
    command: tuple[str, ...],
    cpu: float | None,
    memory_gb: float | None,
    timeout_seconds: float | None,
    job_id: str | None,
    detach: bool,
) -> None:
    """Run COMMAND on the host; exit with its exit code. Put options first, then '--'."""
    try:
        completion = api.run_command_sync(
            list(command),
            _host(ctx),
            _resources(cpu, memory_gb),
            wait_for_result=not detach,
            job_id=job_id,
            timeout_seconds=timeout_seconds,
            check=False,
        )
    except MeadowError as exc:
        _fail(exc)
    if detach:
        click.echo(completion.job_id)
        return
    if completion.outcome not in (Outcome.SUCCEEDED, Outcome.FAILED):
        _console.print(f"[red]{completion.outcome}[/red]")
    raise SystemExit(completion.return_code if completion.return_code >= 0 else 1)


@cli.command("map")
@click.argument("function")
@click.argument("args", nargs=-1, required=True)
@_with_resource_options
@click.option("--concurrency", type=int, default=None, help="num_concurrent_tasks.")
@click.option("--attempts", type=int, default=1, show_default=True, help="Attempts per task.")
@click.pass_context
def map_cmd(
    ctx: click.Context,
    function: str,
    args: tuple[str, ...],
    cpu: float | None,
    memory_gb: float | None,
    timeout_seconds: float | None,
    job_id: str | None,
    concurrency: int | None,
    attempts: int,
) -> None:
    """Map FUNCTION over ARGS (one task each); print the results as a JSON list."""
    target = _import_function(function)
    items = [_parse_value(a) for a in args]
    results: list[Any] = [None] * len(items)
    failures = 0
    interactive = sys.stderr.isatty()
    try:
        iterator = api.run_map_as_completed_sync(
            target,
            items,
            _host(ctx),
            _resources(cpu, memory_gb),
            num_concurrent_tasks=concurrency,
            max_num_task_attempts=attempts,
            job_id=job_id,
            timeout_seconds=timeout_seconds,
        )
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=_console,
            disable=not interactive,
        ) as progress:
            bar = progress.add_task("tasks", total=len(items))
            for done, result in enumerate(iterator, 1):
                if result.is_success:
                    results[result.task_id] = result.result
                else:
                    failures += 1
                    error = result.exception or ("?", "", "")
                    _console.print(
                        f"task {result.task_id} failed (attempt {result.attempt}, "
                        f"{result.outcome}): {error[0]}: {error[1]}",
                        highlight=False,
                        markup=False,
                    )
                progress.advance(bar)
                if not interactive:
                    click.echo(f"{done}/{len(items)} tasks done", err=True)
    except (MeadowError, RunMapTasksFailedException) as exc:
        _fail(exc)
    click.echo(json.dumps(results, default=repr))
    if failures:
        raise SystemExit(1)


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


@cli.command("jobs")
@click.option("--limit", type=int, default=20, show_default=True)
@click.pass_context
def jobs_cmd(ctx: click.Context, limit: int) -> None:
    """List recent jobs with their state."""
    records = api.list_jobs_sync(_host(ctx), limit)
    if not sys.stdout.isatty():
        for r in records:
            click.echo(f"{r.job_id}\t{r.state}\t{r.num_done}/{r.num_tasks}\t{r.kind}\t{r.name}")
        return
    table = Table("job id", "state", "tasks", "failed", "kind", "name", "created", "finished")
    for r in records:
        table.add_row(
            r.job_id,
            r.state,
            f"{r.num_done}/{r.num_tasks}",
            str(r.num_failed),
            r.kind,
            r.name,
            _when(r.created),
            _when(r.finished),
        )
    Console().print(table)


def _show(record: JobRecord) -> None:
    for field, value in (
        ("job id", record.job_id),
        ("state", record.state),
        ("kind", record.kind),
        ("name", record.name),
        ("tasks", f"{record.num_done}/{record.num_tasks} done, {record.num_failed} failed"),
        ("created", _when(record.created)),
        ("finished", _when(record.finished)),
    ):
        click.echo(f"{field:>9}: {value}")


@cli.command("status")
@click.argument("job_id")
@click.pass_context
def status_cmd(ctx: click.Context, job_id: str) -> None:
    """Show one job's state."""
    try:
        _show(api.get_job_sync(job_id, _host(ctx)))
    except MeadowError as exc:
        _fail(exc)


@cli.command("logs")
@click.argument("job_id")
@click.option("--task", "task_id", type=int, default=0, show_default=True)
@click.option("--attempt", type=int, default=None, help="Default: the last attempt.")
@click.pass_context
def logs_cmd(ctx: click.Context, job_id: str, task_id: int, attempt: int | None) -> None:
    """Print the stored log of one task of a job."""
    try:
        click.echo(api.read_task_log_sync(job_id, task_id, _host(ctx), attempt), nl=False)
    except MeadowError as exc:
        _fail(exc)


@cli.command("wait")
@click.argument("job_id")
@click.pass_context
def wait_cmd(ctx: click.Context, job_id: str) -> None:
    """Wait for a job and print its result (exit 1 if it failed)."""
    try:
        result = api.wait_for_job_sync(job_id, _host(ctx))
    except (MeadowError, TaskException, RunMapTasksFailedException) as exc:
        _fail(exc)
    if hasattr(result, "return_code"):
        click.echo(result.log, nl=False)
        raise SystemExit(result.return_code)
    click.echo(json.dumps(result, default=repr))


@cli.command("cancel")
@click.argument("job_id")
@click.pass_context
def cancel_cmd(ctx: click.Context, job_id: str) -> None:
    """Cancel a job: queued tasks are dropped, running ones killed."""
    host = _host(ctx)
    try:
        api.cancel_job_sync(job_id, host)
    except MeadowError as exc:
        _fail(exc)
    deadline = time.monotonic() + 30
    record = api.get_job_sync(job_id, host)
    while record.finished is None and time.monotonic() < deadline:
        time.sleep(0.1)
        record = api.get_job_sync(job_id, host)
    click.echo(f"{job_id}: {record.state}")


@cli.group("cache")
def cache_group() -> None:
    """List or prune built environments and code snapshots, here and in the local store.

    An AWS bucket's reusable objects: `meadow aws cache list / prune`.
    """


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


@cache_group.command("list")
@click.pass_context
def cache_list_cmd(ctx: click.Context) -> None:
    """Cache entries, least recently used first."""
    entries = cache.cache_entries(_local_host(ctx).place)
    for entry in entries:
        click.echo(
            f"{_when(entry.last_used)}  {_human(entry.size_bytes):>9}  {entry.kind:<18} {entry.key}"
        )
    click.echo(f"{len(entries)} entries, {_human(sum(e.size_bytes for e in entries))}")


@cache_group.command("prune")
@click.option("--max-gb", type=float, default=None, help="Keep at most this much.")
@click.option("--older-than-days", type=float, default=None, help="Drop what is older.")
@click.pass_context
def cache_prune_cmd(
    ctx: click.Context, max_gb: float | None, older_than_days: float | None
) -> None:
    """Remove least recently used entries (stop the agent first: it may be using them)."""
    host = _local_host(ctx)
    if max_gb is None and older_than_days is None:
        raise click.UsageError("give --max-gb or --older-than-days")
    if host.agent_pid() is not None:
        _fail(
            MeadowError("the agent is running and may use these entries; run `meadow agent stop`")
        )
    removed = cache.prune(
        host.place,
        max_bytes=int(max_gb * 2**30) if max_gb is not None else None,
        older_than_seconds=older_than_days * 86400 if older_than_days is not None else None,
    )
    freed = sum(e.size_bytes for e in removed)
    click.echo(f"removed {len(removed)} entries, freed {_human(freed)}")


@cli.group("agent")
def agent_group() -> None:
    """Inspect or stop this machine's agent."""


@agent_group.command("status")
@click.pass_context
def agent_status_cmd(ctx: click.Context) -> None:
    """Show whether the agent runs, what it runs and what this machine offers."""
    host = _local_host(ctx)
    pid = host.agent_pid()
    if pid is None:
        click.echo(f"no agent is running for {host.place.home}")
        return
    status = portal.call(host.agent_status())
    click.echo(f"agent {status['pid']} serving {status['home']}")
    capacity = status["capacity"]
    click.echo(
        f"capacity: {capacity['logical_cpu']:g} CPUs, {capacity['memory_gb']:.1f} GB; "
        f"reserved: {status['reserved_cpu']:g} CPUs, {status['reserved_memory_gb']:.1f} GB"
    )
    click.echo(f"workers: {len(status['workers'])}, running tasks: {len(status['running'])}")


@agent_group.command("stop")
@click.pass_context
def agent_stop_cmd(ctx: click.Context) -> None:
    """Stop the agent now; unfinished tasks stay queued for the next one."""
    host = _local_host(ctx)
    pid = host.agent_pid()
    host.shutdown()
    click.echo("no agent was running" if pid is None else f"stopped agent {pid}")


def _add_cloud_commands() -> None:
    """``meadow NAME ...`` for each cloud under the ``meadow.clouds`` entry point (``aws``
    from this distribution), plus what installed distributions add to it under
    ``meadow.NAME_commands`` (such as ``meadow aws devcloud`` from meadow-devcloud). A
    cloud whose SDK is missing gets a command that says which extra to install."""
    for cloud in importlib.metadata.entry_points(group="meadow.clouds"):
        try:
            group = cloud.load()
        except ImportError as exc:
            cli.add_command(_missing_cloud(cloud.name, str(exc)))
            continue
        for entry in importlib.metadata.entry_points(group=f"meadow.{cloud.name}_commands"):
            try:
                group.add_command(entry.load(), entry.name)
            except (ImportError, AttributeError) as exc:
                # A stale or broken plugin must not take the `meadow` command down with it.
                logging.getLogger("meadow.cli").warning(
                    "skipping `meadow %s %s` from %s: %s", cloud.name, entry.name, entry.value, exc
                )
        cli.add_command(group, cloud.name)


def _missing_cloud(name: str, missing: str) -> click.Command:
    @click.command(name, context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def command(args: tuple[str, ...]) -> None:
        raise click.ClickException(f"{missing}: install it with `pip install meadow-core[{name}]`")

    command.help = f"Meadow on {name} (needs `pip install meadow-core[{name}]`)."
    return command


_add_cloud_commands()


def main() -> None:
    cli(obj={})


if __name__ == "__main__":
    main()
