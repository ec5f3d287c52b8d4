"""`meadow aws ...`: install, uninstall, clean and list Meadow's resources in a region.

Imports boto3 only when a command runs, so `meadow` works without the ``aws`` extra.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table

from meadow_core.clouds.aws import names
from meadow_core.errors import MeadowError

if TYPE_CHECKING:
    from meadow_core.clouds.aws import admin

_console = Console()


def _admin() -> Any:
    try:
        from meadow_core.clouds.aws import admin
    except ImportError as exc:
        raise click.ClickException(
            f"`meadow aws` needs boto3 ({exc}): pip install 'meadow-core[aws]'"
        ) from exc
    return admin


def _region(region: str | None) -> str:
    session = _admin().session
    chosen = region or session.default_region()
    if not chosen:
        raise click.UsageError("no region: pass --region or set AWS_DEFAULT_REGION")
    return chosen


def _run(action: Callable[[], Any]) -> Any:
    """Meadow's own errors say what to change: show them without a traceback."""
    try:
        return action()
    except MeadowError as exc:
        raise click.ClickException(str(exc)) from exc


def _print_report(report: admin.Report) -> None:
    for line in report.done:
        _console.print(f"[green]✓[/green] {line}")
    for line in report.kept:
        _console.print(f"[dim]· {line}[/dim]")
    for line in report.notes:
        _console.print(f"[yellow]![/yellow] {line}")


_region_option = click.option(
    "--region", default=None, help="AWS region (default: AWS_DEFAULT_REGION or your profile's)."
)


@click.group("aws")
def aws() -> None:
    """Meadow's resources in an AWS account: bucket, table, role, security group."""


@aws.command("install")
@_region_option
@click.option(
    "--expiry-days",
    type=click.IntRange(min=1),
    default=names.DEFAULT_EXPIRY_DAYS,
    show_default=True,
    help="Days after which job results and logs expire from the bucket.",
)
@click.option(
    "--no-bundle",
    is_flag=True,
    help="Do not upload the agent bundle now (the first launch uploads it).",
)
def install_command(region: str | None, expiry_days: int, no_bundle: bool) -> None:
    """Create the bucket, table, IAM role, instance profile and security group."""
    chosen = _region(region)
    _print_report(
        _run(
            lambda: _admin().install(chosen, expiry_days=expiry_days, publish_bundle=not no_bundle)
        )
    )


@aws.command("uninstall")
@_region_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def uninstall_command(region: str | None, yes: bool) -> None:
    """Terminate Meadow's instances and delete everything `install` created."""
    chosen = _region(region)
    if not yes:
        click.confirm(
            f"Terminate Meadow's instances in {chosen} and delete its bucket (with every "
            "object), queues, table, role and security group?",
            abort=True,
        )
    _print_report(_run(lambda: _admin().uninstall(chosen)))


@aws.command("clean")
@_region_option
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=names.DEFAULT_GRACE_SECONDS,
    show_default=True,
    help="Seconds: anything younger is left alone (it may be being set up).",
)
@click.option(
    "--retention",
    type=click.FloatRange(min=0),
    default=names.DEFAULT_RESULTS_RETENTION_SECONDS,
    show_default=True,
    help="Seconds a finished job's results and logs are kept.",
)
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
def clean_command(region: str | None, grace: float, retention: float, dry_run: bool) -> None:
    """Remove instances, queues, registry entries and results that nothing owns."""
    chosen = _region(region)
    report: admin.CleanReport = _run(
        lambda: _admin().clean(
            chosen, grace_seconds=grace, results_retention_seconds=retention, dry_run=dry_run
        )
    )
    mark = "[yellow]would[/yellow]" if dry_run else "[green]✓[/green]"
    for instance_id in report.terminated_instances:
        _console.print(f"{mark} terminate instance {instance_id}")
    for name in report.deleted_queues:
        _console.print(f"{mark} delete queue {name}")
    for instance_id in report.removed_registry_entries:
        _console.print(f"{mark} remove registry entry {instance_id}")
    if report.deleted_objects:
        _console.print(
            f"{mark} delete {report.deleted_objects} result and log objects of "
            f"{len(report.cleaned_jobs)} finished jobs"
        )
    for note in report.notes:
        _console.print(f"[yellow]![/yellow] {note}")
    if report.empty:
        _console.print("nothing to clean")


@aws.group("cache")
def cache_group() -> None:
    """Reusable objects in the bucket: code, environments, functions, agent bundles."""


_older_than_option = click.option(
    "--older-than-days",
    type=click.FloatRange(min=1),
    default=30.0,
    show_default=True,
    help="Unused means: no job of this many days read it, and it is older than that.",
)


def _size(size_bytes: int) -> str:
    return f"{size_bytes / 1e6:,.1f} MB"


@cache_group.command("list")
@_region_option
@_older_than_option
def cache_list_command(region: str | None, older_than_days: float) -> None:
    """Objects and bytes per kind, and how much of it is unused."""
    chosen = _region(region)
    rows = _run(lambda: _admin().cache_summary(chosen, older_than_days * 86400))
    table = Table(title=f"Meadow's reusable objects in {chosen}")
    for column in ("kind", "objects", "size", f"unused ({older_than_days:g} days)"):
        table.add_column(column, justify="left" if column == "kind" else "right")
    for row in rows:
        table.add_row(
            row.kind,
            f"{row.objects:,}",
            _size(row.size_bytes),
            f"{row.unused_objects:,} / {_size(row.unused_bytes)}",
        )
    _console.print(table)


@cache_group.command("prune")
@_region_option
@_older_than_option
@click.option("--dry-run", is_flag=True, help="Only say what would be deleted.")
def cache_prune_command(region: str | None, older_than_days: float, dry_run: bool) -> None:
    """Delete objects no job of the last --older-than-days used (results and logs are
    `meadow aws clean`'s)."""
    chosen = _region(region)
    report = _run(lambda: _admin().cache_prune(chosen, older_than_days * 86400, dry_run))
    verb = "would delete" if dry_run else "deleted"
    _console.print(
        f"{verb} {len(report.deleted):,} objects ({_size(report.deleted_bytes)}); "
        f"kept {report.kept_objects:,} ({_size(report.kept_bytes)})"
    )


def _age(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(seconds)))


@aws.command("ls")
@_region_option
def ls_command(region: str | None) -> None:
    """Meadow's instances: their jobs, age and hourly cost."""
    chosen = _region(region)
    views: list[admin.InstanceView] = _run(lambda: _admin().ls(chosen))
    table = Table(title=f"Meadow instances in {chosen}")
    for column in (
        "instance",
        "type",
        "market",
        "state",
        "jobs (workers)",
        "free CPU / GB",
        "age",
        "$/hour",
    ):
        table.add_column(column)
    total = 0.0
    for view in views:
        record = view.record
        jobs = ", ".join(f"{job} ({a['workers']})" for job, a in record.allocations.items())
        if view.ec2_state in ("pending", "running", "stopping"):
            total += record.price_per_hour  # what still bills
        table.add_row(
            record.instance_id,
            record.instance_type,
            "spot" if record.spot else "on-demand",
            f"{record.state} / {view.ec2_state}",
            jobs or "-",
            f"{record.free_logical_cpu:g} / {record.free_memory_gb:g}",
            _age(view.age_seconds),
            f"{record.price_per_hour:.4f}",
        )
    _console.print(table)
    _console.print(f"{len(views)} instances, ${total:.4f} per hour for those still running")
