"""Prometheus metrics of one helm_api app, in the app's own CollectorRegistry (tests build many apps).

Every labelled series a dashboard or alert may ask for exists from the start, at 0: a rate over a series that
appears only with its first event misses that event. No ``*_created`` series: they double the output and say
only when the process started.
"""

from __future__ import annotations

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = [
    "APPLY_ERRORS",
    "CONTENT_TYPE_LATEST",
    "CREATED_STATES",
    "FINISHED_STATES",
    "SCHEDULE_OUTCOMES",
    "ApplyMetrics",
]

# A new Job starts running, or waits suspended behind the running one.
CREATED_STATES = ("running", "queued")
FINISHED_STATES = ("succeeded", "failed")
# What a slot of the schedule did: created a Job, joined the waiting one, found its id already on a Job (another
# replica acted first), failed, or was skipped (the scheduler ran too late to name its slot).
SCHEDULE_OUTCOMES = ("created", "coalesced", "duplicate", "failed", "skipped")
# The errors a POST /apply can end with (class names from helm_api.errors); others still count, from their first.
APPLY_ERRORS = (
    "BackendError",
    "BackendUnavailableError",
    "BusyError",
    "CronJobNotFoundError",
    "ForbiddenError",
    "InvalidCronJobError",
    "JobNotFoundError",
)


class ApplyMetrics:
    """Counters of applies requested/created/coalesced, failures, resumes and reconcile runs."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # A process-wide switch of prometheus_client, read when metrics are collected; idempotent.
        prometheus_client.disable_created_metrics()
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.applies_requested = Counter("helm_api_applies_requested", "POST /apply calls accepted", registry=r)
        self.applies_created = Counter(
            "helm_api_applies_created", "apply Jobs created, by state at creation", ["state"], registry=r
        )
        self.applies_coalesced = Counter(
            "helm_api_applies_coalesced", "applies that joined an existing waiting Job", registry=r
        )
        self.applies_duplicate = Counter(
            "helm_api_applies_duplicate", "applies answered by the Job already holding their request_id", registry=r
        )
        self.apply_failures = Counter(
            "helm_api_apply_failures", "POST /apply calls that failed, by error", ["error"], registry=r
        )
        self.jobs_resumed = Counter("helm_api_jobs_resumed", "waiting Jobs resumed", registry=r)
        self.jobs_finished = Counter(
            "helm_api_jobs_finished", "apply Jobs seen finishing, by outcome", ["state"], registry=r
        )
        self.reconcile_runs = Counter("helm_api_reconcile_runs", "reconciler passes", registry=r)
        self.reconcile_failures = Counter("helm_api_reconcile_failures", "reconciler passes that failed", registry=r)
        self.schedule_slots = Counter(
            "helm_api_schedule_slots", "slots of the re-apply schedule, by outcome", ["outcome"], registry=r
        )
        for state in CREATED_STATES:
            self.applies_created.labels(state=state)
        for state in FINISHED_STATES:
            self.jobs_finished.labels(state=state)
        for error in APPLY_ERRORS:
            self.apply_failures.labels(error=error)
        for outcome in SCHEDULE_OUTCOMES:
            self.schedule_slots.labels(outcome=outcome)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
