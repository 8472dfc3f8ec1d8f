"""The daemon's Prometheus metrics, in a registry of its own (one per daemon, so tests can make many)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


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
        self.last_cycle = Gauge("poller_last_cycle_timestamp_seconds", "End of the last poll cycle", ["job"],
                                registry=r)
