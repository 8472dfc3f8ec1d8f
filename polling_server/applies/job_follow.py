"""Following each accepted apply's helmsman Job until it ends, so the status page and the notifications say whether
helmsman succeeded, not only that it started.

For every accepted apply whose Job has not been seen to end, `GET <helm_api.url>/apply/<job>` (HelmApiClient.
job_state); a new state is stored (`StateStore.set_apply_job_state`) and logged: `apply.job_succeeded`,
`apply.job_failed`, or `apply.job_unknown` once the Job is gone before it was seen to end (helm-api answers 404 for
it). The reporter turns the stored change into notifications. When helm-api cannot be asked (down, or refusing the
token), the step stops and says so once until it answers again; the next step asks again.
"""

from __future__ import annotations

import logging

from polling_server.applies.helm_api_client import HelmApiClient
from polling_server.config import Settings
from polling_server.errors import ApplyError, ApplyRejected, StateError
from polling_server.logs import log_event
from polling_server.state import ApplyRecord, StateStore

log = logging.getLogger(__name__)

_ENDED = {"succeeded": ("apply.job_succeeded", "info"), "failed": ("apply.job_failed", "error"),
          "unknown": ("apply.job_unknown", "warning")}


class ApplyFollower:
    def __init__(self, settings: Settings, store: StateStore, client: HelmApiClient | None = None):
        if settings.helm_api is None:
            raise ValueError("ApplyFollower needs settings.helm_api")
        self.store = store
        self.client = client or HelmApiClient(settings.helm_api)
        self._failing = False

    def follow(self) -> list[ApplyRecord]:
        """Ask for the Job of every apply not yet seen to end; returns the applies whose state changed."""
        changed: list[ApplyRecord] = []
        try:
            for record in self.store.applies_to_follow():
                try:
                    state = self.client.job_state(record.job)
                except ApplyError as e:
                    self._failed(record, e)
                    break
                if self._failing:
                    self._failing = False
                    log_event(log, "apply.follow_recovered", "info", "helm-api answers again", job=record.job)
                if state != record.job_state:
                    self.store.set_apply_job_state(record.id, state)
                    changed.append(self.store.apply(record.id))
                    self._log(record, state)
        except StateError as e:
            log_event(log, "state.write_failed", "warning", f"cannot record a Job's state: {e}", reason=str(e))
        return changed

    def _log(self, record: ApplyRecord, state: str) -> None:
        fields = {"request_id": record.request_id, "job": record.job, "state": state, "was": record.job_state}
        if state in _ENDED:
            event, level = _ENDED[state]
            log_event(log, event, level, **fields)
        else:
            log_event(log, "apply.job_state", **fields)

    def _failed(self, record: ApplyRecord, error: ApplyError) -> None:
        if self._failing:
            log.debug("helm-api still cannot say how Job %s is: %s", record.job, error)
            return
        self._failing = True
        level = "error" if isinstance(error, ApplyRejected) else "warning"
        log_event(log, "apply.follow_failed", level, f"cannot ask helm-api how Job {record.job} is: {error} "
                  "(logged once until it answers)", job=record.job, request_id=record.request_id, reason=str(error))
