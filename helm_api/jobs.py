"""Pure Job logic: build a Job from the CronJob, name it, read its state, and plan the next /apply step.

Nothing here does I/O. Objects are plain dicts shaped exactly like the Kubernetes API's JSON.

How the queue works without a lock: every apply Job carries a sequence number (annotation). The next Job
always gets ``max(sequence) + 1`` and a name derived from the CronJob's uid and that number, so every caller
and every replica that sees the same cluster state tries to create the same name; the API server's
409 AlreadyExists picks one winner and the others re-list and plan again.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from helm_api.errors import InvalidCronJobError

INSTANTIATE_ANNOTATION = "cronjob.kubernetes.io/instantiate"

# The one label of our own: its value identifies the CronJob the Job was made from.
APPLY_LABEL = "helmsman-cd.io/apply-for"

# Annotations of our own (everything else on the Job is what kubectl would set).
SEQUENCE_ANNOTATION = "helmsman-cd.io/apply-sequence"
REASON_ANNOTATION = "helmsman-cd.io/apply-reason"
REQUESTED_BY_ANNOTATION = "helmsman-cd.io/apply-requested-by"
REQUESTED_AT_ANNOTATION = "helmsman-cd.io/apply-requested-at"
REQUEST_IDS_ANNOTATION = "helmsman-cd.io/apply-request-ids"

MAX_NAME_LENGTH = 63
HASH_LENGTH = 10
# Request ids kept on one Job: the creator's plus the coalesced ones, oldest dropped first.
MAX_REQUEST_IDS = 200

JobState = Literal["queued", "running", "succeeded", "failed"]
FINISHED_STATES = frozenset({"succeeded", "failed"})

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def is_dns1123_label(value: str) -> bool:
    """True when ``value`` is a valid DNS-1123 label (what a Job name must be)."""
    return len(value) <= MAX_NAME_LENGTH and bool(_DNS1123_LABEL.match(value))


def _short_hash(text: str, length: int = HASH_LENGTH) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def apply_job_name(cronjob_name: str, seed: str) -> str:
    """A DNS-1123 label of at most 63 characters: the CronJob's name (shortened if needed) and a hash of seed."""
    suffix = _short_hash(seed)
    prefix = re.sub(r"[^a-z0-9-]", "-", cronjob_name.lower())
    prefix = prefix[: MAX_NAME_LENGTH - len(suffix) - 1].strip("-")
    return f"{prefix}-{suffix}" if prefix else suffix


def apply_label_value(cronjob_name: str) -> str:
    """The value of APPLY_LABEL for Jobs of this CronJob; label values are limited to 63 characters."""
    if len(cronjob_name) <= MAX_NAME_LENGTH:
        return cronjob_name
    return apply_job_name(cronjob_name, cronjob_name)


def apply_label_selector(cronjob_name: str) -> str:
    """The label selector that lists the apply Jobs of this CronJob."""
    return f"{APPLY_LABEL}={apply_label_value(cronjob_name)}"


def check_cronjob(cronjob: Mapping[str, Any]) -> None:
    """Refuse anything but a batch/v1 CronJob with a jobTemplate."""
    api_version = cronjob.get("apiVersion")
    kind = cronjob.get("kind")
    if api_version != "batch/v1" or kind != "CronJob":
        raise InvalidCronJobError(
            f"only batch/v1 CronJobs are supported, got apiVersion={api_version!r} kind={kind!r}"
        )
    metadata = cronjob.get("metadata") or {}
    if not metadata.get("name"):
        raise InvalidCronJobError("the CronJob has no metadata.name")
    template = (cronjob.get("spec") or {}).get("jobTemplate")
    if not isinstance(template, Mapping) or not isinstance(template.get("spec"), Mapping):
        raise InvalidCronJobError(f"CronJob {metadata['name']!r} has no spec.jobTemplate.spec")


def job_from_cronjob(
    cronjob: Mapping[str, Any],
    name: str,
    *,
    annotations: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    suspend: bool = False,
) -> dict[str, Any]:
    """The Job ``kubectl create job NAME --from=cronjob/CJ`` would create, plus our own metadata.

    ``annotations`` are added after the jobTemplate's (ours must win: the queue depends on them);
    ``labels`` is at most our one label. ``suspend=True`` creates the Job waiting (no pods).
    """
    check_cronjob(cronjob)
    if not is_dns1123_label(name):
        raise InvalidCronJobError(f"{name!r} is not a valid Job name (DNS-1123 label, at most 63 characters)")
    metadata = cronjob["metadata"]
    template = cronjob["spec"]["jobTemplate"]
    template_metadata = template.get("metadata") or {}

    job_annotations = {INSTANTIATE_ANNOTATION: "manual"}
    job_annotations.update(template_metadata.get("annotations") or {})
    job_annotations.update(annotations or {})
    job_labels = dict(template_metadata.get("labels") or {})
    job_labels.update(labels or {})

    spec = json.loads(json.dumps(template["spec"]))  # a deep copy that cannot share state with the CronJob
    if suspend:
        spec["suspend"] = True

    job_metadata: dict[str, Any] = {"name": name}
    if job_labels:
        job_metadata["labels"] = job_labels
    job_metadata["annotations"] = job_annotations
    job_metadata["ownerReferences"] = [
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "name": metadata["name"],
            "uid": metadata.get("uid", ""),
            "controller": True,
        }
    ]
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": job_metadata, "spec": spec}


