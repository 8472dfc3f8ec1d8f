"""Organization event feeds: polling that costs O(organizations), not O(repositories) (`github.org_feeds: true`).

Repositories of one organization are watched through one feed: `GET /users/{token's user}/events/orgs/{org}`
(it includes the private repositories the user can see; the user comes from `GET /user`), or
`GET /orgs/{org}/events` (public events only) when the user cannot be known, as with a GitHub App token. Requests
are conditional and obey `X-Poll-Interval`, like a repository's feed. An event is routed by its `repo.name` to the
configured repositories, and those are polled now (their refs read through the API, as on any poll): the feed is
a change detector, never the truth. A feed whose newest-seen event has left its 300-event window makes every
repository of that organization due for reconciliation (the request budget spreads them).

Repositories owned by a user keep their own feeds: `/users/{user}/events` lists what the user did, not what
happened in their repositories. Whether an owner is an organization is read once (`GET /users/{owner}`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from polling_server.config import RepositorySettings, Settings
from polling_server.errors import SourceError, SourceRejected
from polling_server.logs import log_event
from polling_server.sources.github import GitHubSource, RequestCounter, relevant_refs
from polling_server.state import StateStore

log = logging.getLogger(__name__)


@dataclass
class OrgFeedPoll:
    org: str
    triggered: list[str] = field(default_factory=list)  # repositories the feed says changed
    overflow: bool = False
    poll_interval: float | None = None
    requests: int = 0


class OrgFeeds:
    def __init__(self, settings: Settings, source: GitHubSource, store: StateStore,
                 clock: Callable[[], float] = time.time):
        self.settings = settings
        self._clock = clock
        self._not_before: dict[str, float] = {}
        self.source = source
        self.store = store
        self.by_owner: dict[str, list[RepositorySettings]] = {}
        for r in settings.repositories:
            if r.repo:
                self.by_owner.setdefault(r.repo.split("/")[0].lower(), []).append(r)
        self._user: str | None = None
        self._user_known = False
        self.orgs: list[str] | None = None  # resolved owners that are organizations

    # --- which owners are organizations --------------------------------------------------------------------
    def resolve(self) -> list[str]:
        """Find the token's user and which owners are organizations (once; a failure is retried next time)."""
        if self.orgs is not None:
            return self.orgs
        api = self.source.api
        counter = RequestCounter()
        if not self._user_known:
            try:
                resp = self.source.get(f"{api}/user", counter, None, "the token's user")
                body = self.source.json_of(resp, "user") if resp.ok else None
                self._user = body.get("login") if isinstance(body, dict) else None
            except SourceRejected:
                self._user = None  # an App token has no user: the public organization feed is used
            self._user_known = True
        orgs = []
        for owner in sorted(self.by_owner):
            resp = self.source.get(f"{api}/users/{owner}", counter, None, f"owner {owner}")
            self.source.check(resp, f"owner {owner}")
            body = self.source.json_of(resp, f"owner {owner}")
            if isinstance(body, dict) and body.get("type") == "Organization":
                orgs.append(owner)
        self.orgs = orgs
        log_event(log, "org_feeds.resolved", orgs=orgs, user=self._user,
                  repositories=sum(len(self.by_owner[o]) for o in orgs))
        return orgs

    def fed_repositories(self) -> set[str]:
        """Names of the configured repositories watched through an organization feed (once resolved)."""
        return {r.name for o in (self.orgs or []) for r in self.by_owner[o]}

    def feed_url(self, org: str) -> str:
        api = self.source.api
        return f"{api}/users/{self._user}/events/orgs/{org}?per_page=100" if self._user else \
            f"{api}/orgs/{org}/events?per_page=100"

    # --- one poll of one organization's feed ---------------------------------------------------------------
    def poll(self, org: str) -> OrgFeedPoll:
        key = f"orgfeed:{org}"
        cursor = self.store.cursor(key)
        counter = RequestCounter()
        feed = self.source.read_feed(self.feed_url(org), cursor, counter, cursor.value is None, f"{org} events")
        result = OrgFeedPoll(org, poll_interval=feed.poll_interval,
                             requests=counter.counted + counter.not_modified)
        if feed.not_modified:
            return result
        if cursor.value is not None:  # the first read only records where the feed is
            if feed.overflow or feed.unreadable:
                result.overflow = True
            by_repo: dict[str, list] = {}
            for ev in feed.events:
                name = (ev.get("repo") or {}).get("name") if isinstance(ev, dict) and isinstance(
                    ev.get("repo"), dict) else None
                if isinstance(name, str):
                    by_repo.setdefault(name.lower(), []).append(ev)
            for repo in self.by_owner.get(org, []):
                events = by_repo.get(repo.repo.lower(), [])
                need_branch, need_tags, _ = relevant_refs(events, repo.branch)
                if need_branch or need_tags:
                    result.triggered.append(repo.name)
        if feed.cursor is not None:
            self.store.save_poll(key, None, {key: feed.cursor})
        return result

    def poll_all(self, poll_now: Callable[[str], None], reconcile_now: Callable[[str], None]) -> list[OrgFeedPoll]:
        """Poll every organization's feed; route what changed to `poll_now`, an overflow to `reconcile_now`."""
        try:
            orgs = self.resolve()
        except SourceError as e:
            log_event(log, "poll.failed", "warning", str(e), source="org_feeds", reason=str(e))
            return []
        results = []
        now = self._clock()
        for org in orgs:
            if self._not_before.get(org, 0.0) > now + 1.0:  # a job run a little early still reads it
                continue  # X-Poll-Interval
            try:
                result = self.poll(org)
            except SourceError as e:
                # Its repositories' own reconciliation still runs, so a feed that cannot be read hides nothing
                # for longer than the reconcile interval.
                log_event(log, "poll.failed", "warning", str(e), org=org, reason=str(e))
                continue
            if result.poll_interval:
                self._not_before[org] = now + result.poll_interval
            for name in result.triggered:
                poll_now(name)
            if result.overflow:
                log_event(log, "org_feed.overflow", "warning", org=org,
                          reason="the last event seen is out of the feed's window: reconciling the organization")
                for repo in self.by_owner[org]:
                    reconcile_now(repo.name)
            results.append(result)
        return results
