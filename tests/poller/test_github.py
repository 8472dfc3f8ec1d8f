"""GitHub detection through `responses` with the real payloads: events as the change signal, refs as the truth."""

from __future__ import annotations

import logging

import pytest
import responses

from polling_server.config import parse_settings
from polling_server.cycle import RepositoryPoller
from polling_server.errors import RateLimited
from polling_server.http import HttpClient
from polling_server.metrics import Metrics
from polling_server.sources.git_remote import GitRemoteSource
from polling_server.sources.github import GitHubSource
from polling_server.state import StateStore
from tests.clocks import Clock
from tests.poller.github_fakes import (
    BASE,
    EVENTS,
    add_branch,
    add_events,
    add_tag_object,
    add_tags,
    create_tag_event,
    fixture,
    merged_pr_event,
    push_event,
    tag_ref,
)

A, B, C, T = "a" * 40, "b" * 40, "c" * 40, "f" * 40


@pytest.fixture
def clock():
    return Clock()


def make(tmp_path, clock, extra_repos=(), **top):
    settings = parse_settings({
        "state_path": str(tmp_path / "state.db"),
        "reconcile_interval_seconds": 600,
        "github": {"token": "ghp_TESTTOKEN", "max_retries": 1},
        "repositories": [{"repo": "acme/app", "image": "acme/app"}, *extra_repos],
        **top,
    }, env={})
    store = StateStore(settings.state_path, clock=clock)
    http = HttpClient(max_retries=1, sleep=lambda s: None)
    gh = GitHubSource(settings.github, http=http, clock=clock)
    poller = RepositoryPoller(settings, store, Metrics(), {"github": gh, "git": GitRemoteSource()}, clock=clock)
    return settings, store, poller


def baseline(rsps, poller, settings, head=A, tags=()):
    add_events(rsps, [push_event("100", head)], etag='W/"e0"')
    add_branch(rsps, head, etag='"b0"')
    add_tags(rsps, list(tags), etag='"t0"')
    plan, _, _ = poller.poll_one(settings.repositories[0])
    assert plan.builds == ()
    return plan


def planned(store):
    return [(b.kind.value, b.ref, b.sha) for b in reversed(store.builds())]


@pytest.mark.parametrize("shape", ["post-2025", "pre-2025"])
def test_push_event_old_and_new_shapes_plan_one_staging_build(tmp_path, clock, shape):
    settings, store, poller = make(tmp_path, clock)
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        baseline(rsps, poller, settings)
        clock.t += 61
        add_events(rsps, [push_event("101", B, shape=shape), push_event("100", A)], etag='W/"e1"',
                   if_none_match='W/"e0"')
        add_branch(rsps, B, etag='"b1"', if_none_match='"b0"')
        poller.poll_one(settings.repositories[0])
        # The token went as a header on every request.
        assert all(c.request.headers["Authorization"] == "Bearer ghp_TESTTOKEN" for c in rsps.calls)
    assert planned(store) == [("staging", "master", B)]
    assert store.cursor("events:acme/app").value == "101"


def test_304_costs_nothing_and_plans_nothing(tmp_path, clock):
    settings, store, poller = make(tmp_path, clock)
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        baseline(rsps, poller, settings)
        clock.t += 61
        add_events(rsps, None, status=304, if_none_match='W/"e0"')
        plan, counted, not_modified = poller.poll_one(settings.repositories[0])
        assert len(rsps.calls) == 4  # 3 for the baseline, then one conditional request
    assert plan.builds == () and counted == 0 and not_modified == 1


def test_x_poll_interval_is_obeyed(tmp_path, clock):
    settings, store, poller = make(tmp_path, clock)
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        add_events(rsps, [], poll_interval="120")
        add_branch(rsps, A)
        add_tags(rsps, [])
        poller.poll_one(settings.repositories[0])
        clock.t += 60
        assert poller.poll_one(settings.repositories[0]) is None  # not due: no request at all
        assert len(rsps.calls) == 3
        clock.t += 61
        add_events(rsps, None, status=304)
        assert poller.poll_one(settings.repositories[0]) is not None


def test_pagination_stops_at_the_last_event_seen(tmp_path, clock):
    settings, store, poller = make(tmp_path, clock)
    page2 = f"{BASE}/events?per_page=100&page=2"
    page3 = f"{BASE}/events?per_page=100&page=3"
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        baseline(rsps, poller, settings)
        clock.t += 61
        first = [push_event(str(300 - i), B if i == 0 else A, ref="refs/heads/other") for i in range(100)]
        first[0]["payload"]["ref"] = "refs/heads/master"
        second = [push_event("199", A, ref="refs/heads/other"), push_event("100", A)] + \
                 [push_event(str(99 - i), A) for i in range(50)]
        add_events(rsps, first, link=f'<{page2}>; rel="next", <{page3}>; rel="last"')
        add_events(rsps, second, url=page2, link=f'<{page3}>; rel="next"')
        add_branch(rsps, B)
        poller.poll_one(settings.repositories[0])
        urls = [c.request.url for c in rsps.calls]
    assert page3 not in urls  # stopped at event 100, the last one seen
    assert planned(store) == [("staging", "master", B)]


