"""The apply service: carry out the planner's steps against a JobBackend (create, resume, coalesce) and reconcile.

No lock anywhere: the API server decides races (409 AlreadyExists on create, 409 Conflict on a stale
resourceVersion); the loser re-lists and plans again, a bounded number of times.

The runs it sees are every Job the CronJob controls, not only ours: Jobs are listed without a label selector
(the CronJob controller's and kubectl's Jobs carry no label of ours) and kept by their controller reference.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from helm_api import jobs as J
from helm_api.backend import JobBackend
from helm_api.errors import AlreadyExistsError, BusyError, ConflictError, HelmApiError, JobNotFoundError
from helm_api.logs import event_fields
from helm_api.metrics import ApplyMetrics

log = logging.getLogger(__name__)

MAX_APPLY_ATTEMPTS = 25
# Recording a request id on the waiting Job races with every other coalescing request (one wins per round,
# so the system always progresses); those losses get a larger budget than create/resume races.
MAX_COALESCE_CONFLICTS = 250


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApplyService:
    """POST /apply, GET /apply, GET /apply/<job> and the reconciler, over one backend."""

    def __init__(
        self,
        backend: JobBackend,
        metrics: ApplyMetrics,
        *,
        clock: Callable[[], str] = utc_now,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.backend = backend
        self.metrics = metrics
        self.clock = clock
        self.sleep = sleep
        self._active: set[str] = set()  # Jobs seen queued/running by this process, to log when they finish
        self._active_lock = threading.Lock()

    # ----- reading ---------------------------------------------------------------------------------------

    def _list(self) -> list[dict[str, Any]]:
        """Every run of the CronJob: ours, the CronJob controller's and kubectl's alike."""
        # No label selector: only the controller reference tells a run of this CronJob, and no field
        # selector can match it, so the namespace's Jobs are listed and filtered here.
        name = self.backend.cronjob_name
        jobs = [job for job in self.backend.list_jobs("") if J.is_run_of(job, name)]
        self._note_states(jobs)
        return jobs

    def _note_states(self, jobs: list[dict[str, Any]]) -> None:
        with self._active_lock:
            for job in jobs:
                name = job["metadata"]["name"]
                state = J.job_state(job)
                if state in J.FINISHED_STATES:
                    if name in self._active:
                        self._active.discard(name)
                        self.metrics.jobs_finished.labels(state=state).inc()
                        reason = J.summarize_job(job)["reason"]
                        origin = J.job_origin(job)
                        log.info(
                            "apply finished: job=%s state=%s origin=%s reason=%r",
                            name,
                            state,
                            origin,
                            reason,
                            extra=event_fields(
                                "apply.finished", job=name, state=state, origin=origin, reason=reason
                            ),
                        )
                else:
                    self._active.add(name)

    def _answer(self, job: Mapping[str, Any], **flags: bool) -> dict[str, Any]:
        summary = J.summarize_job(job)
        summary["namespace"] = summary["namespace"] or self.backend.namespace
        answer = {"created": False, "coalesced": False, "duplicate": False}
        answer.update(flags)
        if self.backend.offline:
            answer["created"] = False
        answer["offline"] = self.backend.offline
        return {**summary, **answer}

    def list_applies(self, limit: int) -> list[dict[str, Any]]:
        jobs = self.reconcile()
        return [self._answer(job) for job in J.newest_first(jobs)[:limit]]

    def get_apply(self, name: str) -> dict[str, Any]:
        for job in self.reconcile():
            if job["metadata"]["name"] == name:
                return self._answer(job)
        raise JobNotFoundError(
            f"no run {name} of CronJob {self.backend.cronjob_name} in namespace {self.backend.namespace}",
            job=name,
        )

    # ----- acting ----------------------------------------------------------------------------------------

    def _resume(self, job: Mapping[str, Any], request_id: str | None, reason: str) -> dict[str, Any]:
        """Start a waiting Job; a stale resourceVersion raises ConflictError (someone else acted first)."""
        metadata: dict[str, Any] = {"resourceVersion": job["metadata"]["resourceVersion"]}
        if request_id:
            ids = [*J.job_request_ids(job), request_id]
            metadata["annotations"] = {J.REQUEST_IDS_ANNOTATION: J.encode_request_ids(ids)}
        resumed = self.backend.patch_job(job["metadata"]["name"], {"metadata": metadata, "spec": {"suspend": False}})
        self.metrics.jobs_resumed.inc()
        name = resumed["metadata"]["name"]
        reason = reason or J.summarize_job(resumed)["reason"]
        fields = event_fields("apply.resumed", job=name, reason=reason)
        log.info("apply resumed: job=%s reason=%r", name, reason, extra=fields)
        return resumed

    def reconcile(self) -> list[dict[str, Any]]:
        """Resume the waiting Job if nothing runs. Returns the apply Jobs as they are afterwards."""
        self.metrics.reconcile_runs.inc()
        try:
            jobs = self._list()
            target = J.plan_reconcile(jobs)
            if target is None:
                return jobs
            try:
                resumed = self._resume(target, None, "")
            except ConflictError:
                # Another replica or request acted first; what it did is in the next list.
                return self._list()
            return [resumed if job["metadata"]["name"] == resumed["metadata"]["name"] else job for job in jobs]
        except HelmApiError:
            self.metrics.reconcile_failures.inc()
            raise

    def apply(
        self,
        *,
        reason: str = "",
        request_id: str | None = None,
        requested_by: str = "",
        origin: J.Origin = "apply",
    ) -> dict[str, Any]:
        """Start helmsman now, or queue it behind the running one, or join the waiting one.

        ``origin`` is apply (POST /apply) or schedule (a slot of the schedule): a Job created for a slot runs
        helmsman with ALWAYS_UPGRADE_FLAG; one joined by a slot stays as it was created.
        """
        self.metrics.applies_requested.inc()
        log.info(
            "apply requested: origin=%s reason=%r request_id=%s by=%s",
            origin,
            reason,
            request_id,
            requested_by,
            extra=event_fields(
                "apply.requested", origin=origin, reason=reason, request_id=request_id, requested_by=requested_by
            ),
        )
        try:
            return self._apply(reason, request_id, requested_by, origin)
        except HelmApiError as e:
            self.metrics.apply_failures.labels(error=type(e).__name__).inc()
            raise

    def _apply(self, reason: str, request_id: str | None, requested_by: str, origin: J.Origin) -> dict[str, Any]:
        cronjob = self.backend.read_cronjob()
        J.check_cronjob(cronjob)
        attempt = coalesce_conflicts = 0
        while attempt < MAX_APPLY_ATTEMPTS and coalesce_conflicts < MAX_COALESCE_CONFLICTS:
            if attempt or coalesce_conflicts:
                # Lost a race: back off a little, with jitter so the losers do not collide again.
                self.sleep(random.uniform(0, 0.01 * min(attempt + coalesce_conflicts, 10)))
            step = J.plan_apply(cronjob, self._list(), request_id)
            if isinstance(step, J.Duplicate):
                self.metrics.applies_duplicate.inc()
                name = step.job["metadata"]["name"]
                log.info(
                    "apply duplicate: job=%s request_id=%s",
                    name,
                    request_id,
                    extra=event_fields("apply.duplicate", job=name, request_id=request_id),
                )
                return self._answer(step.job, duplicate=True)
            if isinstance(step, J.Coalesce):
                try:
                    return self._coalesce(step.job, reason, request_id)
                except ConflictError:
                    coalesce_conflicts += 1
                    continue
            try:
                if isinstance(step, J.Create):
                    return self._create(cronjob, step, reason, request_id, requested_by, origin)
                resumed = self._resume(step.job, request_id, reason)
                return self._coalesced(resumed, reason)
            except (AlreadyExistsError, ConflictError):
                attempt += 1
        raise BusyError("too many concurrent applies; retry shortly", retry_after_seconds=1)

    def _create(
        self,
        cronjob: Mapping[str, Any],
        step: J.Create,
        reason: str,
        request_id: str | None,
        requested_by: str,
        origin: J.Origin,
    ) -> dict[str, Any]:
        annotations = {
            J.SEQUENCE_ANNOTATION: str(step.sequence),
            J.ORIGIN_ANNOTATION: origin,
            J.REQUESTED_AT_ANNOTATION: self.clock(),
        }
        if reason:
            annotations[J.REASON_ANNOTATION] = reason
        if requested_by:
            annotations[J.REQUESTED_BY_ANNOTATION] = requested_by
        if request_id:
            annotations[J.REQUEST_IDS_ANNOTATION] = J.encode_request_ids([request_id])
        body = J.job_from_cronjob(
            cronjob,
            step.name,
            annotations=annotations,
            labels={J.APPLY_LABEL: J.apply_label_value(self.backend.cronjob_name)},
            suspend=step.suspend,
        )
        if origin == "schedule":
            # The one difference from kubectl's Job: scheduled runs upgrade every release, undoing hand edits.
            body = J.with_helmsman_flag(body, J.ALWAYS_UPGRADE_FLAG)
        created = self.backend.create_job(body)
        state = J.job_state(created)
        self.metrics.applies_created.labels(state=state).inc()
        with self._active_lock:
            self._active.add(step.name)
        verb = "recorded (offline, not created)" if self.backend.offline else "created"
        log.info(
            "apply %s: job=%s state=%s origin=%s reason=%r",
            verb,
            step.name,
            state,
            origin,
            reason,
            extra=event_fields(
                "apply.recorded" if self.backend.offline else "apply.created",
                job=step.name,
                state=state,
                origin=origin,
                reason=reason,
                request_id=request_id,
            ),
        )
        return self._answer(created, created=True)

    def _coalesce(self, job: Mapping[str, Any], reason: str, request_id: str | None) -> dict[str, Any]:
        if request_id:
            # Record the id on the waiting Job, only if it is still exactly what we listed (still waiting).
            ids = [*J.job_request_ids(job), request_id]
            job = self.backend.patch_job(
                job["metadata"]["name"],
                {
                    "metadata": {
                        "resourceVersion": job["metadata"]["resourceVersion"],
                        "annotations": {J.REQUEST_IDS_ANNOTATION: J.encode_request_ids(ids)},
                    }
                },
            )
        return self._coalesced(job, reason)

    def _coalesced(self, job: Mapping[str, Any], reason: str) -> dict[str, Any]:
        self.metrics.applies_coalesced.inc()
        name = job["metadata"]["name"]
        state = J.job_state(job)
        log.info(
            "apply coalesced: job=%s state=%s reason=%r",
            name,
            state,
            reason,
            extra=event_fields("apply.coalesced", job=name, state=state, reason=reason),
        )
        return self._answer(job, coalesced=True)
