"""POSTing to a notification URL without ever showing it: the URL is the secret (a Slack webhook's path is its
credential), so logs and errors name the target by its scheme and host only, and every failure is translated into
ReportUnavailable (try again later) or ReportRejected (failed for good).

No retry here: the outbox retries, with its backoff kept in the database (sender.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

import requests

from polling_server.config import NotificationTarget
from polling_server.errors import ReportRejected, ReportUnavailable
from polling_server.git_process import scrub
from polling_server.http import HttpClient, Unreachable, retry_after_seconds, safe_url

USER_AGENT = "helmsman-cd-polling-server"
TIMEOUT_SECONDS = 10.0
_TRANSIENT_4XX = frozenset({408, 425, 429})


def origin(url: str) -> str:
    """`https://hooks.slack.com`: how a notification URL may be shown."""
    p = urlsplit(url)
    host = p.hostname or "?"
    return f"{p.scheme}://{host}" + (f":{p.port}" if p.port else "")


def default_client() -> HttpClient:
    return HttpClient(timeout=TIMEOUT_SECONDS, max_retries=0)


def post(http: HttpClient, target: NotificationTarget, body: bytes, headers: Mapping[str, str]) -> requests.Response:
    """POST `body` to the target's URL; connection errors and timeouts become ReportUnavailable, the URL hidden."""
    url = str(target.url)
    try:
        return http.post(url, data=body, headers={"User-Agent": USER_AGENT, **headers}, retry=False)
    except Unreachable as e:
        path = urlsplit(url).path
        hidden = [url, safe_url(url)] + ([path] if len(path) > 8 else [])
        reason = scrub(str(e).replace(safe_url(url), origin(url)), hidden)
        raise ReportUnavailable(f"notification {target.name}: {reason}") from None


def failure(target: NotificationTarget, resp: requests.Response, detail: str = "") -> Exception:
    """The error for an answer that is not a success: transient (5xx, 408, 425, 429) or for good (other 4xx...)."""
    where = f"notification {target.name} ({origin(str(target.url))})"
    text = f"{where}: answered HTTP {resp.status_code}" + (f" ({detail})" if detail else "")
    if resp.status_code >= 500 or resp.status_code in _TRANSIENT_4XX:
        return ReportUnavailable(text, retry_after_seconds(resp.headers.get("Retry-After")))
    return ReportRejected(text, resp.status_code)