def test_tag_events_resolve_annotated_tags_and_ignore_non_semver(tmp_path, clock, caplog):
    settings, store, poller = make(tmp_path, clock)
    caplog.set_level(logging.INFO)
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        baseline(rsps, poller, settings, tags=[tag_ref("v0.9.0", A)])
        clock.t += 61
        add_events(rsps, [create_tag_event("102", "v1.0.0"), create_tag_event("101", "nightly")])
        add_tags(rsps, [tag_ref("v0.9.0", A), tag_ref("v1.0.0", T, "tag"), tag_ref("nightly", C)],
                 if_none_match='"t0"')
        add_tag_object(rsps, T, B)
        poller.poll_one(settings.repositories[0])
    assert planned(store) == [("release", "v1.0.0", B)]  # the commit behind the annotated tag object
    assert store.tag_commit(T) == B
    ignored = [r for r in caplog.records if getattr(r, "event", "") == "tag.ignored"]
    assert [r.fields["ref"] for r in ignored] == ["nightly"]


def test_merged_pull_request_builds_once(tmp_path, clock):
    """A merge yields a PullRequestEvent (closed+merged, old shape) and a PushEvent: one build."""
    settings, store, poller = make(tmp_path, clock)
    observed = fixture("events/observed_events_2026-01_abridged_by_author.json")
    merged_new_shape = next(e for e in observed if e["type"] == "PullRequestEvent" and
                            e["payload"].get("action") == "merged")
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        baseline(rsps, poller, settings)
        clock.t += 61
        add_events(rsps, [push_event("103", B), merged_pr_event("102"), {**merged_new_shape, "id": "101"}])
        add_branch(rsps, B)
        poller.poll_one(settings.repositories[0])
    assert planned(store) == [("staging", "master", B)]


def test_pull_request_alone_builds_nothing(tmp_path, clock):
    settings, store, poller = make(tmp_path, clock)
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        baseline(rsps, poller, settings)
        clock.t += 61
        add_events(rsps, [merged_pr_event("102"), fixture("events/PullRequestEvent_opened_post-2025-10_reduced.json")])
        poller.poll_one(settings.repositories[0])
    assert planned(store) == []


def test_missed_event_is_caught_by_reconciliation_once(tmp_path, clock):
    settings, store, poller = make(tmp_path, clock)
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        baseline(rsps, poller, settings, tags=[tag_ref("v1.0.0", A)])
        # The feed says nothing (event lost or late) while the branch and a tag moved on.
        clock.t += 601
        add_events(rsps, None, status=304)
        add_branch(rsps, B, etag='"b1"', if_none_match='"b0"')
        add_tags(rsps, [tag_ref("v1.0.0", A), tag_ref("v1.1.0", B)], etag='"t1"', if_none_match='"t0"')
        poller.poll_one(settings.repositories[0])
        assert planned(store) == [("staging", "master", B), ("release", "v1.1.0", B)]
        # The late events arrive afterwards: nothing is planned twice.
        clock.t += 61
        add_events(rsps, [push_event("102", B), create_tag_event("101", "v1.1.0")])
        add_branch(rsps, B, status=304, etag='"b1"', if_none_match='"b1"')
        add_tags(rsps, None, status=304, etag='"t1"', if_none_match='"t1"')
        poller.poll_one(settings.repositories[0])
    assert planned(store) == [("staging", "master", B), ("release", "v1.1.0", B)]


@pytest.mark.parametrize("headers,status,expected_wait", [
    ({"retry-after": "120"}, 429, 120),
    ({"retry-after": "30"}, 403, 30),
    ({"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1700000900"}, 403, 900),
    ({}, 429, 60),
])
def test_rate_limits_pause_github_once_per_episode(tmp_path, clock, caplog, headers, status, expected_wait):
    caplog.set_level(logging.INFO)
    settings, store, poller = make(tmp_path, clock, extra_repos=[{"repo": "acme/other", "image": "acme/other"}])
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.add(responses.GET, EVENTS, status=status, headers=headers,
                 json={"message": "API rate limit exceeded for user."})
        rsps.add(responses.GET, "https://api.github.com/repos/acme/other/events?per_page=100", status=status,
                 headers=headers, json={"message": "API rate limit exceeded for user."})
        report = poller.poll_all()
        assert set(report.failed) <= {"acme/app", "acme/other"} and report.failed
        sent = len(rsps.calls)
        # While paused, no request goes to GitHub at all.
        clock.t += expected_wait - 1
        report = poller.poll_all()
        assert len(rsps.calls) == sent and report.skipped == 2
    episodes = [r for r in caplog.records if getattr(r, "event", "") == "poll.rate_limited"]
    assert len(episodes) == 1
    assert not [r for r in caplog.records if getattr(r, "event", "") == "poll.failed"]


