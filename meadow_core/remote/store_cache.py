"""What a remote place's store keeps for reuse, and pruning what no recent job used.

Functions, arguments, code files and chunks, manifests, environment specs and archives
and agent bundles are content-addressed and shared between jobs, so no age-based
lifecycle rule may expire them: a year-old environment archive is exactly what
today's job wants. Instead each job's record names the objects it read (``refs``); a
manifest names its code objects, an environment spec its archives. ``prune`` keeps what a
job of the last ``older_than`` seconds used (or any unfinished job), and anything
uploaded within that time, and deletes the rest. Results and logs are per job and are
``meadow aws clean``'s and the lifecycle rule's business, not this module's.

Manifests and environment specs uploaded within the window count as used, with what
they name, and the jobs are read again just before deleting. What remains unguarded is a
caller between finding an old object present (it then trusts that for ten minutes) and
recording its job: usually under a second, longer while it builds an environment. So
prune when nothing is being submitted, and keep ``older_than`` long (at least a day; the
default is 30 days).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
from collections.abc import Iterable

from meadow_core import protocol
from meadow_core.code_snapshot import CodeSnapshot
from meadow_core.envcache import packed_spec
from meadow_core.keys import CODE_MANIFESTS, CONTENT_PREFIXES, ENV_SPECS, spec_key
from meadow_core.protocol import TERMINAL_JOB_STATES, JobSpec
from meadow_core.remote.jobs import JobTable
from meadow_core.transport.base import ObjectStore, StoredObjectInfo

#: Content-addressed prefixes in the store, and what they hold.
KINDS = CONTENT_PREFIXES
#: Objects that name others: judged by their own upload time, with what they name.
_JUDGED_BY_AGE = (CODE_MANIFESTS + "/", ENV_SPECS + "/")
DEFAULT_OLDER_THAN_DAYS = 30.0
#: Callers trust for ten minutes that an object they saw is still there.
MIN_OLDER_THAN_SECONDS = 86400.0


def job_refs(spec: JobSpec, *extra: str) -> list[str]:
    """The objects a job reads from the store directly (a manifest and an environment
    spec stand for the code objects and archives they name), plus ``extra`` ones every
    job of the host reads (an agent bundle)."""
    environment = spec.environment
    keys = [
        spec.function_key,
        spec.args_key,
        environment.code_manifest,
        environment.env_spec,
        *extra,
    ]
    return [k for k in keys if k]


@dataclasses.dataclass(frozen=True)
class KindSummary:
    kind: str
    objects: int
    size_bytes: int
    unused_objects: int  # would be pruned with the same ``older_than``
    unused_bytes: int


@dataclasses.dataclass
class PruneReport:
    deleted: list[StoredObjectInfo] = dataclasses.field(default_factory=list)
    kept_objects: int = 0
    kept_bytes: int = 0

    @property
    def deleted_bytes(self) -> int:
        return sum(o.size_bytes for o in self.deleted)


def _live_roots(registry: JobTable, store: ObjectStore, cutoff: float) -> set[str]:
    """Refs of jobs created after ``cutoff`` or not yet over. An unfinished job from a
    caller that recorded no refs (an older Meadow) is read from its stored spec."""
    roots: set[str] = set()
    for job in registry.all_jobs():
        created = float(job.get("created") or 0.0)
        unfinished = job.get("state") not in TERMINAL_JOB_STATES
        if created < cutoff and not unfinished:
            continue
        refs = job.get("refs")
        if refs is None and unfinished:
            try:
                raw = store.get(spec_key(str(job["job_id"])))
            except KeyError:
                continue
            refs = job_refs(JobSpec.from_wire(protocol.unpack(raw)))
        roots.update(str(k) for k in refs or ())
    return roots


def _expand(roots: Iterable[str], store: ObjectStore) -> set[str]:
    """The roots plus the code objects their manifests name (``_is_live`` adds the
    archives their environment specs name)."""
    live = set(roots)
    manifests = [k for k in live if k.startswith(CODE_MANIFESTS + "/")]

    def contents(key: str) -> list[str]:
        try:
            return CodeSnapshot.from_manifest(store.get(key)).object_keys()
        except KeyError:
            return []  # already gone: nothing of it to keep

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        for keys in pool.map(contents, manifests):
            live.update(keys)
    return live


def _is_live(key: str, live: set[str]) -> bool:
    """In ``live``, or an archive (built by any Meadow runtime) of a spec in it."""
    return key in live or packed_spec(key) in live


def _classify(
    store: ObjectStore, registry: JobTable, older_than: float, now: float
) -> tuple[list[StoredObjectInfo], list[StoredObjectInfo], set[str]]:
    """(kept, unused, recent roots) over every content-addressed object. A manifest or
    spec uploaded within the window counts as used (its job may not be recorded yet),
    and so does what it names."""
    cutoff = now - older_than
    objects = [info for prefix in KINDS for info in store.list_objects(prefix)]
    recent_roots = {
        o.key for o in objects if o.last_modified >= cutoff and o.key.startswith(_JUDGED_BY_AGE)
    }
    live = _expand(_live_roots(registry, store, cutoff) | recent_roots, store)
    kept: list[StoredObjectInfo] = []
    unused: list[StoredObjectInfo] = []
    for info in objects:
        if _is_live(info.key, live) or info.last_modified >= cutoff:
            kept.append(info)
        else:
            unused.append(info)
    return kept, unused, recent_roots


def _kind(key: str) -> str:
    return next(kind for prefix, kind in KINDS.items() if key.startswith(prefix))


def summarize(
    store: ObjectStore,
    registry: JobTable,
    older_than: float = DEFAULT_OLDER_THAN_DAYS * 86400,
    now: float | None = None,
) -> list[KindSummary]:
    """Per kind: how many objects and bytes, and how many a prune would delete."""
    kept, unused, _ = _classify(store, registry, older_than, now or time.time())
    rows = []
    for kind in KINDS.values():
        mine = [o for o in kept if _kind(o.key) == kind]
        gone = [o for o in unused if _kind(o.key) == kind]
        rows.append(
            KindSummary(
                kind,
                len(mine) + len(gone),
                sum(o.size_bytes for o in mine + gone),
                len(gone),
                sum(o.size_bytes for o in gone),
            )
        )
    return rows


def prune(
    store: ObjectStore,
    registry: JobTable,
    older_than: float = DEFAULT_OLDER_THAN_DAYS * 86400,
    now: float | None = None,
    dry_run: bool = False,
) -> PruneReport:
    """Delete what no job of the last ``older_than`` seconds used and what was uploaded
    before them. ``now`` exists for tests (a bucket cannot be aged)."""
    if older_than < MIN_OLDER_THAN_SECONDS:
        raise ValueError(
            f"older_than={older_than:g}s is too short: callers trust for ten minutes that "
            f"an object is in the bucket; use at least {MIN_OLDER_THAN_SECONDS:g}s (a day)"
        )
    now = time.time() if now is None else now
    kept, unused, recent_roots = _classify(store, registry, older_than, now)
    # Jobs recorded while we looked may use old objects: ask again, then delete.
    still = _expand(_live_roots(registry, store, now - older_than) | recent_roots, store)
    doomed = [o for o in unused if not _is_live(o.key, still)]
    report = PruneReport(
        deleted=doomed,
        kept_objects=len(kept) + len(unused) - len(doomed),
        kept_bytes=sum(o.size_bytes for o in kept)
        + sum(o.size_bytes for o in unused if _is_live(o.key, still)),
    )
    if not dry_run:
        # Specs and manifests before the archives and code they name: an interrupted
        # prune leaves unnamed objects (the next prune's), never a manifest with holes.
        order = sorted(doomed, key=lambda o: not o.key.startswith(_JUDGED_BY_AGE))
        store.delete_keys(o.key for o in order)
    return report
