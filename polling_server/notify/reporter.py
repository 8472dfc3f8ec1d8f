"""The reporter: a reconciler from durable state to the outbox, one `step()` at a time.

Each step reads what changed since it was last reported (builds whose status moved, applies whose Job state moved,
apply requests refused for good, rollbacks), computes the outbox items (messages.py, pure) and records them with the
"reported" mark in ONE transaction (`StateStore.record_reports`). So a crash before that transaction loses nothing
(the change is still unreported) and a crash after it repeats nothing (the items are queued, the change marked).
Nothing is sent here: sender.py sends the outbox on its own schedule.

A change older than REPORT_MAX_AGE_SECONDS when first seen is marked reported without a message: builds and applies
from before reporting was on (or before a target was added) would otherwise all be announced at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from polling_server.config import Settings
from polling_server.errors import StateError
from polling_server.logs import log_event
from polling_server.notify import messages
from polling_server.state import ApplyRecord, BuildRecord, StateStore

log = logging.getLogger(__name__)

REPORT_MAX_AGE_SECONDS = 86400.0
BATCH = 100
MAX_BATCHES = 20  # per step: a step stays short; the rest waits for the next one
ROLLBACKS_SCANNED = 20
APPLIES_SCANNED = 50


class Reporter:
    def __init__(self, settings: Settings, store: StateStore, clock: Callable[[], float] = time.time):
        self.settings = settings
        self.store = store
        self._clock = clock

    def _wants(self, event: str) -> bool:
        return any(event in t.events for t in self.settings.notifications)

    def _stale(self, *times: float | None) -> bool:
        known = [t for t in times if t is not None]
        return bool(known) and self._clock() - max(known) > REPORT_MAX_AGE_SECONDS

    def step(self) -> int:
        """Queue the reports of every change not yet reported; returns how many outbox rows were queued."""
        queued = skipped = 0
        try:
            for report in (self._builds, self._applies, self._rejected_applies, self._rollbacks):
                q, s = report()
                queued, skipped = queued + q, skipped + s
        except StateError as e:
            log_event(log, "state.write_failed", "warning", f"cannot record reports: {e}", reason=str(e))
        if skipped:
            log_event(log, "report.skipped", "info", f"{skipped} changes older than {REPORT_MAX_AGE_SECONDS / 3600:g}h "
                      "marked reported without a message", count=skipped)
        return queued

    def _builds(self) -> tuple[int, int]:
        queued = skipped = 0
        for _ in range(MAX_BATCHES):
            builds = self.store.builds_to_report(BATCH)
            previous = self.store.reported_statuses([b.id for b in builds]) if builds else {}
            for build in builds:
                if self._stale(build.created_at, build.started_at, build.finished_at):
                    self.store.record_reports(build=build)
                    skipped += 1
                    continue
                queued += self.store.record_reports(build=build, items=self._build_items(build, previous))
            if len(builds) < BATCH:
                break
        return queued, skipped

    def _build_items(self, build: BuildRecord, previous: dict[int, str | None]) -> list:
        superseding = None
        if build.superseded_by is not None:
            try:
                superseding = self.store.build(build.superseded_by)
            except IndexError:
                superseding = None  # pruned: the message says "a newer build" without naming it
        try:
            repo = self.settings.repository(build.repo)
        except KeyError:
            repo = None  # no longer configured: notifications still go out, a commit status does not
        return messages.build_items(self.settings, build, previous.get(build.id), superseding, repo)

    def _applies(self) -> tuple[int, int]:
        queued = skipped = 0
        for apply in self.store.applies_to_report(BATCH):
            if self._stale(apply.created_at, apply.accepted_at):
                self.store.record_reports(apply=apply)
                skipped += 1
                continue
            queued += self.store.record_reports(apply=apply,
                                                items=messages.apply_items(self.settings, apply, self._clock()))
        return queued, skipped

    def _rejected_applies(self) -> tuple[int, int]:
        if not self._wants("apply.failed"):
            return 0, 0
        found: list[ApplyRecord] = [a for a in self.store.applies(limit=APPLIES_SCANNED)
                                    if a.status == "rejected" and not self._stale(a.created_at)]
        items = [i for a in found for i in messages.rejected_apply_items(self.settings, a, self._clock())]
        return self._queue_new(items), 0

    def _rollbacks(self) -> tuple[int, int]:
        if not self._wants("rollback"):
            return 0, 0
        rows = [r for r in self.store.rollbacks(limit=ROLLBACKS_SCANNED) if not self._stale(r["at"])]
        items = [i for r in rows for i in messages.rollback_items(self.settings, r)]
        return self._queue_new(items), 0

    def _queue_new(self, items: list) -> int:
        """Queue the items of a scan whose dedupe keys are not in the outbox yet (no write when none is new)."""
        if not items:
            return 0
        known = self.store.outbox_keys([i.dedupe_key for i in items])
        new = [i for i in items if i.dedupe_key not in known]
        return self.store.record_reports(items=new) if new else 0
