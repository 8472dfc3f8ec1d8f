"""Repository source for GitHub (and GitHub Enterprise): the Events API as a cheap change detector, the git refs
API as the truth.

Why both: the events feed is built for conditional polling (a 304 costs nothing against the rate limit) but lags
30 s to 6 h and sometimes loses events, and post-2025 payloads no longer carry a tag's commit. So an event only
says *which* refs to look at; the branch head and the tags are then read from `git/ref/heads/<branch>` and
`git/matching-refs/tags` (conditional too), and annotated tags are peeled through `git/tags/<sha>` (cached: tag
objects never change). A reconcile poll reads the refs whatever the feed says, catching lost or late events.
Pagination of the feed stops at the newest event seen last time. Rate limits raise `RateLimited` with the time
to resume; the token travels in the Authorization header only.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from urllib.parse import quote

import requests

from polling_server.config import GitHubSettings, RepositorySettings
from polling_server.errors import MalformedResponse, RateLimited, SourceRejected, SourceUnavailable
from polling_server.http import HttpClient, Unreachable, retry_after_seconds, server_message
from polling_server.logs import log_event
from polling_server.planning.model import Observation, RepoState
from polling_server.sources.base import CursorReader, SourcePoll
from polling_server.sources.github_budget import BACKGROUND, NORMAL, GitHubBudget
from polling_server.state import Cursor

log = logging.getLogger(__name__)

MAX_EVENT_PAGES = 3  # GitHub serves at most 300 events: 3 pages of 100
_NEXT = re.compile(r'<([^>]+)>;\s*rel="next"')
_SHA = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")


def _next_link(resp: requests.Response) -> str | None:
    m = _NEXT.search(resp.headers.get("Link", ""))
    return m.group(1) if m else None


class RequestCounter:
    def __init__(self) -> None:
        self.counted = 0
        self.not_modified = 0


@dataclass
class FeedPage:
    """What one read of an events feed found: the fresh events (newest first) and the cursor to save."""

    events: list = field(default_factory=list)
    cursor: Cursor | None = None
    not_modified: bool = False
    unreadable: bool = False
    overflow: bool = False  # the newest event seen last time is no longer in the window
    poll_interval: float | None = None
    skipped: list = field(default_factory=list)


def relevant_refs(events: list, branch: str) -> tuple[bool, bool, list[str]]:
    """Which refs an events page says changed: (branch?, tags?, skipped malformed events).

    A merge shows up as a PushEvent on the branch; a PullRequestEvent (closed+merged or "merged") is deliberately
    not a signal of its own, so one merge is one build.
    """
    branch_ref = f"refs/heads/{branch}"
    need_branch = need_tags = False
    skipped = []
    for ev in events:
        if not isinstance(ev, dict) or not isinstance(ev.get("payload"), dict) or not isinstance(ev.get("type"), str):
            skipped.append(f"event {ev.get('id') if isinstance(ev, dict) else '?'}: no type or payload")
            continue
        kind, payload = ev["type"], ev["payload"]
        if kind == "PushEvent":
            ref = payload.get("ref")
            if not isinstance(ref, str):
                skipped.append(f"event {ev.get('id')}: PushEvent without ref")
                continue
            need_branch |= ref == branch_ref
            need_tags |= ref.startswith("refs/tags/")
        elif kind in ("CreateEvent", "DeleteEvent"):
            ref_type, ref = payload.get("ref_type"), payload.get("ref")
            if ref_type == "tag":
                need_tags = True
            elif ref_type == "branch" and ref == branch:
                need_branch = True
    return need_branch, need_tags, skipped


class GitHubSource:
    kind = "github"

    def __init__(self, settings: GitHubSettings, http: HttpClient | None = None,
                 clock: Callable[[], float] = time.time, budget: GitHubBudget | None = None):
        self.settings = settings
        self.api = settings.api_url.rstrip("/")
        headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28",
                   "User-Agent": "helmsman-cd-poller"}
        if settings.token:
            headers["Authorization"] = f"Bearer {settings.token}"
        self.budget = budget
        self.http = http or HttpClient(timeout=settings.timeout_seconds, max_retries=settings.max_retries,
                                       backoff_seconds=settings.backoff_seconds, headers=headers, budget=budget)
        if http is not None:
            self.http.headers.update(headers)
            if budget is not None:
                self.http.budget = budget
        self._clock = clock
        self._rate_limit_episodes = 0
        self.org_fed: set[str] = set()  # repositories whose changes an organization feed reports (org_feed.py)

    # --- HTTP with GitHub's rules --------------------------------------------------------------------------
    def get(self, url: str, counter: RequestCounter, cursor: Cursor | None = None, what: str = "") -> requests.Response:
        headers = {}
        if cursor is not None and cursor.etag:
            headers["If-None-Match"] = cursor.etag
        try:
            resp = self.http.get(url, headers=headers)
        except Unreachable as e:
            raise SourceUnavailable(f"GitHub {what}: {e}") from e
        if resp.status_code == 304:
            counter.not_modified += 1
        else:
            counter.counted += 1
        if resp.status_code in (403, 429):
            self._raise_rate_limit_or_rejection(resp, what)
        self._rate_limit_episodes = 0 if resp.ok else self._rate_limit_episodes
        if resp.status_code in (401, 403):
            raise SourceRejected(f"GitHub {what}: HTTP {resp.status_code} ({_message_of(resp)}); check github.token",
                                 resp.status_code)
        return resp

    def _raise_rate_limit_or_rejection(self, resp: requests.Response, what: str) -> None:
        now = self._clock()
        retry_after = retry_after_seconds(resp.headers.get("retry-after"), now)
        remaining = resp.headers.get("x-ratelimit-remaining")
        reset = resp.headers.get("x-ratelimit-reset")
        message = _message_of(resp)
        if retry_after is not None:
            resume = now + retry_after
        elif remaining == "0" and reset and reset.isdigit():
            resume = max(float(reset), now + 1)
        elif resp.status_code == 429 or "rate limit" in message.lower():
            # Secondary limit without a hint: at least a minute, doubling per consecutive episode.
            self._rate_limit_episodes += 1
            resume = now + self.settings.rate_limit_backoff_seconds * 2 ** min(self._rate_limit_episodes - 1, 6)
        else:
            return
        if self.budget is not None and remaining != "0":
            self.budget.penalize()  # a secondary limit: slow down for a while after the pause
        raise RateLimited(f"GitHub {what}: rate limited (HTTP {resp.status_code}: {message})", resume)

    def json_of(self, resp: requests.Response, what: str):
        try:
            return resp.json()
        except ValueError as e:
            raise MalformedResponse(f"GitHub {what}: the answer is not JSON") from e

    def check(self, resp: requests.Response, what: str) -> None:
        if resp.status_code >= 400:
            raise SourceRejected(f"GitHub {what}: HTTP {resp.status_code} ({_message_of(resp)})", resp.status_code)

    # --- the poll ---------------------------------------------------------------------------------------------
    def poll(self, repo: RepositorySettings, cursors: CursorReader, state: RepoState, reconcile: bool) -> SourcePoll:
        counter = RequestCounter()
        base = f"{self.api}/repos/{repo.repo}"
        new_cursors: dict[str, Cursor] = {}
        events_key = f"events:{repo.name}"
        if repo.name in self.org_fed:
            # Its organization's feed is the change detector: a poll of it is a trigger or a reconcile.
            need_branch = need_tags = True
            skipped, poll_interval = [], None
        else:
            need_branch, need_tags, skipped, poll_interval, events_cursor = self._read_events(
                base, repo.branch, cursors.cursor(events_key), counter, first=not state.baseline)
            if events_cursor is not None:
                new_cursors[events_key] = events_cursor
        # Reads the feed asked for go first; a reconcile's own reads take what the budget leaves.
        led = need_branch or need_tags or not state.baseline
        if reconcile or not state.baseline:
            need_branch = need_tags = True
        with self.budget.prioritized(NORMAL if led else BACKGROUND) if self.budget else nullcontext():
            return self._read_refs(repo, base, cursors, new_cursors, counter, need_branch, need_tags, skipped,
                                   poll_interval)

    def _read_refs(self, repo: RepositorySettings, base: str, cursors: CursorReader, new_cursors: dict,
                   counter: RequestCounter, need_branch: bool, need_tags: bool, skipped: list, poll_interval):
        """The truth: the branch head and the tags (peeled), as far as the feed or a reconcile asks for them."""
        branch_checked, head = False, None
        if need_branch:
            head, cur = self._read_branch(base, repo.branch, cursors.cursor(f"branch:{repo.name}"), counter)
            branch_checked = True
            new_cursors[f"branch:{repo.name}"] = cur
        tags = None
        tag_objects: dict[str, str] = {}
        if need_tags:
            tags, cur, tag_objects = self._read_tags(base, cursors, f"tags:{repo.name}", counter)
            new_cursors[f"tags:{repo.name}"] = cur
        return SourcePoll(
            observation=Observation(branch_checked, head, tags),
            cursors=new_cursors,
            tag_objects=tag_objects,
            poll_interval=poll_interval,
            counted_requests=counter.counted,
            not_modified=counter.not_modified,
            skipped=tuple(skipped),
        )

    def _read_events(self, base: str, branch: str, cursor: Cursor, counter: RequestCounter, first: bool):
        """-> (branch changed?, tags changed?, skipped, X-Poll-Interval, new cursor or None)."""
        feed = self.read_feed(f"{base}/events?per_page=100", cursor, counter, first, "events")
        if feed.not_modified:
            return False, False, [], feed.poll_interval, None
        need_branch, need_tags, skipped = relevant_refs(feed.events, branch)
        if feed.unreadable or feed.overflow:
            # An unreadable page, or the last event seen is out of the window: events may have been missed, so
            # look at the refs themselves (an unreadable page keeps the old cursor: nothing is lost).
            need_branch = need_tags = True
        return need_branch, need_tags, skipped + feed.skipped, feed.poll_interval, feed.cursor

    def read_feed(self, url: str, cursor: Cursor, counter: RequestCounter, first: bool, what: str) -> FeedPage:
        """The events of a feed (a repository's, an organization's) newer than the last one seen, newest first.

        Pagination stops at the newest event seen last time (at most 3 pages: GitHub's window of 300 events).
        """
        resp = self.get(url, counter, cursor, what)
        interval = _float(resp.headers.get("X-Poll-Interval"))
        if resp.status_code == 304:
            return FeedPage(not_modified=True, poll_interval=interval)
        self.check(resp, what)
        etag = resp.headers.get("ETag")
        last_seen = cursor.value
        newest_id = None
        fresh: list = []
        found_last = False
        for page in range(MAX_EVENT_PAGES):
            try:
                events = self.json_of(resp, what)
                if not isinstance(events, list):
                    raise MalformedResponse(f"GitHub {what}: the page is not a list")
            except MalformedResponse as e:
                return FeedPage(events=fresh, unreadable=True, skipped=[str(e)], poll_interval=interval)
            if page == 0 and events and isinstance(events[0], dict):
                newest_id = str(events[0].get("id")) if events[0].get("id") is not None else None
            for ev in events:
                if last_seen is not None and isinstance(ev, dict) and str(ev.get("id")) == last_seen:
                    found_last = True
                    break
                fresh.append(ev)
            next_url = _next_link(resp)
            if found_last or first or last_seen is None or not next_url:
                break
            resp = self.get(next_url, counter, None, what)
            self.check(resp, what)
        overflow = last_seen is not None and not found_last and not first
        return FeedPage(events=fresh, cursor=Cursor(etag=etag, value=newest_id or last_seen), overflow=overflow,
                        poll_interval=interval)

    def _read_branch(self, base: str, branch: str, cursor: Cursor,
                     counter: RequestCounter) -> tuple[str | None, Cursor]:
        what = f"branch {branch}"
        resp = self.get(f"{base}/git/ref/heads/{quote(branch, safe='/')}", counter, cursor, what)
        if resp.status_code == 304:
            return cursor.value, cursor
        if resp.status_code == 404:
            return None, Cursor()
        self.check(resp, what)
        data = self.json_of(resp, what)
        sha = (data.get("object") or {}).get("sha") if isinstance(data, dict) else None
        if isinstance(data, list) or not isinstance(sha, str) or not _SHA.match(sha):
            # git/ref/ answers a list when the name is only a prefix of real branches: the branch itself is absent.
            if isinstance(data, list):
                return None, Cursor()
            raise MalformedResponse(f"GitHub {what}: no commit sha in the answer")
        return sha, Cursor(etag=resp.headers.get("ETag"), value=sha)

    def _read_tags(self, base: str, cursors: CursorReader, key: str, counter: RequestCounter):
        what = "tags"
        cursor = cursors.cursor(key)
        cached = json.loads(cursor.value) if cursor.value else None
        # The ETag covers only the first page: trust a 304 only when everything fit on it.
        use_etag = cached is not None and len(cached) < 100
        resp = self.get(f"{base}/git/matching-refs/tags?per_page=100", counter, cursor if use_etag else None, what)
        if resp.status_code == 304:
            return cached, cursor, {}
        self.check(resp, what)
        etag = resp.headers.get("ETag")
        refs: list = []
        while True:
            page = self.json_of(resp, what)
            if not isinstance(page, list):
                raise MalformedResponse("GitHub tags: the answer is not a list of refs")
            refs.extend(page)
            next_url = _next_link(resp)
            if not next_url:
                break
            resp = self.get(next_url, counter, None, what)
            self.check(resp, what)
        tags: dict[str, str] = {}
        resolved: dict[str, str] = {}
        for ref in refs:
            try:
                name = ref["ref"].removeprefix("refs/tags/")
                obj_type, sha = ref["object"]["type"], ref["object"]["sha"]
            except (KeyError, TypeError, AttributeError):
                log_event(log, "poll.skipped", "warning", "tag ref without ref/object skipped", ref=str(ref)[:100])
                continue
            if obj_type == "commit":
                tags[name] = sha
            elif obj_type == "tag":
                commit = cursors.tag_commit(sha) or resolved.get(sha) or self._peel(base, sha, counter)
                if commit:
                    resolved[sha] = commit
                    tags[name] = commit
        return tags, Cursor(etag=etag, value=json.dumps(tags, sort_keys=True)), resolved

    def _peel(self, base: str, tag_sha: str, counter: RequestCounter) -> str | None:
        """Follow an annotated tag object (possibly a tag of a tag) to its commit."""
        sha = tag_sha
        for _ in range(5):
            resp = self.get(f"{base}/git/tags/{sha}", counter, None, f"tag object {sha[:12]}")
            self.check(resp, f"tag object {sha[:12]}")
            obj = (self.json_of(resp, "tag object") or {}).get("object") or {}
            if obj.get("type") == "commit":
                return obj.get("sha")
            if obj.get("type") != "tag":
                return None  # a tag of a tree or blob: nothing to build
            sha = obj.get("sha")
        return None



def _float(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _message_of(resp: requests.Response) -> str:
    return server_message(resp) or resp.reason or f"HTTP {resp.status_code}"
