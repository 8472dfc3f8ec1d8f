"""Runs the queued builds: claims due builds from the store, runs them with the ImageBuilder under a watchdog, and
records each outcome (succeeded, queued again with exponential backoff, or failed for good); then the tag mover
brings the repository's mutable tags (`staging`, `1.2`, `1`) to where the pure decision says.

A claim is a lease as long as the time limit plus the grace: if the outcome cannot be written (disk full, database
locked), the build is due again when the lease ends (the push is idempotent) instead of blocking its repository,
and the store reports itself unwritable (readiness and the `poller_state_writable` metric) meanwhile.

Threads: `start()` runs `builds.concurrency` workers; the store lets at most one build per repository run at a time.
A build attempt runs on a thread of its own and the worker waits for it at most the build's time limit (plus a little
grace): past that the attempt is recorded as timed out and abandoned, and since only the worker records outcomes,
an abandoned attempt that ends later can never record a success over the timeout. The worker never dies of a
build's failure: anything unexpected is logged and recorded as a failed attempt.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from polling_server.builds.backend import backend_for
from polling_server.builds.build_log import BuildLog
from polling_server.builds.docker_engine import BuildResult, ImageBuilder
from polling_server.builds.tag_mover import TagMover
from polling_server.config import Settings
from polling_server.errors import BuildError, BuildTimeout, StateError
from polling_server.git_process import scrub
from polling_server.logs import log_event
from polling_server.metrics import Metrics
from polling_server.planning.model import BuildStatus
from polling_server.state import BuildRecord, StateStore

log = logging.getLogger(__name__)
output_log = logging.getLogger("polling_server.build_output")

IDLE_POLL_SECONDS = 2.0
MAX_BACKOFF_SECONDS = 3600.0


def retry_delay(base: float, attempt: int) -> float:
    """Exponential backoff: base, 2*base, 4*base... after the 1st, 2nd, 3rd failed attempt (capped at an hour)."""
    return min(base * (2 ** max(attempt - 1, 0)), MAX_BACKOFF_SECONDS)


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def watchdog_grace(timeout: float) -> float:
    """How long past the time limit the worker waits for the builder to notice the deadline itself."""
    return min(30.0, max(2.0, timeout * 0.05))


def lease_seconds(timeout: float) -> float:
    """A claim outlives the attempt it covers: the time limit, the watchdog's grace, and a minute to record it."""
    return timeout + watchdog_grace(timeout) + 60.0


@dataclass
class _Attempt:
    """What one build attempt's thread hands back to the worker."""

    result: BuildResult | None = None
    error: BaseException | None = None


