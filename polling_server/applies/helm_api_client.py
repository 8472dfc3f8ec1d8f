"""Asking the Helm API to run helmsman: the HTTP client for `POST /apply` and `GET /apply/<job>` (HelmApiClient) and
the sender of the apply requests queued in the state database (ApplySender).

Delivery is at-least-once with deduplication: an attempt is recorded before the request is sent, and a request is
re-sent with the same `request_id` until the Helm API accepts it; the Helm API answers a request_id it already holds
with that Job (`duplicate: true`) instead of creating another. The durable queue is the one place apply requests
are retried (with backoff kept in the database, so restarts do not reset it); the HTTP layer does not retry them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from polling_server.config import HelmApiSettings, Settings
from polling_server.errors import ApplyRejected, ApplyUnavailable
from polling_server.http import HttpClient, Unreachable, safe_url, server_message
from polling_server.logs import log_event
from polling_server.metrics import Metrics
from polling_server.planning.model import ChartChange
from polling_server.state import ApplyRecord, StateStore

log = logging.getLogger(__name__)

USER_AGENT = "helmsman-cd-polling-server"
MAX_REASON_LENGTH = 1000  # the Helm API refuses a reason longer than 1024 characters with a 400
MAX_CHARTS_IN_BODY = 500  # keeps the body far below the Helm API's 1 MiB limit (the reason counts them all)
_REJECTED = frozenset({400, 401, 403, 404})
_TRANSIENT_4XX = frozenset({408, 409, 425, 429})
JOB_STATES = frozenset({"queued", "running", "succeeded", "failed"})  # what GET /apply/<job> answers


@dataclass(frozen=True)
class ApplyResult:
    """The Helm API's answer: the Job that will run (or runs, or ran) helmsman for this request."""

    job: str | None
    namespace: str | None
    state: str | None  # running | queued (| succeeded | failed for a duplicate of an old request)
    coalesced: bool = False
    duplicate: bool = False


class HelmApiClient:
    """`POST <helm_api.url>/apply` with the bearer token; errors translated to ApplyUnavailable / ApplyRejected."""

    def __init__(self, settings: HelmApiSettings, http: HttpClient | None = None):
        self.settings = settings
        self.url = f"{settings.url}/apply"
        self.http = http or HttpClient(timeout=settings.timeout_seconds, max_retries=0)

    def request_apply(self, request_id: str, reason: str, charts: list[dict]) -> ApplyResult:
        where = f"POST {safe_url(self.url)}"
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if self.settings.token:
            headers["Authorization"] = f"Bearer {self.settings.token}"
        body = {"reason": reason, "request_id": request_id, "charts": charts}
        try:
            resp = self.http.post(self.url, json=body, headers=headers, retry=False)
        except Unreachable as e:
            raise ApplyUnavailable(f"Helm API {e}") from None

        status = resp.status_code
        if status in (200, 201, 202):
            return _parse_answer(resp, where)
        detail = f": {m}" if (m := server_message(resp)) else ""
        if status in _REJECTED:
            hint = {401: " (check helm_api.token)", 403: " (check helm_api.token)",
                    404: " (check helm_api.url)"}.get(status, "")
            raise ApplyRejected(f"{where}: answered HTTP {status}{detail}{hint}", status)
        if status >= 500 or status in _TRANSIENT_4XX:
            raise ApplyUnavailable(f"{where}: answered HTTP {status}{detail}")
        if 400 <= status < 500:
            raise ApplyRejected(f"{where}: answered HTTP {status}{detail}", status)
        # 1xx/3xx/other 2xx: not what a Helm API answers; whether it took the request is unknown, so retry later.
        raise ApplyUnavailable(f"{where}: answered HTTP {status}, which is not a Helm API answer")

    def job_state(self, job: str) -> str:
        """`GET <helm_api.url>/apply/<job>`: the Job's state (queued, running, succeeded or failed), or `unknown`
        when helm-api answers 404 naming that Job (it is gone: deleted, or removed by its TTL). Any other 404 (the
        CronJob is missing, a wrong URL) is ApplyRejected: a configuration problem says nothing of the Job."""
        url = f"{self.url}/{quote(job, safe='')}"
        where = f"GET {safe_url(url)}"
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if self.settings.token:
            headers["Authorization"] = f"Bearer {self.settings.token}"
        try:
            resp = self.http.get(url, headers=headers, retry=False)
        except Unreachable as e:
            raise ApplyUnavailable(f"Helm API {e}") from None
        status = resp.status_code
        detail = f": {m}" if (m := server_message(resp)) else ""
        if status == 200:
            state = _json_field(resp, "state")
            if not isinstance(state, str) or state not in JOB_STATES:
                raise ApplyUnavailable(f"{where}: answered HTTP 200 without a Job state in a JSON body")
            return state
        if status == 404 and _json_field(resp, "job") == job:
            return "unknown"
        if status in _REJECTED:
            raise ApplyRejected(f"{where}: answered HTTP {status}{detail}", status)
        raise ApplyUnavailable(f"{where}: answered HTTP {status}{detail}")


