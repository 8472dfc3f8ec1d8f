"""The one place where HTTP requests are retried: connection errors, timeouts and 5xx, with bounded exponential
backoff that honours Retry-After. Everything else (2xx, 304, 4xx) goes back to the caller to interpret. With
`retry=False` (a caller with a retry of its own, such as the outbox) there is one attempt and every answer, 5xx
included, goes back to the caller, with its body and Retry-After; only no answer at all raises Unreachable.

Each thread gets its own pooled requests.Session. A client built with a `budget` (GitHub's, see
sources/github_budget.py) makes every attempt, retries included, wait for its points and a concurrency slot.
Credentials travel in headers only; error messages carry the
URL without query string or userinfo.
"""

from __future__ import annotations

import email.utils
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from urllib.parse import urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter

RETRY_STATUSES = frozenset({500, 502, 503, 504})


class Unreachable(Exception):
    """The server did not answer usefully (connection error, timeout, 5xx) after every retry."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def safe_url(url: str) -> str:
    """The URL without userinfo, query or fragment: fit for logs and errors."""
    p = urlsplit(url)
    host = p.hostname or ""
    if p.port:
        host = f"{host}:{p.port}"
    return urlunsplit((p.scheme, host, p.path, "", ""))


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Parse a Retry-After header (seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


class HttpClient:
    def __init__(self, *, timeout: float = 10.0, max_retries: int = 3, backoff_seconds: float = 1.0,
                 max_backoff_seconds: float = 60.0, headers: Mapping[str, str] | None = None,
                 auth: tuple[str, str] | None = None, pool_size: int = 32,
                 sleep: Callable[[float], None] = time.sleep, budget=None):
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.headers = dict(headers or {})
        self.auth = auth
        self.pool_size = pool_size
        self._sleep = sleep
        self.budget = budget  # a GitHubBudget: every attempt waits for its points and a slot
        self._local = threading.local()
        self._environment: dict[tuple[str, str], dict] = {}

    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            # Proxy and CA-bundle settings from the environment are resolved once per host (see _settings_for),
            # not by requests on every request: that lookup was a quarter of a poll's CPU.
            s.trust_env = False
            adapter = HTTPAdapter(pool_connections=4, pool_maxsize=self.pool_size, max_retries=0)
            s.mount("http://", adapter)
            s.mount("https://", adapter)
            s.headers.update(self.headers)
            if self.auth:
                s.auth = self.auth
            self._local.session = s
        return s

    def _settings_for(self, url: str) -> dict:
        """requests' environment settings (proxies, NO_PROXY, REQUESTS_CA_BUNDLE...) for this URL's host."""
        p = urlsplit(url)
        key = (p.scheme, p.netloc)
        found = self._environment.get(key)
        if found is None:
            with requests.Session() as probe:
                found = probe.merge_environment_settings(url, {}, None, None, None)
            found = {k: v for k, v in found.items() if v is not None}
            self._environment[key] = found
        return found

    def request(self, method: str, url: str, *, headers: Mapping[str, str] | None = None, retry: bool = True,
                **kwargs) -> requests.Response:
        kwargs = {**self._settings_for(url), **kwargs}
        attempts = 1 + (self.max_retries if retry else 0)
        delay = self.backoff_seconds
        last = ""
        status = None
        for attempt in range(attempts):
            try:
                with self.budget.request(method) if self.budget is not None else nullcontext():
                    resp = self._session().request(method, url, headers=headers, timeout=self.timeout,
                                                   allow_redirects=True, **kwargs)
            except requests.Timeout:
                last, status, wait = f"no answer within {self.timeout:g}s", None, delay
            except requests.ConnectionError as e:
                last, status, wait = f"connection failed ({_root_cause(e)})", None, delay
            except requests.RequestException as e:
                raise Unreachable(f"{method} {safe_url(url)}: {type(e).__name__}") from None
            else:
                if resp.status_code not in RETRY_STATUSES or not retry:
                    return resp
                last, status = f"HTTP {resp.status_code}", resp.status_code
                wait = retry_after_seconds(resp.headers.get("Retry-After")) or delay
            if attempt + 1 < attempts:
                self._sleep(min(wait, self.max_backoff_seconds))
                delay = min(delay * 2, self.max_backoff_seconds)
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        raise Unreachable(f"{method} {safe_url(url)}: {last}{tries}", status)

    def get(self, url: str, **kwargs) -> requests.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs) -> requests.Response:
        return self.request("POST", url, **kwargs)


def server_message(resp: requests.Response, limit: int = 200) -> str:
    """The server's own short error text from a JSON body (`{"error": ...}` or `{"message": ...}`), else "".

    Only the body is read: never the request's headers, so no credential can leak into an error message.
    """
    try:
        data = resp.json()
    except ValueError:
        return ""
    if isinstance(data, dict):
        for key in ("error", "message"):
            if isinstance(data.get(key), str):
                return data[key][:limit]
    return ""


def _root_cause(e: BaseException) -> str:
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__
    text = str(e)
    # urllib3 messages can embed the full URL; keep the reason only.
    return text.rsplit(": ", 1)[-1][:200] if text else type(e).__name__
