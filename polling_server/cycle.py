"""Polling the configured repositories: fetch -> plan -> save (the builds run elsewhere), each repository at its
own due time.

The daemon calls `poll_due()` on a short tick: repositories whose next poll is due (not already being polled) are
polled on the bounded pool, the longest overdue first, and each one's next poll is set to the start of this one
plus the poll interval (or the server's X-Poll-Interval when that is longer). So the configured interval is the
interval, for every repository, whatever the others do. Only as many scheduled polls are started as the pool has
free workers (a finished poll starts the next due one), so no poll waits in a queue with a stale place in line.
A triggered poll (`poll_now`: a webhook, an organization feed's event) runs on a small lane of its own and is
urgent for the request budget: it never waits behind scheduled polls, even when they have fallen behind. A trigger
for a repository being polled hurries that poll (its remaining requests become urgent) and follows it at once.
`poll_all()` polls every repository now (`--once`).

GitHub repositories share one request budget (sources/github_budget.py): their first polls are spread over the
interval by a stable offset per repository instead of fired as one herd, a triggered poll (webhook) is urgent, and
when the budget cannot cover a pass over every repository within the interval the poller says so once (and in
`poller_github_effective_interval_seconds`) instead of falling behind silently.

Repositories are polled concurrently (bounded by `max_concurrent_polls`), each on its own: a failing repository
is logged and counted and never stops the others. GitHub's rate limit is per token, so a rate-limit answer pauses
every GitHub repository until the time GitHub gives (logged once per episode); git remotes go on. A repository is
not polled again before the server's X-Poll-Interval has passed. The state is written only when something
changed, in one transaction with the builds planned (see state.py). A dry run hands this an in-memory copy of the
state (see daemon.py), so it follows its own changes and writes nothing to disk.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field

from polling_server.config import RepositorySettings, Settings
from polling_server.errors import RateLimited, SourceError
from polling_server.logs import log_event
from polling_server.metrics import Metrics
from polling_server.planning.model import BuildKind, BuildRequest
from polling_server.planning.planner import plan_repository
from polling_server.planning.versions import parse_release_tag
from polling_server.sources.base import RepositorySource
from polling_server.sources.github_budget import URGENT
from polling_server.state import StateStore

log = logging.getLogger(__name__)

TRIGGER_WORKERS = 4  # the triggered polls' lane (at most max_concurrent_polls): triggers coalesce per repository


@dataclass
class CycleReport:
    polled: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    planned: list[BuildRequest] = field(default_factory=list)
    counted_requests: int = 0
    not_modified: int = 0


class RepositoryPoller:
    def __init__(self, settings: Settings, store: StateStore, metrics: Metrics,
                 sources: dict[str, RepositorySource], clock: Callable[[], float] = time.time):
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self.sources = sources
        self._clock = clock
        self._lock = threading.Lock()
        self._not_before: dict[str, float] = {}  # repo -> earliest next poll (X-Poll-Interval)
        self._paused_until: dict[str, float] = {}  # source kind -> end of a rate-limit episode
        # repo -> last time its refs were read directly. In memory on purpose: after a restart every repository
        # is reconciled on its first poll, which also catches whatever changed while the daemon was down.
        self._reconciled_at: dict[str, float] = {}
        self._next_due: dict[str, float] = {}  # repo -> when its next scheduled poll is due (absent: now)
        self._in_flight: set[str] = set()
        self._polling: dict[str, tuple] = {}  # repo -> (its budget, the thread polling it), while its source reads
        self._forced: set[str] = set()  # triggered (webhook): poll at once, refs read, X-Poll-Interval aside
        self._pool: ThreadPoolExecutor | None = None  # scheduled polls
        self._trigger_pool: ThreadPoolExecutor | None = None  # triggered polls, never behind scheduled ones
        self._scheduled_running = 0
        self._closed = False
        self.on_planned: Callable[[], None] | None = None  # called after a scheduled poll planned builds
        self._started = clock()
        self._points: dict[str, float] = {}  # repo -> GitHub points a poll of it costs (moving average)
        self._points_total = 0.0
        self._github_count = sum(1 for r in settings.repositories if r.kind == "github")
        self._budget_short = False
        self.org_fed: set[str] = set()  # polled on the reconcile interval: an organization feed detects changes
        self.last_cycle_at: float | None = None

    # --- scheduled polling (the daemon) -------------------------------------------------------------------
    def _first_due(self, repo: RepositorySettings) -> float:
        """GitHub repositories start spread over the interval (a stable offset each); others at once."""
        if repo.kind != "github":
            return 0.0
        offset = int(hashlib.sha256(repo.name.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        return self._started + offset * self.settings.poll_interval_seconds

    def due_repositories(self, now: float) -> list[RepositorySettings]:
        """Repositories whose next poll is due at `now`, not being polled, and not paused by a rate limit:
        triggered ones first, then the longest overdue."""
        with self._lock:
            return self._due_locked(now)

    def _due_locked(self, now: float) -> list[RepositorySettings]:
        for r in self.settings.repositories:
            if r.name not in self._next_due:
                self._next_due[r.name] = self._first_due(r)
        due = [r for r in self.settings.repositories
               if self._next_due[r.name] <= now and r.name not in self._in_flight
               and self._paused_until.get(r.kind, 0.0) <= now]
        return sorted(due, key=lambda r: (r.name not in self._forced, self._next_due[r.name]))

    def next_due(self, name: str) -> float:
        with self._lock:
            return self._next_due.get(name, 0.0)

    def poll_now(self, name: str) -> None:
        """Make `name` due at once (a webhook, an operator): the next tick polls it and reads its refs.

        Triggers coalesce: however many arrive, one poll is pending; one arriving while the repository is being
        polled makes it due again right after (that poll may have read the refs before the push).
        """
        with self._lock:
            self._next_due[name] = 0.0
            self._forced.add(name)
            running = self._polling.get(name)
            if running is not None:
                running[0].hurry(running[1])  # the poll under way ends soon, and the triggered one follows

    def reconcile_now(self, name: str) -> None:
        """Make `name` due now for an ordinary poll (an organization feed overflowed): the budget spreads them."""
        with self._lock:
            self._next_due[name] = 0.0

    def poll_due(self, wait: bool = False) -> CycleReport:
        """Start the polls that are due: every triggered one on its lane, scheduled ones up to the pool's free
        workers. With `wait` (tests, benchmarks), start every due one and wait for them, and report."""
        now = self._clock()
        report = CycleReport()
        with self._lock:
            if self._closed:
                return report
            due = self._due_locked(now)
            triggered = [r for r in due if r.name in self._forced]
            scheduled = [r for r in due if r.name not in self._forced]
            if not wait:
                scheduled = scheduled[:max(0, self._workers() - self._scheduled_running)]
            self._scheduled_running += len(scheduled)
            self._in_flight.update(r.name for r in triggered + scheduled)
            # Submitted under the lock, so `stop` cannot come between deciding and submitting.
            futures = [(r, self._lane(True).submit(self._run_poll, r, False, False)) for r in triggered]
            futures += [(r, self._lane(False).submit(self._run_poll, r, True, not wait)) for r in scheduled]
        if wait:
            for repo, future in futures:
                self._add(report, repo, future.result())
        self.last_cycle_at = now
        self.metrics.last_cycle.labels("repositories").set(now)
        return report

    def _run_poll(self, repo: RepositorySettings, scheduled: bool, then_next: bool):
        """One poll on a lane; then its next due time, and (`then_next`: a scheduled worker freed) the next poll."""
        started = self._clock()
        outcome = None
        try:
            outcome = self._poll_guarded(repo)
        finally:
            with self._lock:
                retrigger = repo.name in self._forced  # triggered again while it was being polled
                if retrigger:
                    self._next_due[repo.name] = 0.0
                else:
                    every = (self.settings.reconcile_interval_seconds if repo.name in self.org_fed
                             else self.settings.poll_interval_seconds)
                    self._next_due[repo.name] = max(started + every, self._not_before.get(repo.name, 0.0))
                self._in_flight.discard(repo.name)
                if scheduled:
                    self._scheduled_running -= 1
        if isinstance(outcome, tuple) and outcome[0].builds and self.on_planned is not None:
            self.on_planned()
        if (then_next or retrigger) and not self._closed:
            self.poll_due()  # this worker is free: the next due poll starts now, not at the next tick
        return outcome

    def _workers(self) -> int:
        return max(1, self.settings.max_concurrent_polls)

    def _lane(self, triggered: bool) -> ThreadPoolExecutor:
        """The triggered or the scheduled polls' pool (the caller holds the lock, the poller is not stopped)."""
        if triggered:
            if self._trigger_pool is None:
                self._trigger_pool = ThreadPoolExecutor(min(TRIGGER_WORKERS, self._workers()),
                                                        thread_name_prefix="poll-now")
            return self._trigger_pool
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._workers(), thread_name_prefix="poll")
        return self._pool

    def stop(self) -> None:
        """Start no more polls (the daemon stops); those running finish."""
        with self._lock:
            self._closed = True

    def close(self) -> None:
        self.stop()
        for pool in (self._trigger_pool, self._pool):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        self._pool = self._trigger_pool = None

    # --- one pass over everything (--once) -----------------------------------------------------------------

    def poll_all(self) -> CycleReport:
        report = CycleReport()
        repos = self.settings.repositories
        workers = max(1, min(self.settings.max_concurrent_polls, len(repos)))
        with ThreadPoolExecutor(workers, thread_name_prefix="poll") as pool:
            for repo, outcome in zip(repos, pool.map(self._poll_guarded, repos), strict=True):
                self._add(report, repo, outcome)
        self.last_cycle_at = self._clock()
        self.metrics.last_cycle.labels("repositories").set(self.last_cycle_at)
        return report

    @staticmethod
    def _add(report: CycleReport, repo: RepositorySettings, outcome) -> None:
        if outcome is None:
            report.skipped += 1
        elif isinstance(outcome, str):
            report.failed[repo.name] = outcome
        else:
            plan, counted, not_modified = outcome
            report.polled += 1
            report.planned.extend(plan.builds)
            report.counted_requests += counted
            report.not_modified += not_modified

    def _poll_guarded(self, repo: RepositorySettings):
        try:
            return self.poll_one(repo)
        except RateLimited as e:
            return str(e)  # logged once per episode by _pause
        except SourceError as e:
            self.metrics.polls.labels(repo.kind, "failed").inc()
            log_event(log, "poll.failed", "warning", str(e), repo=repo.name, reason=str(e))
            return str(e)
        except Exception as e:  # noqa: BLE001 - one repository's bug must not stop the others
            self.metrics.polls.labels(repo.kind, "failed").inc()
            log.exception("poll of %s failed unexpectedly", repo.name, extra={"event": "poll.failed",
                                                                              "fields": {"repo": repo.name}})
            return f"{type(e).__name__}: {e}"

    def poll_one(self, repo: RepositorySettings):
        """Poll one repository. Returns (plan, counted requests, 304s), or None when it is not due yet."""
        now = self._clock()
        with self._lock:
            forced = repo.name in self._forced
            if self._paused_until.get(repo.kind, 0) > now or (not forced and self._not_before.get(repo.name, 0) > now):
                return None
            self._forced.discard(repo.name)
        source = self.sources[repo.kind]
        state = self.store.repo_state(repo.name)
        with self._lock:
            last_reconcile = self._reconciled_at.get(repo.name)
        reconcile = (forced or not state.baseline or last_reconcile is None
                     or now - last_reconcile >= self.settings.reconcile_interval_seconds)
        budget = getattr(source, "budget", None)
        thread = threading.get_ident()
        if budget is not None:
            with self._lock:
                self._polling[repo.name] = (budget, thread)
        try:
            with budget.prioritized(URGENT) if budget is not None and forced else nullcontext():
                polled = source.poll(repo, self.store, state, reconcile)
        except RateLimited as e:
            self._pause(repo.kind, e)
            raise
        finally:
            if budget is not None:
                with self._lock:
                    self._polling.pop(repo.name, None)
                    budget.unhurry(thread)
        if budget is not None:
            self._account(repo, budget, polled.counted_requests + polled.not_modified)
        self.metrics.counted_requests.inc(polled.counted_requests)
        self.metrics.not_modified.labels(repo.kind).inc(polled.not_modified)
        for why in polled.skipped:
            log_event(log, "poll.skipped", "warning", why, repo=repo.name)
        with self._lock:
            if polled.poll_interval:
                self._not_before[repo.name] = now + polled.poll_interval
            if reconcile:
                self._reconciled_at[repo.name] = now

        plan = plan_repository(repo, polled.observation, state,
                               self._highest_major(repo, state) if repo.approve_major else None)
        for d in plan.decisions:
            log_event(log, d.event, d.level, **d.fields)
        for b in plan.builds:
            self.metrics.builds_planned.labels(b.kind.value).inc()
        self.metrics.polls.labels(repo.kind, "ok").inc()

        cursors = dict(polled.cursors)
        changed = plan.new_state != state or plan.builds
        cursors = {k: c for k, c in cursors.items() if c != self.store.cursor(k)} if not changed else cursors
        if changed or cursors or polled.tag_objects:
            ids = self.store.save_poll(repo.name, plan if changed else None, cursors, polled.tag_objects,
                                       max_attempts=self.settings.builds.retries + 1)
            for new_id in ids:
                for old in self.store.superseded_by(new_id):
                    log_event(log, "build.superseded", repo=repo.name, ref=old.ref, sha=old.sha, build=old.id,
                              by=new_id, reason=f"a newer build of {old.ref} was planned")
        return plan, polled.counted_requests, polled.not_modified

    def _highest_major(self, repo: RepositorySettings, state) -> int | None:
        """The highest released major: stored semver tags (not gated ones) and succeeded release builds."""
        gated = self.store.gated_tags(repo.name)
        versions = [parse_release_tag(t) for t in state.tags if t not in gated]
        versions += [parse_release_tag(b.version or b.ref) for b in self.store.succeeded_builds(repo.name,
                                                                                               BuildKind.RELEASE)]
        majors = [v.major for v in versions if v is not None and not v.prerelease]
        return max(majors) if majors else None

    def _account(self, repo: RepositorySettings, budget, points: float) -> None:
        """Track what a pass over every GitHub repository costs, and say when the budget cannot cover it."""
        with self._lock:
            previous = self._points.get(repo.name)
            current = points if previous is None else 0.8 * previous + 0.2 * points
            self._points[repo.name] = current
            self._points_total += current - (previous or 0.0)  # kept as it goes: no pass over every repository
            known = len(self._points)
            github = self._github_count
            per_pass = self._points_total + (github - known) * (self._points_total / known)
            needed = budget.pass_seconds(per_pass)
            interval = self.settings.poll_interval_seconds
            short = needed > interval
            changed, self._budget_short = short != self._budget_short, short
        self.metrics.effective_interval.set(max(interval, needed))
        if changed and short:
            log_event(log, "poll.budget_short", "warning",
                      f"the GitHub budget ({budget.points_per_minute:g} points a minute) covers a pass over "
                      f"{github} repositories in {needed:.0f}s, not the configured {interval:g}s: event-led "
                      "polls and webhooks go first", effective_interval_seconds=round(needed, 1),
                      repositories=github)
        elif changed:
            log_event(log, "poll.budget_ok", effective_interval_seconds=round(max(interval, needed), 1))

    def _pause(self, kind: str, e: RateLimited) -> None:
        with self._lock:
            already = self._paused_until.get(kind, 0) > self._clock()
            self._paused_until[kind] = max(self._paused_until.get(kind, 0), e.resume_at)
        if not already:
            self.metrics.rate_limited.inc()
            log_event(log, "poll.rate_limited", "warning", str(e), source=kind,
                      resume_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(e.resume_at)))

