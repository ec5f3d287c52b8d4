"""Names and tags of everything Meadow creates in an AWS account, in one place.

The sweeper (`meadow aws clean`), `uninstall` and the instance agent find Meadow's
resources by these names and the ``meadow:managed`` tag, so they must never drift apart.
"""

from __future__ import annotations

import hashlib
import re

#: Tag on every instance, queue, bucket, table, role and security group Meadow creates.
MANAGED_TAG_KEY = "meadow:managed"
MANAGED_TAG_VALUE = "true"
#: Tag on an instance naming the job it was launched for (for people reading the console).
JOB_TAG_KEY = "meadow:job"

#: What an instance's agent bundle adds to Meadow's own dependencies, and the module
#: its boot script starts.
AGENT_EXTRAS = ("boto3",)
AGENT_MODULE = "meadow_core.clouds.aws.instance_agent"

TABLE_NAME = "meadow-registry"
ROLE_NAME = "meadow-agent"
INSTANCE_PROFILE_NAME = "meadow-agent"
ROLE_POLICY_NAME = "meadow-agent"
SECURITY_GROUP_NAME = "meadow-agent"

JOB_QUEUE_PREFIX = "meadow-job-"
RESULT_QUEUE_PREFIX = "meadow-res-"
CONTROL_QUEUE_PREFIX = "meadow-ctl-"
QUEUE_PREFIXES = (JOB_QUEUE_PREFIX, RESULT_QUEUE_PREFIX, CONTROL_QUEUE_PREFIX)

#: Per-job object prefixes (results and logs); a finished job's are deleted by `clean`
#: and expired by the bucket's lifecycle rule. Content-addressed prefixes (functions,
#: args, code, envs) are shared between jobs and never expire by age.
JOB_OBJECT_PREFIXES = ("results/", "logs/")

# How long Meadow keeps what it creates (admin.py; here so the CLI needs no boto3).
#: Per-job results and logs expire from the bucket after this many days.
DEFAULT_EXPIRY_DAYS = 7
#: `clean` leaves younger things alone: a caller may be between launching an instance
#: (or creating a queue) and recording it in the registry.
DEFAULT_GRACE_SECONDS = 600.0
#: Results and logs of a finished job stay this long for callers that reattach.
DEFAULT_RESULTS_RETENTION_SECONDS = 24 * 3600.0
#: An instance whose agent has been silent this long is terminated by the sweeper (a
#: watching caller does so after 120 s); booting instances heartbeat within seconds.
DEFAULT_HEARTBEAT_TIMEOUT_SECONDS = 180.0

_SQS_NAME_LIMIT = 80
_SQS_SAFE = re.compile(r"^[A-Za-z0-9_-]+$")


def managed_tags() -> list[dict[str, str]]:
    """The managed tag in the ``[{"Key":..., "Value":...}]`` shape EC2, S3 and IAM take."""
    return [{"Key": MANAGED_TAG_KEY, "Value": MANAGED_TAG_VALUE}]


def bucket_name(account_id: str, region_name: str) -> str:
    """One bucket per account and region, so names never collide across accounts."""
    return f"meadow-{account_id}-{region_name}"


def _queue_name(prefix: str, suffix: str) -> str:
    """SQS allows 80 characters of ``[A-Za-z0-9_-]``; longer or dotted ids get a hash."""
    room = _SQS_NAME_LIMIT - len(prefix)
    if _SQS_SAFE.match(suffix) and len(suffix) <= room:
        return prefix + suffix
    digest = hashlib.sha256(suffix.encode()).hexdigest()[:16]
    readable = re.sub(r"[^A-Za-z0-9_-]", "_", suffix)[: room - len(digest) - 2]
    return f"{prefix}{readable}--{digest}"


def job_queue_name(job_id: str) -> str:
    """The SQS queue holding a job's task messages."""
    return _queue_name(JOB_QUEUE_PREFIX, job_id)


def result_queue_name(job_id: str) -> str:
    """The SQS queue on which instances announce a job's stored outcomes to the caller."""
    return _queue_name(RESULT_QUEUE_PREFIX, job_id)


def control_queue_name(instance_id: str) -> str:
    """The SQS queue telling one instance which jobs it serves."""
    return _queue_name(CONTROL_QUEUE_PREFIX, instance_id)


def job_object_prefixes(job_id: str) -> list[str]:
    """Object prefixes holding one job's results and logs (deleted once it finished)."""
    return [f"{prefix}{job_id}/" for prefix in JOB_OBJECT_PREFIXES]
