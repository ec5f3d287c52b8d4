"""The object store's key layout: one written contract for every store and host.

Content-addressed prefixes are shared between jobs and never expire by age; per-job
prefixes (``results/<job>/``, ``logs/<job>/``) hold one job's spec, outcomes and logs
and go with it. Remote places (a bucket, a blob container) follow this layout exactly,
so the caller, the machines and the sweeper agree on where everything is.
"""

from __future__ import annotations

# Content-addressed prefixes (``protocol.content_key(data, PREFIX)`` names an object).
FUNCTIONS = "functions"
ARGS = "args"
CODE_MANIFESTS = "code/manifests"
CODE_FILES = "code/files"
CODE_CHUNKS = "code/chunks"
ENV_SPECS = "envs/specs"
ENV_PACKED = "envs/packed"
BUNDLES = "bootstrap"

#: Content-addressed prefixes, and what they hold (``meadow aws cache list`` shows these).
CONTENT_PREFIXES: dict[str, str] = {
    f"{FUNCTIONS}/": "functions",
    f"{ARGS}/": "arguments",
    f"{CODE_MANIFESTS}/": "code manifests",
    f"{CODE_FILES}/": "code files",
    f"{CODE_CHUNKS}/": "code chunks",
    f"{ENV_SPECS}/": "environment specs",
    f"{ENV_PACKED}/": "environment archives",
    f"{BUNDLES}/": "agent bundles",
}
#: Per-job prefixes: a finished job's are deleted by the sweeper and expire by age.
JOB_PREFIXES = ("results/", "logs/")


def job_prefixes(job_id: str) -> list[str]:
    """Object prefixes holding one job's spec, results and logs."""
    return [f"{prefix}{job_id}/" for prefix in JOB_PREFIXES]


def spec_key(job_id: str) -> str:
    """A remote job's ``JobSpec``, which the machines serving it read once."""
    return f"results/{job_id}/spec"


def results_prefix(job_id: str) -> str:
    return f"results/{job_id}/outcomes/"


def result_key(job_id: str, task_id: int, attempt: int) -> str:
    """Where an outcome is stored: the durable copy a reattaching caller replays.
    Keys sort by task, then attempt, so a listing finds each task's latest attempt."""
    return f"{results_prefix(job_id)}{task_id:08d}.{attempt:04d}"


def task_of_result_key(key: str) -> int:
    """The task id a ``result_key`` names."""
    return int(key.rsplit("/", 1)[-1].split(".", 1)[0])


def value_key(job_id: str, task_id: int, attempt: int) -> str:
    """A result too large to travel inline in its outcome."""
    return f"results/{job_id}/{task_id}.{attempt}"


def log_key(job_id: str, task_id: int, attempt: int) -> str:
    """A task attempt's full log in a machine's local store."""
    return f"logs/{job_id}/{task_id}.{attempt}.log"


def remote_log_key(job_id: str, task_id: int, attempt: int) -> str:
    """A task attempt's full log in a remote place's store."""
    return f"logs/{job_id}/{task_id:08d}.{attempt:04d}.log"


#: Prefixes whose keys end in the sha256 of the object's bytes.
HASHED_PREFIXES = (FUNCTIONS, ARGS, CODE_MANIFESTS, CODE_FILES, CODE_CHUNKS, ENV_SPECS)


def content_digest(key: str) -> str | None:
    """The sha256 (hex) a content-addressed key promises, else None."""
    prefix, _, digest = key.rpartition("/")
    if prefix in HASHED_PREFIXES and len(digest) == 64:
        return digest
    return None
