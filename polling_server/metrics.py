"""The daemon's Prometheus metrics, in a registry of its own (one per daemon, so tests can make many).

No `_created` series (they double every counter for nothing a dashboard uses), and every label value that can
occur is created at start, so a fresh `/metrics` already shows each series at 0 (rates and alerts need them).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

disable_created_metrics()

SOURCES = ("github", "git", "charts")
POLL_OUTCOMES = ("ok", "failed", "unchanged")
BUILD_OUTCOMES = ("succeeded", "retrying", "failed", "superseded")
APPLY_OUTCOMES = ("accepted", "unavailable", "rejected")
BUILD_KINDS = ("staging", "release")
WEBHOOK_PROVIDERS = ("github", "gitlab", "gitea", "charts")
WEBHOOK_OUTCOMES = ("accepted", "ignored", "duplicate", "bad_signature", "invalid", "not_configured")


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.polls = Counter("poller_polls_total", "Polls by source kind and outcome", ["source", "outcome"],
                             registry=r)
        self.not_modified = Counter("poller_http_not_modified_total", "Conditional requests answered 304",
                                    ["source"], registry=r)
        self.rate_limited = Counter("poller_rate_limit_waits_total", "Rate-limit episodes (one per wait)", registry=r)
        self.counted_requests = Counter("poller_github_requests_counted_total",
                                        "GitHub requests that counted against the rate limit (not 304)", registry=r)
        self.builds_planned = Counter("poller_builds_planned_total", "Builds planned", ["kind"], registry=r)
        self.builds = Counter("poller_builds_total", "Builds finished by outcome", ["outcome"], registry=r)
        self.build_seconds = Histogram("poller_build_duration_seconds", "Build + push duration", ["outcome"],
                                       buckets=(5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600), registry=r)
        self.build_queue = Gauge("poller_build_queue_length", "Builds queued or running", registry=r)
        self.applies = Counter("poller_apply_requests_total", "Apply requests by outcome", ["outcome"], registry=r)
        self.tag_moves = Counter("poller_image_tag_moves_total",
                                 "Mutable image tag moves (staging, 1.2, 1) by outcome", ["outcome"], registry=r)
        self.last_cycle = Gauge("poller_last_cycle_timestamp_seconds", "End of the last poll cycle", ["job"],
                                registry=r)
        self.webhook_deliveries = Counter("poller_webhook_deliveries_total", "Webhook deliveries by outcome",
                                          ["provider", "outcome"], registry=r)
        self.effective_interval = Gauge("poller_github_effective_interval_seconds",
                                        "How long a poll pass over every GitHub repository takes within the request "
                                        "budget (the configured interval when the budget covers it)", registry=r)
        self.state_writable = Gauge("poller_state_writable",
                                    "1 while the state database takes writes, 0 while the last write failed",
                                    registry=r)
        self.state_writable.set(1)
        for source in SOURCES:
            self.not_modified.labels(source)
            for outcome in POLL_OUTCOMES:
                self.polls.labels(source, outcome)
        for kind in BUILD_KINDS:
            self.builds_planned.labels(kind)
        for outcome in BUILD_OUTCOMES:
            self.builds.labels(outcome)
            self.build_seconds.labels(outcome)
        for outcome in APPLY_OUTCOMES:
            self.applies.labels(outcome)
        for outcome in ("moved", "failed"):
            self.tag_moves.labels(outcome)
        for provider in WEBHOOK_PROVIDERS:
            for outcome in WEBHOOK_OUTCOMES:
                self.webhook_deliveries.labels(provider, outcome)
