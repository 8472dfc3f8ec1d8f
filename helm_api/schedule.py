"""The re-apply schedule: at each slot of HELM_API_SCHEDULE, enqueue an apply with origin ``schedule``.

A slot goes through the same queue as ``POST /apply`` (ApplyService.apply), so it never starts beside a running
helmsman and joins the Job already waiting. Every replica (and every worker process) runs its own schedule; they
do not talk to each other. They agree through the slot's request id, ``schedule/<slot time, RFC 3339 UTC>``: the
first to act creates (or joins) a Job recording that id, the others find it there (a duplicate), and the API
server's 409s settle the ones that act at the same moment.

A slot missed while helm-api was down is not run late: the schedule starts from the next slot, and a run the
scheduler could not start within MISFIRE_GRACE_SECONDS of its slot is skipped (APScheduler's misfire).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from helm_api import jobs as J
from helm_api.errors import ConfigError, HelmApiError
from helm_api.logs import event_fields

if TYPE_CHECKING:
    from helm_api.service import ApplyService

log = logging.getLogger(__name__)

JOB_ID = "helm-api-schedule"
# Under a minute, the smallest gap between two cron slots: a run started this late still names its slot
# unambiguously (see slot_at). Later than that, the slot is skipped and the next one does the work.
MISFIRE_GRACE_SECONDS = 30
REQUESTED_BY = "helm-api schedule"


def parse_timezone(name: str) -> tzinfo:
    """An IANA time zone; UTC needs no time zone database."""
    if name.upper() in ("UTC", "Z", "ETC/UTC"):
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as e:
        # ValueError: not a key of the database at all (e.g. a path); OSError: a directory of it ("Europe").
        raise ConfigError(
            f"HELM_API_SCHEDULE_TZ: {name!r} is not a known time zone (an IANA name like Europe/Berlin)"
        ) from e


def parse_schedule(expression: str, timezone: str = "UTC") -> CronTrigger:
    """The cron trigger of a five-field crontab expression (``0 * * * *``) in ``timezone``."""
    zone = parse_timezone(timezone)
    try:
        return CronTrigger.from_crontab(expression, timezone=zone)
    except ValueError as e:
        raise ConfigError(
            f"HELM_API_SCHEDULE: {expression!r} is not a cron expression (minute hour day month weekday): {e}"
        ) from e


def slot_request_id(slot: datetime) -> str:
    """The request id of a slot, the same in every replica: ``schedule/2025-01-01T03:00:00Z``."""
    return f"{J.SCHEDULE_REQUEST_PREFIX}{slot.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"


class ApplySchedule:
    """Runs ``service.apply(origin="schedule")`` at each slot of a cron expression."""

    def __init__(
        self,
        service: ApplyService,
        expression: str,
        timezone: str = "UTC",
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.service = service
        self.expression = expression
        self.timezone = timezone
        self.trigger = parse_schedule(expression, timezone)
        self.clock = clock
        self.scheduler: BackgroundScheduler | None = None

    def slot_at(self, now: datetime) -> datetime | None:
        """The slot a run started at ``now`` belongs to: the one at most MISFIRE_GRACE_SECONDS before it."""
        earliest = now - timedelta(seconds=MISFIRE_GRACE_SECONDS)
        slot = self.trigger.get_next_fire_time(None, earliest)
        if slot is None or slot > now:
            return None
        return slot

    def run_slot(self, slot: datetime) -> dict[str, Any] | None:
        """Enqueue the apply of one slot, exactly as POST /apply would; a failure is logged, never raised
        (the next slot tries again). Returns the answer about the Job that holds the slot."""
        request_id = slot_request_id(slot)
        slot_time = request_id.removeprefix(J.SCHEDULE_REQUEST_PREFIX)
        reason = f"schedule {self.expression} ({self.timezone}): slot {slot_time}"
        try:
            answer = self.service.apply(
                reason=reason, request_id=request_id, requested_by=REQUESTED_BY, origin="schedule"
            )
        except HelmApiError as e:
            self.service.metrics.schedule_slots.labels(outcome="failed").inc()
            log.warning(
                "schedule slot failed: slot=%s: %s",
                request_id,
                e.message,
                extra=event_fields("schedule.failed", request_id=request_id, error=type(e).__name__),
            )
            return None
        outcome = "duplicate" if answer["duplicate"] else "coalesced" if answer["coalesced"] else "created"
        self.service.metrics.schedule_slots.labels(outcome=outcome).inc()
        log.info(
            "schedule slot %s: slot=%s job=%s state=%s origin=%s",
            outcome,
            request_id,
            answer["job"],
            answer["state"],
            answer["origin"],
            extra=event_fields(
                "schedule.slot",
                outcome=outcome,
                request_id=request_id,
                job=answer["job"],
                state=answer["state"],
                origin=answer["origin"],
            ),
        )
        if outcome == "coalesced" and answer["origin"] != "schedule":
            # The waiting Job was queued by /apply without the flag, and a created Job cannot be changed:
            # it applies the desired state, and the next slot corrects hand edits.
            log.info(
                "schedule slot joined a waiting Job without %s: slot=%s job=%s",
                J.ALWAYS_UPGRADE_FLAG,
                request_id,
                answer["job"],
                extra=event_fields("schedule.joined_plain", request_id=request_id, job=answer["job"]),
            )
        return answer

    def fire(self) -> None:
        """The scheduler's job: run the slot that is due now."""
        now = self.clock()
        slot = self.slot_at(now)
        if slot is None:
            self.service.metrics.schedule_slots.labels(outcome="skipped").inc()
            log.warning(
                "schedule fired with no slot due: now=%s",
                now.isoformat(),
                extra=event_fields("schedule.skipped", now=now.isoformat()),
            )
            return
        self.run_slot(slot)

    def build_scheduler(self) -> BackgroundScheduler:
        """A BackgroundScheduler (not started) holding the one job of this schedule."""
        scheduler = BackgroundScheduler(timezone=UTC, executors={"default": ThreadPoolExecutor(1)})
        scheduler.add_job(
            self.fire,
            trigger=self.trigger,
            id=JOB_ID,
            name=f"re-apply on {self.expression} ({self.timezone})",
            # One slot at a time; slots that piled up become one; one run too late for its slot is skipped.
            max_instances=1,
            coalesce=True,
            misfire_grace_time=MISFIRE_GRACE_SECONDS,
            replace_existing=True,
        )
        return scheduler

    def start(self) -> None:
        if self.scheduler is not None:
            return
        self.scheduler = self.build_scheduler()
        self.scheduler.start()
        job = self.scheduler.get_job(JOB_ID)
        next_slot = job.next_run_time.astimezone(UTC).isoformat() if job and job.next_run_time else None
        log.info(
            "schedule started: %s (%s), next slot %s",
            self.expression,
            self.timezone,
            next_slot,
            extra=event_fields(
                "schedule.started", expression=self.expression, timezone=self.timezone, next_slot=next_slot
            ),
        )

    def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
            self.scheduler = None