def _json_field(resp, key: str):
    try:
        data = resp.json()
    except ValueError:
        return None
    return data.get(key) if isinstance(data, dict) else None


def _parse_answer(resp, where: str) -> ApplyResult:
    try:
        data = resp.json()
    except ValueError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("job"), str):
        # Maybe a proxy or a wrong URL answered; the request id makes a later re-send safe.
        raise ApplyUnavailable(f"{where}: answered HTTP {resp.status_code} without a Job in a JSON body")
    return ApplyResult(
        job=data["job"],
        namespace=data.get("namespace") if isinstance(data.get("namespace"), str) else None,
        state=data.get("state") if isinstance(data.get("state"), str) else None,
        coalesced=data.get("coalesced") is True,
        duplicate=data.get("duplicate") is True,
    )


def apply_reason(changes: tuple[ChartChange, ...], limit: int = MAX_REASON_LENGTH) -> str:
    """`chart change: a-1.2.3 (added), b-0.1.0 (repushed)`, shortened to `limit` with `and N more`."""
    head = "chart change: "
    parts = [c.describe() for c in changes]
    text = head + ", ".join(parts)
    if len(text) <= limit:
        return text
    for keep in range(len(parts) - 1, -1, -1):
        text = head + ", ".join(parts[:keep]) + f"{', ' if keep else ''}and {len(parts) - keep} more"
        if len(text) <= limit:
            return text
    return text[:limit]


def apply_charts(changes: tuple[ChartChange, ...]) -> list[dict]:
    """The `charts` list of the request body: the changes in full, at most MAX_CHARTS_IN_BODY of them."""
    return [{"name": c.name, "version": c.version, "digest": c.digest, "change": c.change}
            for c in changes[:MAX_CHARTS_IN_BODY]]


class ApplySender:
    """Sends the apply requests that are due, one at a time, and records each outcome in the state database."""

    def __init__(self, settings: Settings, store: StateStore, metrics: Metrics, client: HelmApiClient | None = None):
        if settings.helm_api is None:
            raise ValueError("ApplySender needs settings.helm_api")
        self.settings = settings
        self.helm_api = settings.helm_api
        self.store = store
        self.metrics = metrics
        self.client = client or HelmApiClient(self.helm_api)

    def backoff(self, failed_attempts: int) -> float:
        """Seconds to wait after attempt number `failed_attempts` (1, 2, ...) failed: base, 2*base, ... capped."""
        base, cap = self.helm_api.retry_backoff_seconds, self.helm_api.max_backoff_seconds
        return min(cap, base * 2 ** min(max(failed_attempts - 1, 0), 32))

    def send_due(self) -> list[ApplyRecord]:
        """Send every due request until one fails (the Helm API is down or refuses us: the rest wait too).
        Returns the records as they are after this call."""
        fingerprint = self.helm_api.fingerprint()
        done: list[ApplyRecord] = []
        seen: set[int] = set()
        while (record := self.store.due_apply(fingerprint)) is not None and record.id not in seen:
            seen.add(record.id)
            ok = self._send(record, fingerprint)
            done.append(self.store.apply(record.id))
            if not ok:
                break
        return done

    def _send(self, record: ApplyRecord, fingerprint: str) -> bool:
        reason = apply_reason(record.changes)
        fields: dict[str, Any] = {"request_id": record.request_id, "changes": len(record.changes)}
        # Recorded before sending: after a crash the same request_id is sent again, and the Helm API deduplicates.
        self.store.apply_attempted(record.id)
        attempt = record.attempts + 1
        try:
            result = self.client.request_apply(record.request_id, reason, apply_charts(record.changes))
        except ApplyUnavailable as e:
            retry_in = self.backoff(attempt)
            self.store.apply_retry(record.id, str(e), retry_in)
            self.metrics.applies.labels("unavailable").inc()
            log_event(log, "apply.failed", "warning", f"{e}; retrying in {retry_in:g}s", **fields,
                      attempt=attempt, retry_in=retry_in, reason=str(e))
            return False
        except ApplyRejected as e:
            self.store.apply_rejected(record.id, str(e), fingerprint)
            self.metrics.applies.labels("rejected").inc()
            log_event(log, "apply.failed", "error",
                      f"the Helm API refused the apply request: {e}. Fix helm_api.url/helm_api.token in the "
                      f"configuration; the request is kept and sent again once the configuration changes",
                      **fields, status=e.status, reason=str(e))
            return False
        self.store.apply_accepted(record.id, result.job, result.state)
        self.metrics.applies.labels("accepted").inc()
        log_event(log, "apply.requested", **fields, job=result.job, namespace=result.namespace, state=result.state,
                  coalesced=result.coalesced or None, duplicate=result.duplicate or None, attempt=attempt,
                  reason=reason)
        return True