class BuildWorker:
    def __init__(self, settings: Settings, store: StateStore, builder: ImageBuilder, metrics: Metrics,
                 tag_mover: TagMover | None = None):
        self.settings = settings
        self.store = store
        self.builder = builder
        self.metrics = metrics
        self.tag_mover = tag_mover
        self._secrets = settings.secret_values()  # masked in every build log
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []

    # --- lifecycle ------------------------------------------------------------------------------------------
    def recover(self) -> list[BuildRecord]:
        """At start-up: builds left running by a crash are queued to run again (finished ones stay finished)."""
        interrupted = self.store.requeue_interrupted()
        for b in interrupted:
            if b.status is BuildStatus.SUPERSEDED:
                log_event(log, "build.superseded", repo=b.repo, ref=b.ref, sha=b.sha, build=b.id, by=b.superseded_by,
                          reason=f"interrupted by a restart, and a newer build of {b.ref} was planned")
            else:
                log_event(log, "build.requeued", "warning", msg="interrupted by a restart; will run again",
                          repo=b.repo, ref=b.ref, sha=b.sha, build_id=b.id)
        self._update_queue_gauge()
        return interrupted

    def start(self) -> None:
        if self._threads:
            return
        self._stop.clear()
        for i in range(self.settings.builds.concurrency):
            t = threading.Thread(target=self._loop, name=f"build-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self, timeout: float | None = None) -> None:
        """Stop claiming builds and wait up to `timeout` seconds for the running ones to finish."""
        self._stop.set()
        self._wake.set()
        end = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if end is None else max(0.0, end - time.monotonic()))
        self._threads = [t for t in self._threads if t.is_alive()]

    def wake(self) -> None:
        """Look for due builds now instead of at the next idle check (call after builds were queued)."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                record = self._claim()
            except Exception as e:  # noqa: BLE001 - a store hiccup must not end the worker
                log_event(log, "state.write_failed", "error", f"cannot claim a build: {e}", reason=str(e))
                record = None
            self._update_state_gauge()
            if record is None:
                self._wake.wait(IDLE_POLL_SECONDS)
                self._wake.clear()
                continue
            self._process(record)

    def run_until_idle(self) -> list[BuildRecord]:
        """Run every build that is due now, one after the other, and return the records as they ended up.

        A build that fails here is not retried within the same call: its retry is due later, and builds that
        become due after the call started are left for the next call.
        """
        started = time.time()
        finished: list[BuildRecord] = []
        while True:
            try:
                record = self._claim(due_by=started)
            except StateError as e:
                log_event(log, "state.write_failed", "error", f"cannot claim a build: {e}", reason=str(e))
                self._update_state_gauge()
                break
            if record is None:
                break
            finished.append(self._process(record))
        self._update_queue_gauge()
        return finished

    def _claim(self, due_by: float | None = None) -> BuildRecord | None:
        superseded: list[int] = []
        lease = lease_seconds(self.settings.builds.timeout_seconds)
        record = self.store.claim_build(due_by=due_by, lease_seconds=lease, superseded=superseded)
        for build_id in superseded:
            b = self.store.build(build_id)
            log_event(log, "build.superseded", repo=b.repo, ref=b.ref, sha=b.sha, build=b.id, by=b.superseded_by,
                      reason=f"a newer build of {b.ref} was planned before this one could run again")
            self._count("superseded", time.monotonic())
        return record

    # --- one build ------------------------------------------------------------------------------------------
    def _process(self, record: BuildRecord) -> BuildRecord:
        """Run a claimed build and record its outcome; never raises."""
        fields = {"repo": record.repo, "ref": record.ref, "sha": record.sha, "build_id": record.id}
        began = time.monotonic()
        build_log = BuildLog(self.store, record.id, self._secrets, self.settings.builds.log_max_bytes,
                             repo=record.repo)
        try:
            self._update_queue_gauge()
            try:
                repo = self.settings.repository(record.repo)
            except KeyError:
                build_log.line(f"== repository {record.repo!r} is no longer configured: not built")
                build_log.close()
                self.store.fail_build(record.id, f"repository {record.repo!r} is no longer configured", None)
                log_event(log, "build.failed", "error", reason="repository no longer configured",
                          attempt=record.attempts, will_retry=False, **fields)
                self._count("failed", began)
                build_log.complete()
                return self.store.build(record.id)
            log_event(log, "build.started", kind=record.kind.value, attempt=record.attempts, **fields)
            build_log.line(f"== {_utc_now()} attempt {record.attempts} of {record.max_attempts}: "
                           f"{record.kind.value} build of {record.repo} {record.ref} at {record.sha}")
            result, error = self._attempt(record, repo, build_log)
            # The whole log is written before the outcome: a reader that sees the build finished has all of it.
            build_log.line(f"== {_utc_now()} pushed {' '.join(result.tags)} ({result.digest})" if result is not None
                           else f"== {_utc_now()} attempt {record.attempts} failed: {type(error).__name__}: {error}")
            build_log.close()
            if result is not None:
                self.store.finish_build(record.id, list(result.tags), result.digest)
                log_event(log, "build.succeeded", tags=list(result.tags), digest=result.digest,
                          seconds=round(time.monotonic() - began, 1), **fields)
                self._count("succeeded", began)
            else:
                self._record_failure(record, error, fields, began)
        except StateError as e:
            # The outcome is lost; the lease makes the build due again once it ends (the push is idempotent).
            log_event(log, "state.write_failed", "error", f"cannot record the outcome of build {record.id}: {e}",
                      reason=str(e), will_retry=True, **fields)
        except Exception:  # noqa: BLE001 - the worker outlives anything a build does
            log.exception("recording the outcome of build %s failed", record.id)
        finally:
            build_log.close()
            self._update_queue_gauge()
            self._update_state_gauge()
        current = self._current(record)
        if current.status not in (BuildStatus.QUEUED, BuildStatus.RUNNING):
            build_log.complete()  # ended (succeeded, failed for good, superseded): no attempt will add to it
        self._move_tags(record.repo)
        return self._current(record)

    def _current(self, record: BuildRecord) -> BuildRecord:
        try:
            return self.store.build(record.id)
        except StateError:
            return record

    def _move_tags(self, repo: str) -> None:
        if self.tag_mover is None:
            return
        try:
            self.tag_mover.reconcile(repo)
        except Exception:  # noqa: BLE001 - a failed move is retried by the next reconcile
            log.exception("moving the image tags of %s failed", repo)

    def _attempt(self, record: BuildRecord, repo, build_log: BuildLog | None = None,
                 ) -> tuple[BuildResult | None, BaseException | None]:
        """Run the builder on its own thread; give up on it once the time limit (plus grace) has passed."""
        attempt = _Attempt()
        short = record.sha[:12]

        def on_log(line: str) -> None:
            output_log.info("%s@%s | %s", record.repo, short, scrub(line, self._secrets))
            if build_log is not None:
                build_log.line(line)  # kept with the build (batched; a failed write never fails the build)

        def run() -> None:
            try:
                attempt.result = backend_for(self.builder, self.settings, repo).build(record, repo, on_log)
            except BaseException as e:  # noqa: BLE001 - handed to the worker, which records it
                attempt.error = e

        timeout = self.settings.builds.timeout_seconds
        thread = threading.Thread(target=run, name=f"build-{record.id}", daemon=True)
        thread.start()
        thread.join(timeout + watchdog_grace(timeout))
        if thread.is_alive():
            # Abandoned: its eventual result is never looked at, so it cannot be recorded.
            return None, BuildTimeout(f"the build did not finish within {timeout:g}s")
        if attempt.result is None and attempt.error is None:
            return None, RuntimeError("the builder returned nothing")
        return attempt.result, attempt.error

    def _record_failure(self, record: BuildRecord, error: BaseException | None, fields: dict,
                        began: float) -> None:
        if isinstance(error, BuildError):
            reason = f"{type(error).__name__}: {error}"
        else:
            reason = f"internal error: {type(error).__name__}: {error}"
            log.error("build %s raised an unexpected error", record.id, exc_info=error)
        retry_in = retry_delay(self.settings.builds.retry_backoff_seconds, record.attempts)
        status = self.store.fail_build(record.id, reason, retry_in)
        if status is BuildStatus.SUPERSEDED:
            log_event(log, "build.superseded", repo=record.repo, ref=record.ref, sha=record.sha, build=record.id,
                      reason=f"failed ({reason}); a newer build of {record.ref} was planned, so it is not retried")
            self._count("superseded", began)
            return
        will_retry = status is BuildStatus.QUEUED
        log_event(log, "build.failed", "warning" if will_retry else "error", reason=reason,
                  attempt=record.attempts, will_retry=will_retry,
                  retry_in=round(retry_in, 1) if will_retry else None, **fields)
        self._count("retrying" if will_retry else "failed", began)

    def _count(self, outcome: str, began: float) -> None:
        self.metrics.builds.labels(outcome).inc()
        self.metrics.build_seconds.labels(outcome).observe(time.monotonic() - began)

    def _update_state_gauge(self) -> None:
        self.metrics.state_writable.set(1 if self.store.writable else 0)

    def _update_queue_gauge(self) -> None:
        try:
            self.metrics.build_queue.set(self.store.waiting_builds())
        except Exception:  # noqa: BLE001 - a gauge is not worth a crash
            log.debug("cannot count the waiting builds", exc_info=True)
