"""Prometheus metrics of one helm_api app, in the app's own CollectorRegistry (tests build many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "ApplyMetrics"]


class ApplyMetrics:
    """Counters of applies requested/created/coalesced, failures, resumes and reconcile runs."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
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

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
