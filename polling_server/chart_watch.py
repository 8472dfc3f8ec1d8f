"""The chart poll step (ChartWatcher): fetch the index → plan_charts → log → save the state and queue the apply
request in one transaction. Reading the index itself is sources/chart_index.py.
"""

from __future__ import annotations

import logging

from polling_server.applies.helm_api_client import apply_reason
from polling_server.config import Settings
from polling_server.errors import SourceError, SourceUnavailable
from polling_server.http import safe_url
from polling_server.logs import log_event
from polling_server.metrics import Metrics
from polling_server.planning.model import ChartPlan
from polling_server.planning.planner import plan_charts
from polling_server.sources.chart_index import ChartIndexSource
from polling_server.state import Cursor, StateStore

log = logging.getLogger(__name__)

_SOURCE = "charts"


class ChartWatcher:
    """One chart poll step: fetch the index, plan against the stored state, log, save (and so queue the apply)."""

    def __init__(self, settings: Settings, store: StateStore, metrics: Metrics,
                 source: ChartIndexSource | None = None):
        if settings.chart_repository is None:
            raise ValueError("ChartWatcher needs settings.chart_repository")
        self.settings = settings
        self.repo = settings.chart_repository
        self.store = store
        self.metrics = metrics
        self.source = source or ChartIndexSource(self.repo)
        # The key of this repository in the state database, without any userinfo the URL may carry.
        self.repo_url = safe_url(self.repo.url)
        self.cursor_key = f"chart-index:{self.repo_url}"

    def poll(self) -> ChartPlan | None:
        """Poll once. Returns the plan made from a new index; None when the index was unchanged or could not be
        read. A read failure is logged (`poll.failed`) and swallowed: the state is untouched, the next poll retries.
        """
        state, index_hash = self.store.chart_state(self.repo_url)
        stored = self.store.cursor(self.cursor_key)
        # Validators are only worth sending for the index whose processing was saved (its hash matches).
        if index_hash and stored.value == index_hash:
            cursor = Cursor(stored.etag, stored.last_modified, index_hash)
        else:
            cursor = Cursor(value=index_hash)
        try:
            fetched = self.source.fetch(cursor)
        except SourceError as e:
            self.metrics.polls.labels(_SOURCE, "failed").inc()
            level = "warning" if isinstance(e, SourceUnavailable) else "error"
            log_event(log, "poll.failed", level, str(e), repository=self.repo_url, reason=str(e))
            return None

        if not fetched.changed:
            if fetched.not_modified:
                self.metrics.not_modified.labels(_SOURCE).inc()
            self.metrics.polls.labels(_SOURCE, "unchanged").inc()
            log_event(log, "charts.unchanged", "debug", repository=self.repo_url,
                      reason="not modified (304)" if fetched.not_modified else "same index hash")
            self._save_cursor(stored, fetched.cursor)
            return None

        plan = plan_charts(fetched.index, state, self.repo.charts)
        for d in plan.decisions:
            log_event(log, d.event, d.level, repository=self.repo_url, **d.fields)
        self.metrics.polls.labels(_SOURCE, "ok").inc()
        if state.baseline and plan.new_state.versions == state.versions:
            # The bytes changed but not the watched (name, version, digest) set: remember the hash only.
            self.store.save_index_hash(self.repo_url, fetched.index_hash)
        else:
            record = self.store.save_charts(self.repo_url, plan, fetched.index_hash)
            if record is not None:
                log_event(log, "apply.queued", repository=self.repo_url, request_id=record.request_id,
                          changes=len(record.changes), reason=apply_reason(record.changes, limit=300))
        # Saved after the state it stands for: a crash in between costs one full download, never a lost change.
        self._save_cursor(stored, fetched.cursor)
        return plan

    def _save_cursor(self, stored: Cursor, new: Cursor) -> None:
        """Store the server's validators; nothing to store for a server that sends none (ChartMuseum)."""
        if new != stored and (new.etag or new.last_modified or stored.etag or stored.last_modified):
            self.store.save_poll(self.cursor_key, None, {self.cursor_key: new})


