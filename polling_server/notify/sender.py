"""The outbox sender: sends the due outbox rows, each channel through its own sender, and records every outcome.

Delivery is at least once: an attempt is counted before the request (`outbox_attempted`), and a row is marked sent
after the receiver confirmed it, so a crash between the two sends that row once more at the next start, and no
more. Failures are kept in the database: a row that may succeed later is due again after an exponential backoff
(BASE_BACKOFF_SECONDS doubling, capped at MAX_BACKOFF_SECONDS, or the server's Retry-After), one refused for good
fails at once, and one still failing GIVE_UP_AFTER_SECONDS after it was queued is given up. A target that keeps
failing is logged once per episode (`report.failing`, then `report.recovered`), not once per attempt; its other
rows wait for the next step rather than each waiting for a timeout. A failure shared by the whole channel (GitHub's
rate limit, which belongs to the token) is one episode for the channel, and ends the channel's step.

Commit statuses are "latest wins" per build: a row with a newer status of the same build queued after it is moot
and is not sent (so a late retry can never put `pending` back over `success`).

This runs as its own scheduler job, never on a build or poll thread, so a slow receiver delays only reports.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from polling_server.config import Settings
from polling_server.errors import ReportError, ReportRejected, ReportUnavailable, StateError
from polling_server.logs import log_event
from polling_server.notify import messages
from polling_server.notify.commit_status import CommitStatusSender
from polling_server.notify.json_webhook import JsonWebhookSender
from polling_server.notify.slack import SlackSender
from polling_server.state import OutboxRow, StateStore

log = logging.getLogger(__name__)

BASE_BACKOFF_SECONDS = 5.0
MAX_BACKOFF_SECONDS = 900.0
GIVE_UP_AFTER_SECONDS = 86400.0
OUTBOX_KEEP_SECONDS = 7 * 86400.0  # sent and failed rows are kept this long (then pruned)
BATCH = 50
EVERY_TARGET = "*"  # the episode key of a failure shared by every target of a channel


class ChannelSender(Protocol):
    def send(self, row: OutboxRow) -> None:
        """Deliver one row; ReportUnavailable (later) or ReportRejected (for good) when it was not delivered."""


def backoff(failed_attempts: int) -> float:
    """Seconds before the next try after `failed_attempts` (1, 2, ...) failed: 5, 10, 20... capped at 15 min."""
    return min(MAX_BACKOFF_SECONDS, BASE_BACKOFF_SECONDS * 2 ** min(max(failed_attempts - 1, 0), 20))


class NotificationChannel:
    """The `notification` channel: each row goes to its target by the target's format (slack or json)."""

    def __init__(self, settings: Settings, slack: SlackSender | None = None, json: JsonWebhookSender | None = None):
        self.targets = {t.name: t for t in settings.notifications}
        self.slack = slack or SlackSender()
        self.json = json or JsonWebhookSender()

    def send(self, row: OutboxRow) -> None:
        target = self.targets.get(row.target)
        if target is None:
            raise ReportRejected(f"notification target {row.target!r} is no longer configured")
        (self.slack if target.format == "slack" else self.json).send(target, row.payload)


