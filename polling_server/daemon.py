"""Wires the poller together (the one place where parts meet) and runs it: once, or under APScheduler.

Jobs: poll the repositories (detect -> plan -> save), poll the chart repository, send due apply requests; the
build worker runs beside them on its own threads, so a slow build never delays detection. APScheduler's job
defaults are explicit: one instance per job, missed runs coalesced, a grace time for late runs; a job's exception
is logged by APScheduler and the schedule goes on.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler

from polling_server.config import Settings
from polling_server.cycle import CycleReport, RepositoryPoller
from polling_server.logs import log_event
from polling_server.metrics import Metrics
from polling_server.sources.git_remote import GitRemoteSource
from polling_server.sources.github import GitHubSource
from polling_server.state import StateStore
from polling_server.web.health import HealthServer

log = logging.getLogger(__name__)

APPLY_SEND_INTERVAL_SECONDS = 5.0


@dataclass
class OnceReport:
    cycle: CycleReport
    builds: list = field(default_factory=list)
    chart_plan: object = None
    applies: list = field(default_factory=list)
    chart_error: str | None = None


class Daemon:
    def __init__(self, settings: Settings, *, dry_run: bool = False, store: StateStore | None = None,
                 sources: dict | None = None, builder=None, chart_watcher=None, apply_sender=None):
        self.settings = settings
        self.dry_run = dry_run
        self.metrics = Metrics()
        self.store = store or StateStore(settings.state_path)
        self.poller = RepositoryPoller(settings, self.store, self.metrics, sources or {
            "github": GitHubSource(settings.github),
            "git": GitRemoteSource(),
        })
        self._builder = builder
        self._worker = None
        self.chart_watcher = chart_watcher
        self.apply_sender = apply_sender
        if settings.chart_repository and chart_watcher is None:
            from polling_server.chart_watch import ChartWatcher

            self.chart_watcher = ChartWatcher(settings, self.store, self.metrics)
        if settings.helm_api and apply_sender is None:
            from polling_server.applies.helm_api_client import ApplySender

            self.apply_sender = ApplySender(settings, self.store, self.metrics)
        self.scheduler: BackgroundScheduler | None = None
        self._stopped = threading.Event()
        self.started_at = time.time()

    @property
    def worker(self):
        if self._worker is None:
            from polling_server.builds.docker_engine import ImageBuilder
            from polling_server.builds.worker import BuildWorker

            builder = self._builder or ImageBuilder(self.settings)
            self._worker = BuildWorker(self.settings, self.store, builder, self.metrics)
        return self._worker

    # --- jobs ---------------------------------------------------------------------------------------------
    def poll_repositories(self) -> CycleReport:
        report = self.poller.poll_all(self.dry_run)
        self.metrics.build_queue.set(self.store.waiting_builds())
        if report.planned and self._worker is not None:
            self._worker.wake()  # start the new builds now, not at the worker's next look
        return report

    def poll_charts(self):
        if self.chart_watcher is None:
            return None
        plan = self.chart_watcher.poll(dry_run=self.dry_run)
        self.metrics.last_cycle.labels("charts").set(time.time())
        return plan

    def send_applies(self) -> list:
        if self.apply_sender is None or self.dry_run:
            return []
        return self.apply_sender.send_due()

    # --- modes --------------------------------------------------------------------------------------------
    def run_once(self) -> OnceReport:
        """One full cycle: poll everything, then (unless dry-run) run the due builds and send due applies."""
        if not self.dry_run:
            self.worker.recover()
        report = OnceReport(self.poll_repositories())
        try:
            report.chart_plan = self.poll_charts()
        except Exception as e:  # noqa: BLE001 - the watcher logged it; --once still reports the rest
            report.chart_error = str(e)
        if not self.dry_run:
            report.builds = self.worker.run_until_idle()
            report.applies = self.send_applies()
        return report

    def health(self) -> tuple[bool, dict]:
        now = time.time()
        last = self.poller.last_cycle_at
        limit = max(3 * self.settings.poll_interval_seconds, 120)
        running = bool(self.scheduler and self.scheduler.running)
        recent = (last is not None and now - last < limit) or (last is None and now - self.started_at < limit)
        return running and recent, {"scheduler_running": running,
                                    "last_poll_age_seconds": None if last is None else round(now - last, 1)}

    def start(self) -> HealthServer | None:
        """Start the scheduler, the build worker and the health endpoint (non-blocking)."""
        if not self.dry_run:
            self.worker.recover()
            self.worker.start()
        self.scheduler = BackgroundScheduler(job_defaults={
            "max_instances": 1, "coalesce": True, "misfire_grace_time": 30})
        first = datetime.now(UTC)  # every job runs once right away, then on its interval
        self.scheduler.add_job(self.poll_repositories, "interval", seconds=self.settings.poll_interval_seconds,
                               id="poll-repositories", next_run_time=first)
        if self.chart_watcher is not None:
            self.scheduler.add_job(self.poll_charts, "interval",
                                   seconds=self.settings.chart_repository.poll_interval_seconds,
                                   id="poll-charts", next_run_time=first)
        if self.apply_sender is not None and not self.dry_run:
            self.scheduler.add_job(self.send_applies, "interval", seconds=APPLY_SEND_INTERVAL_SECONDS,
                                   id="send-applies", next_run_time=first)
        self.scheduler.start()
        server = None
        if self.settings.http.enabled:
            server = HealthServer(self.settings.http.host, self.settings.http.port, self.metrics, self.health)
            server.start()
        log_event(log, "daemon.started", repositories=len(self.settings.repositories), dry_run=self.dry_run,
                  health_port=server.port if server else None)
        return server

    def run_forever(self) -> None:
        server = self.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stopped.set())
        self._stopped.wait()
        log_event(log, "daemon.stopping")
        self.stop()
        if server:
            server.stop()

    def stop(self) -> None:
        self._stopped.set()
        if self.scheduler and self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        if self._worker is not None:
            self._worker.stop(timeout=30)
        self.store.close()
