"""Wires the poller together (the one place where parts meet) and runs it: once, or under APScheduler.

Jobs: a short tick that polls every repository whose own next poll is due (detect -> plan -> save), the chart
poll, sending due apply requests, following each accepted apply's helmsman Job, reporting (commit statuses and
notifications: the reporter queues them in the outbox, the sender sends it), moving the mutable image tags (also
after every build), and, hourly, pruning old builds with their logs (`builds.keep` per repository; also after
`--once`) and old outbox rows; the build worker runs
beside them on its own threads, so a slow build never delays detection. APScheduler's job defaults are explicit:
one instance per job, missed runs coalesced, a grace time for late runs; a job's exception is logged by APScheduler
and the schedule goes on.

A dry run starts from a copy of the stored state kept in memory: it follows changes across its own cycles, writes
nothing to disk, and never acts outward (no build, push, tag move, apply, commit status or notification).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.background import BackgroundScheduler

from polling_server.config import Settings
from polling_server.cycle import CycleReport, RepositoryPoller
from polling_server.errors import StateError
from polling_server.logs import log_event
from polling_server.metrics import Metrics
from polling_server.planning.model import BuildStatus
from polling_server.sources.git_remote import GitRemoteSource
from polling_server.sources.github import GitHubSource
from polling_server.sources.github_budget import GitHubBudget
from polling_server.state import StateStore
from polling_server.web.app import create_app, create_hooks_app
from polling_server.web.receiver import WebhookReceiver
from polling_server.web.server import HttpServer

log = logging.getLogger(__name__)

TICK_SECONDS = 0.5  # how often due repositories are looked for: the precision of every poll interval
APPLY_SEND_INTERVAL_SECONDS = 5.0
APPLY_FOLLOW_INTERVAL_SECONDS = 10.0
REPORT_INTERVAL_SECONDS = 2.0  # the reporter queues what changed; the sender sends it on its own job
REPORT_SEND_INTERVAL_SECONDS = 3.0
TAG_RECONCILE_INTERVAL_SECONDS = 30.0
PRUNE_INTERVAL_SECONDS = 3600.0  # old builds and their logs go slowly: nothing waits for the space
PRUNE_FIRST_DELAY_SECONDS = 60.0
HEALTH_TICK_LIMIT_SECONDS = 120.0
_AUTO = object()


@dataclass
class OnceReport:
    cycle: CycleReport
    builds: list = field(default_factory=list)
    chart_plan: object = None
    applies: list = field(default_factory=list)
    chart_error: str | None = None

    @property
    def failed(self) -> bool:
        """A build or apply that this run ran did not succeed, and this run will not try it again."""
        builds = any(b.status not in (BuildStatus.SUCCEEDED, BuildStatus.SUPERSEDED) for b in self.builds)
        return builds or any(a.status != "accepted" for a in self.applies)


class Daemon:
    def __init__(self, settings: Settings, *, dry_run: bool = False, store: StateStore | None = None,
                 sources: dict | None = None, builder=None, chart_watcher=None, apply_sender=None,
                 tag_mover=_AUTO):
        self.settings = settings
        self.dry_run = dry_run
        self.metrics = Metrics()
        if store is None:
            store = StateStore.in_memory_copy(settings.state_path) if dry_run else StateStore(settings.state_path)
        self.store = store
        self.store.check_rows()
        gh = settings.github
        # One budget per token: polls, reconciliation, tag peeling and source tarballs all go through it.
        self.github_budget = GitHubBudget(gh.max_requests_per_minute, gh.max_concurrent_requests)
        self.poller = RepositoryPoller(settings, self.store, self.metrics, sources or {
            "github": GitHubSource(gh, budget=self.github_budget),
            "git": GitRemoteSource(settings.git),
        })
        self.org_feeds = None
        github_source = self.poller.sources.get("github")
        if gh.org_feeds and isinstance(github_source, GitHubSource) and any(r.repo for r in settings.repositories):
            from polling_server.sources.org_feed import OrgFeeds

            self.org_feeds = OrgFeeds(settings, github_source, self.store)
        self.poller.on_planned = self._wake_worker
        self._builder = builder
        self._worker = None
        self._tag_mover = tag_mover
        self.chart_watcher = chart_watcher
        self.apply_sender = apply_sender
        if settings.chart_repository and chart_watcher is None:
            from polling_server.chart_watch import ChartWatcher

            self.chart_watcher = ChartWatcher(settings, self.store, self.metrics)
        if settings.helm_api and apply_sender is None and not dry_run:
            from polling_server.applies.helm_api_client import ApplySender

            self.apply_sender = ApplySender(settings, self.store, self.metrics)
        # Reporting and following apply Jobs act outward (statuses, notifications, helm-api): never in a dry run.
        self.reporter = self.outbox_sender = self.apply_follower = None
        if not dry_run:
            from polling_server.notify.reporter import Reporter
            from polling_server.notify.sender import OutboxSender

            self.reporter = Reporter(settings, self.store)
            # Commit statuses are GitHub requests like any other: they wait on the token's budget.
            self.outbox_sender = OutboxSender.for_settings(settings, self.store, budget=self.github_budget)
            if settings.helm_api:
                from polling_server.applies.job_follow import ApplyFollower

                self.apply_follower = ApplyFollower(settings, self.store)
        self.scheduler: BackgroundScheduler | None = None
        self.server: HttpServer | None = None
        self.hooks_server: HttpServer | None = None
        self.receiver = WebhookReceiver(settings, self.store, self.metrics, self.trigger_repository,
                                        self.trigger_charts if self.chart_watcher is not None else None)
        self._stopped = threading.Event()
        self.started_at = time.time()

    @property
    def tag_mover(self):
        """Moves staging and the floating tags; None in a dry run (it never acts outward)."""
        if self.dry_run:
            return None
        if self._tag_mover is _AUTO:
            from polling_server.builds.registry import registry_client_for
            from polling_server.builds.tag_mover import TagMover

            self._tag_mover = TagMover(self.settings, self.store, registry_client_for(self.settings), self.metrics)
        return self._tag_mover

    @property
    def worker(self):
        if self.dry_run:
            raise RuntimeError("a dry run builds nothing")
        if self._worker is None:
            from polling_server.builds.backend import backends_for
            from polling_server.builds.worker import BuildWorker

            # The Docker engine, Kubernetes Jobs, or both: each repository builds with its own `backend`.
            builder = self._builder or backends_for(self.settings, self.store, github_budget=self.github_budget)
            self._worker = BuildWorker(self.settings, self.store, builder, self.metrics, tag_mover=self.tag_mover)
        return self._worker

    def trigger_repository(self, name: str) -> None:
        """Poll `name` now (a webhook): start its poll at once on the pool, not at the next tick."""
        self.poller.poll_now(name)
        if self.scheduler is not None and self.scheduler.running:
            self.poller.poll_due()

    def trigger_charts(self) -> None:
        """Read the chart repository's index now (the charts hook); coalesces with a poll already running."""
        if self.scheduler is not None and self.scheduler.running and self.scheduler.get_job("poll-charts"):
            self.scheduler.modify_job("poll-charts", next_run_time=datetime.now(UTC))

    def _wake_worker(self) -> None:
        if self._worker is not None:
            self._worker.wake()  # start the new builds now, not at the worker's next look

    # --- jobs ---------------------------------------------------------------------------------------------
    def tick(self) -> CycleReport:
        """Poll every repository that is due now (on the poll pool; returns at once)."""
        report = self.poller.poll_due()
        self._count_queue()
        return report

    def poll_repositories(self) -> CycleReport:
        """Poll every repository now and wait for them (`--once`)."""
        report = self.poller.poll_all()
        self._count_queue()
        return report

    def _count_queue(self) -> None:
        try:
            self.metrics.build_queue.set(self.store.waiting_builds())
        except StateError:
            log.debug("cannot count the waiting builds", exc_info=True)

    def poll_charts(self):
        if self.chart_watcher is None:
            return None
        plan = self.chart_watcher.poll()
        self.metrics.last_cycle.labels("charts").set(time.time())
        return plan

    def send_applies(self) -> list:
        if self.apply_sender is None or self.dry_run:
            return []
        return self.apply_sender.send_due()

    def follow_applies(self) -> list:
        """Ask helm-api how each accepted apply's Job is, until it has ended."""
        return [] if self.apply_follower is None else self.apply_follower.follow()

    def report(self) -> int:
        """Queue commit statuses and notifications for what changed (the outbox); nothing is sent here."""
        return 0 if self.reporter is None else self.reporter.step()

    def send_reports(self) -> list:
        """Send the due outbox rows (its own job: a slow receiver never delays a build or a poll)."""
        return [] if self.outbox_sender is None else self.outbox_sender.send_due()

    def poll_org_feeds(self) -> list:
        """Read each organization's feed; the repositories it names are polled now."""
        if self.org_feeds is None:
            return []
        results = self.org_feeds.poll_all(self.trigger_repository, self.poller.reconcile_now)
        fed = self.org_feeds.fed_repositories()
        self.poller.org_fed = self.poller.sources["github"].org_fed = fed
        return results

    def move_tags(self) -> list:
        mover = self.tag_mover
        return [] if mover is None else mover.reconcile_all()

    def prune_builds(self) -> int:
        """Delete the oldest finished builds (with their logs) beyond `builds.keep` per repository."""
        if self.dry_run:
            return 0
        try:
            pruned = self.store.prune_builds(self.settings.builds.keep)
        except StateError as e:
            log_event(log, "state.write_failed", "warning", f"cannot prune old builds: {e}", reason=str(e))
            return 0
        if pruned:
            log_event(log, "builds.pruned", count=pruned, keep=self.settings.builds.keep)
        if self.outbox_sender is not None:
            try:
                self.outbox_sender.prune()
            except StateError as e:
                log_event(log, "state.write_failed", "warning", f"cannot prune the outbox: {e}", reason=str(e))
        return pruned

    # --- modes --------------------------------------------------------------------------------------------
    def run_once(self) -> OnceReport:
        """One full cycle: poll everything, then (unless dry-run) run the due builds and send due applies."""
        if not self.dry_run:
            self.worker.recover()
        github = sum(1 for r in self.settings.repositories if r.kind == "github")
        if github:
            # A first pass reads each repository's feed, branch and tags: about three requests each.
            needed = self.github_budget.pass_seconds(3 * github)
            if needed > 10:
                log_event(log, "once.budget", f"the GitHub request budget makes this pass over {github} repositories "
                          f"take about {needed:.0f}s", repositories=github, seconds=round(needed))
        report = OnceReport(self.poll_repositories())
        try:
            report.chart_plan = self.poll_charts()
        except Exception as e:  # noqa: BLE001 - the watcher logged it; --once still reports the rest
            report.chart_error = str(e)
        if not self.dry_run:
            report.builds = self.worker.run_until_idle()
            self.move_tags()
            report.applies = self.send_applies()
            self.follow_applies()
            self.report()
            self.send_reports()
            self.prune_builds()
        return report

    def health(self) -> tuple[bool, dict]:
        """Liveness: the scheduler runs and its tick ran recently. Never the disk: that is readiness."""
        now = time.time()
        last = self.poller.last_cycle_at
        limit = HEALTH_TICK_LIMIT_SECONDS
        running = bool(self.scheduler and self.scheduler.running)
        recent = (last is not None and now - last < limit) or (last is None and now - self.started_at < limit)
        return running and recent, {"scheduler_running": running,
                                    "last_poll_age_seconds": None if last is None else round(now - last, 1)}

    def ready(self) -> tuple[bool, dict]:
        """Readiness: the scheduler runs, and the state database can be read and written."""
        running = bool(self.scheduler and self.scheduler.running)
        try:
            self.store.waiting_builds()
            readable = True
        except StateError:
            readable = False
        writable = self.store.writable
        self.metrics.state_writable.set(1 if writable else 0)
        details = {"scheduler_running": running, "state_readable": readable, "state_writable": writable}
        if not writable:
            details["state_error"] = self.store.last_write_error
        return running and readable and writable, details

    def start(self) -> HttpServer | None:
        """Start the health endpoint, the scheduler and the build worker (non-blocking)."""
        if self.settings.http.enabled and self.server is None:
            # First, so a port in use ends the start before anything else runs.
            app = create_app(self.metrics, self.health, self.ready, self.receiver, store=self.store,
                             settings=self.settings)
            self.server = HttpServer(app, self.settings.http.host, self.settings.http.port)
        hooks = self.settings.webhooks
        if hooks.port is not None and self.hooks_server is None:
            self.hooks_server = HttpServer(create_hooks_app(self.receiver), hooks.host, hooks.port, name="hooks")
        if not self.dry_run:
            self.worker.recover()
            self.worker.start()
        self.scheduler = BackgroundScheduler(job_defaults={
            "max_instances": 1, "coalesce": True, "misfire_grace_time": 30})
        first = datetime.now(UTC)  # every job runs once right away, then on its interval
        for job_id, run, seconds, start in self._jobs(first):
            self.scheduler.add_job(run, "interval", seconds=seconds, id=job_id, next_run_time=start)
        self.scheduler.start()
        for server in (self.server, self.hooks_server):
            if server is not None:
                server.start()
        log_event(log, "daemon.started", repositories=len(self.settings.repositories), dry_run=self.dry_run,
                  health_port=self.server.port if self.server else None,
                  hooks_port=self.hooks_server.port if self.hooks_server else None)
        return self.server

    def _jobs(self, first: datetime) -> list[tuple[str, object, float, datetime]]:
        """The scheduler's jobs: (id, what, every how many seconds, first run). A dry run only detects."""
        jobs = [("poll-repositories", self.tick, TICK_SECONDS, first)]
        if self.org_feeds is not None:
            jobs.append(("poll-org-feeds", self.poll_org_feeds, self.settings.poll_interval_seconds, first))
        if self.chart_watcher is not None:
            jobs.append(("poll-charts", self.poll_charts, self.settings.chart_repository.poll_interval_seconds, first))
        if self.dry_run:
            return jobs
        acting = [
            ("send-applies", self.send_applies, APPLY_SEND_INTERVAL_SECONDS, self.apply_sender),
            ("follow-applies", self.follow_applies, APPLY_FOLLOW_INTERVAL_SECONDS, self.apply_follower),
            ("report", self.report, REPORT_INTERVAL_SECONDS, self.reporter),
            ("send-reports", self.send_reports, REPORT_SEND_INTERVAL_SECONDS, self.outbox_sender),
            ("move-tags", self.move_tags, TAG_RECONCILE_INTERVAL_SECONDS, self.tag_mover),
        ]
        jobs += [(job_id, run, seconds, first) for job_id, run, seconds, part in acting if part is not None]
        jobs.append(("prune-builds", self.prune_builds, PRUNE_INTERVAL_SECONDS,
                     first + timedelta(seconds=PRUNE_FIRST_DELAY_SECONDS)))
        return jobs

    def run_forever(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stopped.set())
        self.start()
        self._stopped.wait()
        log_event(log, "daemon.stopping")
        self.stop()

    def stop(self) -> None:
        self._stopped.set()
        self.poller.stop()  # a finished poll starts the next due one itself: that ends first
        if self.scheduler and self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        self.poller.close()
        if self._worker is not None:
            self._worker.stop(timeout=30)
        for server in (self.server, self.hooks_server):
            if server is not None:
                server.stop()
        self.server = self.hooks_server = None
        self.store.close()
