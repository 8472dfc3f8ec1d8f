"""Pure Job logic: build a Job from the CronJob, name it, read its state, and plan the next /apply step.

Nothing here does I/O. Objects are plain dicts shaped exactly like the Kubernetes API's JSON.

What counts as a helmsman run: every Job the CronJob controls (an ownerReference to it with
``controller: true``), as the CronJob controller itself counts them. That is our own Jobs, the CronJob
controller's scheduled ones and ``kubectl create job --from`` ones alike: while any of them runs, a new apply
waits. Only our own Jobs (our label) ever wait or get resumed by us; a Job we did not create is ``manual``.

How the queue works without a lock: every apply Job of ours carries a sequence number (annotation). The next
Job always gets ``max(sequence) + 1`` and a name derived from the CronJob's uid and that number, so every
caller and every replica that sees the same cluster state tries to create the same name; the API server's
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

# The one label of our own: it marks the Jobs helm-api created; its value names the CronJob they were made from.
APPLY_LABEL = "helmsman-cd.io/apply-for"

# Annotations of our own (everything else on the Job is what kubectl would set).
SEQUENCE_ANNOTATION = "helmsman-cd.io/apply-sequence"
REASON_ANNOTATION = "helmsman-cd.io/apply-reason"
REQUESTED_BY_ANNOTATION = "helmsman-cd.io/apply-requested-by"
REQUESTED_AT_ANNOTATION = "helmsman-cd.io/apply-requested-at"
REQUEST_IDS_ANNOTATION = "helmsman-cd.io/apply-request-ids"
ORIGIN_ANNOTATION = "helmsman-cd.io/apply-origin"

# Request ids of the schedule's slots start with this; clients may not use it (helm_api.api refuses it).
SCHEDULE_REQUEST_PREFIX = "schedule/"
# helmsman decides per release from helm's records (helm diff against the release), not from the live objects,
# so a hand edit (`kubectl edit`) leaves no diff and plain `--apply` skips the release. This flag upgrades every
# release anyway; helm 3's three-way merge then puts the chart's fields back. Scheduled runs only.
ALWAYS_UPGRADE_FLAG = "--always-upgrade"
HELMSMAN_CONTAINER = "helmsman"

MAX_NAME_LENGTH = 63
HASH_LENGTH = 10
# Request ids kept on one Job: the creator's plus the coalesced ones, oldest dropped first.
MAX_REQUEST_IDS = 200

JobState = Literal["queued", "running", "succeeded", "failed"]
FINISHED_STATES = frozenset({"succeeded", "failed"})
# apply: POST /apply; schedule: a slot of HELM_API_SCHEDULE; manual: a Job of the CronJob that we did not create.
Origin = Literal["apply", "schedule", "manual"]

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


def with_helmsman_flag(job: Mapping[str, Any], flag: str) -> dict[str, Any]:
    """A copy of ``job`` whose helmsman container also gets ``flag``, after its other arguments.

    The container is the one named ``helmsman``, else the only one. The flag goes at the end of ``args`` when
    the container has args, else at the end of ``command`` (the chart puts all of helmsman's flags there). A
    container with neither runs its image's entrypoint, whose arguments we cannot extend: refused.
    """
    copied: dict[str, Any] = json.loads(json.dumps(job))
    name = (copied.get("metadata") or {}).get("name")
    containers = ((copied.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers") or []
    named = [c for c in containers if c.get("name") == HELMSMAN_CONTAINER]
    if named:
        container = named[0]
    elif len(containers) == 1:
        container = containers[0]
    else:
        raise InvalidCronJobError(
            f"cannot add {flag} to Job {name}: no container named {HELMSMAN_CONTAINER!r} among {len(containers)}"
        )
    for key in ("args", "command"):
        values = container.get(key)
        if values:
            if flag not in values:
                container[key] = [*values, flag]
            return copied
    raise InvalidCronJobError(
        f"cannot add {flag} to Job {name}: container {container.get('name')!r} has neither command nor args"
    )


def is_run_of(job: Mapping[str, Any], cronjob_name: str) -> bool:
    """True when the CronJob ``cronjob_name`` controls ``job`` (ownerReference with ``controller: true``).

    Matched by kind and name, as the CronJob controller matches its Jobs: a Job left by an earlier CronJob of
    the same name (other uid) still counts while it lives, which only ever makes us wait, never run twice.
    """
    for ref in (job.get("metadata") or {}).get("ownerReferences") or []:
        if (
            ref.get("controller") is True
            and ref.get("kind") == "CronJob"
            and str(ref.get("apiVersion", "")).startswith("batch/")
            and ref.get("name") == cronjob_name
        ):
            return True
    return False


def is_own_job(job: Mapping[str, Any]) -> bool:
    """A Job helm-api created (it carries our label)."""
    return APPLY_LABEL in ((job.get("metadata") or {}).get("labels") or {})


def job_origin(job: Mapping[str, Any]) -> Origin:
    """apply or schedule for our own Jobs (our origin annotation, else the creator's request id), else manual."""
    if not is_own_job(job):
        return "manual"
    annotated = ((job.get("metadata") or {}).get("annotations") or {}).get(ORIGIN_ANNOTATION)
    if annotated == "schedule":
        return "schedule"
    if annotated == "apply":
        return "apply"
    ids = job_request_ids(job)
    return "schedule" if ids and ids[0].startswith(SCHEDULE_REQUEST_PREFIX) else "apply"


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
    """Runs ordered newest first by creation time, ours and foreign alike; within one second (the API
    server's resolution) by our sequence, then by name."""

    def key(job: Mapping[str, Any]) -> tuple[str, int, str]:
        metadata = job.get("metadata") or {}
        # RFC 3339 in UTC with a Z, as the API server writes it: the strings sort as the times do.
        return (metadata.get("creationTimestamp") or "", job_sequence(job), metadata.get("name") or "")

    return sorted(jobs, key=key, reverse=True)


def _oldest_by_sequence(jobs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    def key(job: Mapping[str, Any]) -> tuple[int, str, str]:
        metadata = job.get("metadata") or {}
        return (job_sequence(job), metadata.get("creationTimestamp") or "", metadata.get("name") or "")

    return sorted(jobs, key=key)


def summarize_job(job: Mapping[str, Any]) -> dict[str, Any]:
    """What the HTTP API tells about one run (a Job we did not create has origin manual and sequence 0)."""
    metadata = job.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    status = job.get("status") or {}
    return {
        "job": metadata.get("name"),
        "namespace": metadata.get("namespace"),
        "state": job_state(job),
        "origin": job_origin(job),
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
    """(running, waiting) among the runs of the CronJob, each oldest first.

    Running: every run that runs, ours or not (a scheduled or ``kubectl create job --from`` Job runs helmsman
    too). Waiting: our own suspended Jobs only; a suspended Job of someone else's is not ours to start.
    """
    ordered = _oldest_by_sequence(jobs)
    running = [job for job in ordered if job_state(job) == "running"]
    waiting = [job for job in ordered if job_state(job) == "queued" and is_own_job(job)]
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
    """Decide the next step of an /apply from the runs of the CronJob the API server listed (see is_run_of)."""
    if request_id:
        existing = find_by_request_id(jobs, request_id)
        if existing is not None:
            return Duplicate(existing)
    running, waiting = split_jobs(jobs)
    if waiting and not running:
        return Resume(waiting[0])
    if waiting:
        return Coalesce(waiting[0])
    sequence = max((job_sequence(job) for job in jobs if is_own_job(job)), default=0) + 1
    return Create(next_job_name(cronjob, sequence), sequence, suspend=bool(running))


def plan_reconcile(jobs: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """Our waiting Job to resume now, if no run of the CronJob runs; else None."""
    running, waiting = split_jobs(jobs)
    if waiting and not running:
        return waiting[0]
    return None