def test_rate_limit_error_carries_resume_time(tmp_path, clock):
    settings, store, poller = make(tmp_path, clock)
    gh = poller.sources["github"]
    with responses.RequestsMock() as rsps:
        rsps.add(responses.GET, EVENTS, status=403, headers={"x-ratelimit-remaining": "0",
                                                             "x-ratelimit-reset": "1700000500"})
        with pytest.raises(RateLimited) as e:
            gh.poll(settings.repositories[0], store, store.repo_state("acme/app"), reconcile=False)
    assert e.value.resume_at == 1700000500


def test_forbidden_without_rate_limit_is_a_failure_not_a_pause(tmp_path, clock, caplog):
    settings, store, poller = make(tmp_path, clock)
    with responses.RequestsMock() as rsps:
        rsps.add(responses.GET, EVENTS, status=403, json={"message": "Resource not accessible by integration"})
        report = poller.poll_all()
    assert "Resource not accessible" in report.failed["acme/app"]
    assert "ghp_TESTTOKEN" not in caplog.text


def test_one_failing_repository_does_not_stop_the_others(tmp_path, clock):
    settings, store, poller = make(tmp_path, clock, extra_repos=[{"repo": "acme/other", "image": "acme/other"}])
    with responses.RequestsMock() as rsps:
        rsps.add(responses.GET, EVENTS, status=500)
        other = "https://api.github.com/repos/acme/other"
        rsps.add(responses.GET, f"{other}/events?per_page=100", json=[])
        rsps.add(responses.GET, f"{other}/git/ref/heads/master", json={"object": {"sha": A, "type": "commit"}})
        rsps.add(responses.GET, f"{other}/git/matching-refs/tags?per_page=100", json=[])
        report = poller.poll_all()
    assert list(report.failed) == ["acme/app"] and "HTTP 500" in report.failed["acme/app"]
    assert report.polled == 1
    assert store.repo_state("acme/other").branch_head == A
    assert store.repo_state("acme/app").baseline is False


def test_malformed_event_is_skipped_and_malformed_page_falls_back_to_refs(tmp_path, clock, caplog):
    caplog.set_level(logging.INFO)
    settings, store, poller = make(tmp_path, clock)
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        baseline(rsps, poller, settings)
        clock.t += 61
        add_events(rsps, [push_event("103", B), {"id": "102", "type": "PushEvent"}, "garbage"])
        add_branch(rsps, B)
        poller.poll_one(settings.repositories[0])
        assert planned(store) == [("staging", "master", B)]
        assert len([r for r in caplog.records if getattr(r, "event", "") == "poll.skipped"]) == 2
        # A page that is not JSON at all: the refs are read instead, and the events cursor is kept.
        clock.t += 61
        rsps.add(responses.GET, EVENTS, body="<html>oops</html>", headers={"ETag": 'W/"bad"'})
        add_branch(rsps, C)
        add_tags(rsps, [])
        poller.poll_one(settings.repositories[0])
    assert planned(store) == [("staging", "master", B), ("staging", "master", C)]
    assert store.cursor("events:acme/app").value == "103"


def test_github_enterprise_base_url(tmp_path, clock):
    settings, store, poller = make(tmp_path, clock, github={"api_url": "https://ghe.example.com/api/v3",
                                                            "token": "x"})
    ghe = "https://ghe.example.com/api/v3/repos/acme/app"
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        rsps.add(responses.GET, f"{ghe}/events?per_page=100", json=[])
        rsps.add(responses.GET, f"{ghe}/git/ref/heads/master", json={"object": {"sha": A, "type": "commit"}})
        rsps.add(responses.GET, f"{ghe}/git/matching-refs/tags?per_page=100", json=[])
        poller.poll_one(settings.repositories[0])
    assert store.repo_state("acme/app").branch_head == A


def test_deleted_branch_and_tag_plan_nothing(tmp_path, clock):
    settings, store, poller = make(tmp_path, clock)
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        baseline(rsps, poller, settings, tags=[tag_ref("v1.0.0", A)])
        clock.t += 601
        add_events(rsps, [])
        rsps.add(responses.GET, f"{BASE}/git/ref/heads/master", status=404, json={"message": "Not Found"})
        add_tags(rsps, [])
        poller.poll_one(settings.repositories[0])
    assert planned(store) == []
    assert store.repo_state("acme/app").tags == {}


def test_first_poll_after_a_restart_reads_the_refs(tmp_path, clock):
    """A merge made while the daemon was down, whose event is late: the restart's first poll still finds it."""
    settings, store, poller = make(tmp_path, clock)
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        baseline(rsps, poller, settings)
        store.close()
        settings, store, restarted = make(tmp_path, clock)
        clock.t += 61
        add_events(rsps, None, status=304, if_none_match='W/"e0"')
        add_branch(rsps, B, etag='"b1"', if_none_match='"b0"')
        add_tags(rsps, None, status=304, if_none_match='"t0"')
        restarted.poll_one(settings.repositories[0])
        # Then back to events only until the reconcile interval has passed.
        clock.t += 61
        add_events(rsps, None, status=304, if_none_match='W/"e0"')
        restarted.poll_one(settings.repositories[0])
    assert planned(store) == [("staging", "master", B)]