class OutboxSender:
    def __init__(self, store: StateStore, channels: Mapping[str, ChannelSender],
                 clock: Callable[[], float] = time.time):
        self.store = store
        self.channels = dict(channels)
        self._clock = clock
        self._failing: dict[tuple[str, str], int] = {}  # (channel, target) -> failures in this episode

    @classmethod
    def for_settings(cls, settings: Settings, store: StateStore, budget=None,
                     clock: Callable[[], float] = time.time) -> OutboxSender:
        channels: dict[str, ChannelSender] = {
            messages.COMMIT_STATUS: CommitStatusSender(settings.github, budget=budget, clock=clock),
            messages.NOTIFICATION: NotificationChannel(settings),
        }
        return cls(store, channels, clock)

    def send_due(self) -> list[OutboxRow]:
        """Send every due row (a batch per channel); returns the rows tried, as they were before the try."""
        tried: list[OutboxRow] = []
        for channel, sender in self.channels.items():
            try:
                rows = self.store.due_outbox(channel, limit=BATCH)
            except StateError as e:
                log_event(log, "state.write_failed", "warning", f"cannot read the outbox: {e}", reason=str(e))
                return tried
            waiting: set[str] = set()  # targets that failed in this step: their other rows wait for the next
            for row in rows:
                if row.target in waiting:
                    continue
                if EVERY_TARGET in waiting:
                    break
                tried.append(row)
                try:
                    if not (outcome := self._send(channel, sender, row)):
                        waiting.add(EVERY_TARGET if outcome is None else row.target)
                except StateError as e:
                    log_event(log, "state.write_failed", "warning", f"cannot record a report: {e}", reason=str(e))
                    return tried
        return tried

    def prune(self) -> int:
        return self.store.prune_outbox(self._clock() - OUTBOX_KEEP_SECONDS)

    def _send(self, channel: str, sender: ChannelSender, row: OutboxRow) -> bool | None:
        """One row: True when delivered (or moot), False when it failed, None when the whole channel must wait."""
        if channel == messages.COMMIT_STATUS:
            prefix = row.dedupe_key.rsplit(":", 1)[0] + ":"
            if self.store.outbox_newer(row.id, prefix):
                self.store.outbox_retry(row.id, "not sent: a newer status of the same build was queued", None)
                return True
        # Counted before sending: after a crash mid-send this row is sent once more, and no more.
        self.store.outbox_attempted(row.id)
        attempt = row.attempts + 1
        try:
            sender.send(row)
        except ReportUnavailable as e:
            if self._clock() - row.created_at > GIVE_UP_AFTER_SECONDS:
                self.store.outbox_retry(row.id, f"{e}; given up {GIVE_UP_AFTER_SECONDS / 3600:g}h after it was "
                                        "queued", None)
                self._failed(channel, row.target, row, e, "given up")
                return False
            retry_in = e.retry_after if e.retry_after is not None else backoff(attempt)
            self.store.outbox_retry(row.id, str(e), retry_in)
            self._failed(channel, EVERY_TARGET if e.shared else row.target, row, e, f"again in {retry_in:g}s")
            return None if e.shared else False
        except ReportRejected as e:
            self.store.outbox_retry(row.id, str(e), None)
            self._failed(channel, row.target, row, e, "failed for good")
            return False
        except Exception as e:  # noqa: BLE001 - a bug must not leave a row due forever, in front of the others
            log.error("sending outbox row %s (%s) raised an unexpected error", row.id, channel, exc_info=e)
            error = ReportRejected(f"internal error: {type(e).__name__}")
            self.store.outbox_retry(row.id, str(error), None)
            self._failed(channel, row.target, row, error, "failed for good")
            return False
        self.store.outbox_sent(row.id)
        for target in (row.target, EVERY_TARGET):
            failures = self._failing.pop((channel, target), None)
            if failures:
                log_event(log, "report.recovered", "info", f"{channel} to {target} delivered again after "
                          f"{failures} failures", channel=channel, target=target, failures=failures)
        return True

    def _failed(self, channel: str, target: str, row: OutboxRow, error: ReportError, outcome: str) -> None:
        key = (channel, target)
        first = key not in self._failing
        self._failing[key] = self._failing.get(key, 0) + 1
        level = "error" if isinstance(error, ReportRejected) else "warning"
        if first:
            log_event(log, "report.failing", level, f"{error} ({outcome}; logged once until it succeeds again)",
                      channel=channel, target=target, key=row.dedupe_key, reason=str(error),
                      status=getattr(error, "status", None))
        else:
            log.debug("%s to %s failed again (%s): %s", channel, target, outcome, error)
