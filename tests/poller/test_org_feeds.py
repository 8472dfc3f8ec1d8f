"""Organization feeds: one feed per organization routes events to its repositories; user-owned repositories keep
their own feeds; an overflowed window reconciles the organization; steady state costs O(organizations)."""

from __future__ import annotations

import json

import responses

from polling_server.config import parse_settings
from polling_server.cycle import RepositoryPoller
from polling_server.metrics import Metrics
from polling_server.planning.model import Observation
from polling_server.sources.base import SourcePoll
from polling_server.sources.github import GitHubSource
from polling_server.sources.org_feed import OrgFeeds
from polling_server.state import StateStore
from tests.clocks import FakeTime

API = "https://api.github.com"
SHA = "e" * 40


def push(event_id, repo, ref):
    return {"id": str(event_id), "type": "PushEvent", "repo": {"name": repo},
            "payload": {"ref": ref, "head": SHA, "before": "0" * 40}}


def create_tag(event_id, repo, tag):
    return {"id": str(event_id), "type": "CreateEvent", "repo": {"name": repo},
            "payload": {"ref": tag, "ref_type": "tag", "full_ref": f"refs/tags/{tag}"}}


def setup(tmp_path, repos):
    settings = parse_settings({
        "state_path": str(tmp_path / "s.db"), "github": {"token": "ghp_org", "org_feeds": True},
        "repositories": [{"repo": r, "image": r.lower()} for r in repos]}, env={})
    store = StateStore(settings.state_path)
    return settings, store, OrgFeeds(settings, GitHubSource(settings.github), store)


def owners(rsps, user="bot", kinds=None):
    if user:
        rsps.add(responses.GET, f"{API}/user", json={"login": user, "type": "User"})
    else:
        rsps.add(responses.GET, f"{API}/user", status=403, json={"message": "Resource not accessible by integration"})
    for owner, kind in (kinds or {}).items():
        rsps.add(responses.GET, f"{API}/users/{owner}", json={"login": owner, "type": kind})


def test_events_are_routed_to_the_repositories_of_the_organization(tmp_path):
    settings, store, feeds = setup(tmp_path, ["acme/app1", "acme/app2", "Acme/App3", "alice/tool"])
    feed = f"{API}/users/bot/events/orgs/acme?per_page=100"
    woke, reconciled = [], []
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        owners(rsps, kinds={"acme": "Organization", "alice": "User"})
        rsps.add(responses.GET, feed, json=[push(10, "acme/app1", "refs/heads/master")], headers={"ETag": '"e1"'})
        feeds.poll_all(woke.append, reconciled.append)
        assert feeds.orgs == ["acme"] and woke == []  # the first read records where the feed is
        assert feeds.fed_repositories() == {"acme/app1", "acme/app2", "Acme/App3"}  # alice keeps her own feed
        rsps.add(responses.GET, feed, json=[
            push(13, "acme/app1", "refs/heads/feature"),  # another branch: nothing
            create_tag(12, "ACME/app3", "v1.0.0"),  # routed case-insensitively
            push(11, "acme/app2", "refs/heads/master"),
            push(10, "acme/app1", "refs/heads/master"),  # seen before
        ], headers={"ETag": '"e2"'})
        feeds.poll_all(woke.append, reconciled.append)
        assert woke == ["acme/app2", "Acme/App3"] and reconciled == []
        rsps.add(responses.GET, feed, status=304,
                 match=[responses.matchers.header_matcher({"If-None-Match": '"e2"'})])
        feeds._not_before.clear()
        feeds.poll_all(woke.append, reconciled.append)
    assert woke == ["acme/app2", "Acme/App3"]
    assert store.cursor("orgfeed:acme").value == "13"


def test_an_overflowed_window_reconciles_the_organization(tmp_path):
    settings, store, feeds = setup(tmp_path, ["acme/app1", "acme/app2"])
    feed = f"{API}/users/bot/events/orgs/acme?per_page=100"
    woke, reconciled = [], []
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        owners(rsps, kinds={"acme": "Organization"})
        rsps.add(responses.GET, feed, json=[push(5, "acme/app1", "refs/heads/master")])
        feeds.poll_all(woke.append, reconciled.append)
        pages = [f"{API}/orgfeed?page={n}" for n in (2, 3)]
        rsps.add(responses.GET, feed, json=[push(400, "acme/x", "refs/heads/master")],
                 headers={"Link": f'<{pages[0]}>; rel="next"'})
        rsps.add(responses.GET, pages[0], json=[push(300, "acme/x", "refs/heads/master")],
                 headers={"Link": f'<{pages[1]}>; rel="next"'})
        rsps.add(responses.GET, pages[1], json=[push(200, "acme/x", "refs/heads/master")])
        feeds.poll_all(woke.append, reconciled.append)
    assert reconciled == ["acme/app1", "acme/app2"]


def test_an_app_token_uses_the_public_organization_feed(tmp_path):
    settings, store, feeds = setup(tmp_path, ["acme/app1"])
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        owners(rsps, user=None, kinds={"acme": "Organization"})
        rsps.add(responses.GET, f"{API}/orgs/acme/events?per_page=100", json=[])
        feeds.poll_all(lambda n: None, lambda n: None)


class Quiet:
    """A repository source that sees nothing new, counting polls."""

    kind = "github"

    def __init__(self):
        self.polls = 0

    def poll(self, repo, cursors, state, reconcile):
        self.polls += 1
        return SourcePoll(Observation(True, SHA, {}))


def test_steady_state_costs_a_request_per_organization_a_minute(tmp_path):
    """1,000 repositories in 10 organizations over 20 minutes: feeds answer 304; only reconciliation polls them."""
    fake = FakeTime()
    repos = [f"org{o}/app{i}" for o in range(10) for i in range(100)]
    settings = parse_settings({
        "state_path": str(tmp_path / "s.db"), "poll_interval_seconds": 60, "reconcile_interval_seconds": 600,
        "github": {"token": "ghp_org", "org_feeds": True},
        "repositories": [{"repo": r, "image": r} for r in repos]}, env={})
    store = StateStore(settings.state_path)
    feeds = OrgFeeds(settings, GitHubSource(settings.github), store, clock=fake.clock)
    quiet = Quiet()
    poller = RepositoryPoller(settings, store, Metrics(), {"github": quiet}, clock=fake.clock)
    feed_calls: list[float] = []

    def feed(request):
        feed_calls.append(fake.t)
        return (304, {"X-Poll-Interval": "60"}, "") if request.headers.get("If-None-Match") else \
            (200, {"ETag": '"x"', "X-Poll-Interval": "60"}, json.dumps([]))

    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.add(responses.GET, f"{API}/user", json={"login": "bot"})
        for o in range(10):
            rsps.add(responses.GET, f"{API}/users/org{o}", json={"type": "Organization"})
            rsps.add_callback(responses.GET, f"{API}/users/bot/events/orgs/org{o}?per_page=100", callback=feed)
        start = fake.t
        for step in range(2400):  # 20 minutes in half seconds
            fake.t = start + step * 0.5
            if step % 120 == 0:
                feeds.poll_all(poller.poll_now, poller.reconcile_now)
                poller.org_fed = feeds.fed_repositories()
            poller.poll_due(wait=True)
    poller.close()
    minutes = [sum(1 for t in feed_calls if m * 60 <= t - start < (m + 1) * 60) for m in range(20)]
    assert max(minutes) <= 10  # one conditional read per organization a minute
    # Besides the first pass, each repository was polled only by its spread reconciliation: 600 s apart.
    assert quiet.polls <= 1000 * (1 + 20 * 60 / 600) + 10
