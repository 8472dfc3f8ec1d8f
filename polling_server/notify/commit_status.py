"""Commit statuses on GitHub: `POST {api_url}/repos/{owner}/{repo}/statuses/{sha}` with state, description,
context and target_url, through the token's request budget (a POST costs 5 points; see sources/github_budget.py).

201 is sent. The answers that mean "never with this token" are told apart from the ones that mean "later":
- 403/404 (the token may not write statuses, or cannot see the repository): failed for good, and the repository is
  remembered as refused until restart, so its later statuses fail at once without a request. The outbox sender
  logs it once per repository, with the permission needed (this message);
- 401: the token is not valid; 422 (GitHub's validation, e.g. an unknown commit): failed for good with the message;
- a rate limit (403/429 with `retry-after`, `x-ratelimit-remaining: 0` with `x-ratelimit-reset`, or a message
  saying so): sent again after it, and every status waits until then (the limit belongs to the token);
- 5xx, timeouts, connection errors: sent again with the outbox's backoff.
The token travels in the Authorization header only; no message carries it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from urllib.parse import quote

from polling_server.config import GitHubSettings
from polling_server.errors import ReportRejected, ReportUnavailable
from polling_server.http import HttpClient, Unreachable, retry_after_seconds, server_message
from polling_server.sources.github_budget import BACKGROUND, GitHubBudget
from polling_server.state import OutboxRow

PERMISSION_HINT = ("the token needs permission to write commit statuses: classic scope `repo:status` (or `repo`), "
                   "fine-grained \"Commit statuses: Read and write\" on this repository")
SECONDARY_LIMIT_SECONDS = 60.0  # a secondary limit without a hint: GitHub asks for at least a minute


class CommitStatusSender:
    def __init__(self, settings: GitHubSettings, budget: GitHubBudget | None = None, http: HttpClient | None = None,
                 clock: Callable[[], float] = time.time):
        self.api = settings.api_url.rstrip("/")
        self.budget = budget
        self.headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28",
                        "User-Agent": "helmsman-cd-poller"}
        if settings.token:
            self.headers["Authorization"] = f"Bearer {settings.token}"
        # No retry inside the request: the outbox retries, with its backoff in the database.
        self.http = http or HttpClient(timeout=settings.timeout_seconds, max_retries=0, budget=budget)
        if http is not None and budget is not None:
            self.http.budget = budget
        self._clock = clock
        self._lock = threading.Lock()
        self.refused: dict[str, str] = {}  # repository -> why (until restart)
        self._paused_until = 0.0

    def send(self, row: OutboxRow) -> None:
        p = row.payload
        repo, sha = p["repo"], p["sha"]
        with self._lock:
            why = self.refused.get(repo)
            paused = self._paused_until - self._clock()
        if why:
            raise ReportRejected(why, 403)
        if paused > 0:
            raise ReportUnavailable(f"GitHub rate limit: commit statuses wait {paused:.0f}s more", paused, shared=True)
        owner, name = repo.split("/", 1)
        url = f"{self.api}/repos/{quote(owner, safe='')}/{quote(name, safe='')}/statuses/{quote(sha, safe='')}"
        body = {k: p[k] for k in ("state", "description", "context", "target_url") if p.get(k)}
        where = f"GitHub commit status {p.get('context')} on {repo}@{sha[:7]}"
        with self.budget.prioritized(BACKGROUND) if self.budget is not None else nullcontext():
            try:
                resp = self.http.post(url, json=body, headers=self.headers, retry=False)
            except Unreachable as e:
                raise ReportUnavailable(f"{where}: {e}") from None
        status = resp.status_code
        if status == 201:
            return
        message = server_message(resp) or resp.reason or ""
        detail = f"HTTP {status}" + (f" ({message})" if message else "")
        if status in (403, 429):
            self._raise_if_rate_limited(resp, where, detail)
        if status in (403, 404):
            why = f"{where}: {detail}; {PERMISSION_HINT}. No more statuses are sent to {repo} until restart"
            with self._lock:
                self.refused[repo] = why
            raise ReportRejected(why, status)
        if status == 401:
            raise ReportRejected(f"{where}: {detail}; check github.token", status)
        if status >= 500 or status == 408:
            raise ReportUnavailable(f"{where}: {detail}")
        raise ReportRejected(f"{where}: {detail}", status)

    def _raise_if_rate_limited(self, resp, where: str, detail: str) -> None:
        now = self._clock()
        retry_after = retry_after_seconds(resp.headers.get("retry-after"), now)
        remaining, reset = resp.headers.get("x-ratelimit-remaining"), resp.headers.get("x-ratelimit-reset")
        if retry_after is not None:
            wait = retry_after
        elif remaining == "0" and reset and reset.isdigit():
            wait = max(float(reset) - now, 1.0)
        elif resp.status_code == 429 or "rate limit" in detail.lower():
            wait = SECONDARY_LIMIT_SECONDS
        else:
            return
        if self.budget is not None and remaining != "0":
            self.budget.penalize()  # a secondary limit: every GitHub caller slows down for a while
        with self._lock:
            self._paused_until = max(self._paused_until, now + wait)
        raise ReportUnavailable(f"{where}: rate limited ({detail}); again in {wait:.0f}s", wait, shared=True)