def _true_condition(job: Mapping[str, Any], condition_type: str) -> Mapping[str, Any] | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == condition_type and condition.get("status") == "True":
            return condition
    return None


def job_state(job: Mapping[str, Any]) -> JobState:
    """queued (suspended), running, succeeded (Complete=True) or failed (Failed=True)."""
    if _true_condition(job, "Complete"):
        return "succeeded"
    if _true_condition(job, "Failed"):
        return "failed"
    if (job.get("spec") or {}).get("suspend"):
        return "queued"
    return "running"


def job_finished_at(job: Mapping[str, Any]) -> str | None:
    """completionTime for a succeeded Job; a failed Job has none, so the Failed condition's time."""
    status = job.get("status") or {}
    if status.get("completionTime"):
        return status["completionTime"]
    for condition_type in ("Complete", "Failed"):
        condition = _true_condition(job, condition_type)
        if condition:
            return condition.get("lastTransitionTime")
    return None


def job_sequence(job: Mapping[str, Any]) -> int:
    """The apply sequence number of a Job (0 when missing or unreadable)."""
    value = ((job.get("metadata") or {}).get("annotations") or {}).get(SEQUENCE_ANNOTATION, "0")
    try:
        return int(value)
    except ValueError:
        return 0


def job_request_ids(job: Mapping[str, Any]) -> list[str]:
    """The request ids an apply Job answers for (its creator's and the coalesced ones)."""
    raw = ((job.get("metadata") or {}).get("annotations") or {}).get(REQUEST_IDS_ANNOTATION)
    if not raw:
        return []
    try:
        value = json.loads(raw)
    except ValueError:
        return []
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


def encode_request_ids(request_ids: Sequence[str]) -> str:
    return json.dumps(list(request_ids)[-MAX_REQUEST_IDS:])


def newest_first(jobs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Apply Jobs ordered newest first (by sequence, then creation time, then name)."""

    def key(job: Mapping[str, Any]) -> tuple[int, str, str]:
        metadata = job.get("metadata") or {}
        return (job_sequence(job), metadata.get("creationTimestamp") or "", metadata.get("name") or "")

    return sorted(jobs, key=key, reverse=True)


def summarize_job(job: Mapping[str, Any]) -> dict[str, Any]:
    """What the HTTP API tells about one apply Job."""
    metadata = job.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    status = job.get("status") or {}
    return {
        "job": metadata.get("name"),
        "namespace": metadata.get("namespace"),
        "state": job_state(job),
        "sequence": job_sequence(job),
        "reason": annotations.get(REASON_ANNOTATION),
        "requested_by": annotations.get(REQUESTED_BY_ANNOTATION),
        "requested_at": annotations.get(REQUESTED_AT_ANNOTATION),
        "created_at": metadata.get("creationTimestamp"),
        "started_at": status.get("startTime"),
        "finished_at": job_finished_at(job),
    }


# ----- planning one /apply step --------------------------------------------------------------------------


@dataclass(frozen=True)
class Duplicate:
    """A Job already answers for this request id: return it, create nothing."""

    job: Mapping[str, Any]


@dataclass(frozen=True)
class Create:
    """Create the Job named ``name`` (waiting when ``suspend``)."""

    name: str
    sequence: int
    suspend: bool


@dataclass(frozen=True)
class Resume:
    """Nothing runs but a Job waits: start it (then the request coalesces into it)."""

    job: Mapping[str, Any]


@dataclass(frozen=True)
class Coalesce:
    """One Job runs and one waits: the request joins the waiting one."""

    job: Mapping[str, Any]


ApplyStep = Duplicate | Create | Resume | Coalesce


def split_jobs(
    jobs: Sequence[Mapping[str, Any]],
) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """(running, waiting) apply Jobs, each oldest first."""
    ordered = list(reversed(newest_first(jobs)))
    running = [job for job in ordered if job_state(job) == "running"]
    waiting = [job for job in ordered if job_state(job) == "queued"]
    return running, waiting


def find_by_request_id(jobs: Sequence[Mapping[str, Any]], request_id: str) -> Mapping[str, Any] | None:
    for job in newest_first(jobs):
        if request_id in job_request_ids(job):
            return job
    return None


def next_job_name(cronjob: Mapping[str, Any], sequence: int) -> str:
    """The name every caller agrees on for the apply Job with this sequence number."""
    metadata = cronjob["metadata"]
    return apply_job_name(metadata["name"], f"{metadata.get('uid', '')}/{sequence}")


def plan_apply(
    cronjob: Mapping[str, Any], jobs: Sequence[Mapping[str, Any]], request_id: str | None
) -> ApplyStep:
    """Decide the next step of an /apply from the apply Jobs the API server listed."""
    if request_id:
        existing = find_by_request_id(jobs, request_id)
        if existing is not None:
            return Duplicate(existing)
    running, waiting = split_jobs(jobs)
    if waiting and not running:
        return Resume(waiting[0])
    if waiting:
        return Coalesce(waiting[0])
    sequence = max((job_sequence(job) for job in jobs), default=0) + 1
    return Create(next_job_name(cronjob, sequence), sequence, suspend=bool(running))


def plan_reconcile(jobs: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The waiting Job to resume now, if nothing runs; else None."""
    running, waiting = split_jobs(jobs)
    if waiting and not running:
        return waiting[0]
    return None
