"""Helpers to answer like GitHub with `responses`, from the real payloads in tests/fixtures/github."""

from __future__ import annotations

import copy
import json

import responses
from responses import matchers

from tests.fixture_paths import GITHUB as FIXTURES

API = "https://api.github.com"
REPO = "acme/app"
BASE = f"{API}/repos/{REPO}"
EVENTS = f"{BASE}/events?per_page=100"
BRANCH = f"{BASE}/git/ref/heads/master"
TAGS = f"{BASE}/git/matching-refs/tags?per_page=100"


def fixture(path: str):
    return json.loads((FIXTURES / path).read_text())


def push_event(event_id: str, head: str, ref: str = "refs/heads/master", shape: str = "post-2025") -> dict:
    """A real PushEvent (post-2025 reduced, or pre-2025 full) with this id, ref and head (derived from fixtures)."""
    name = "events/PushEvent_post-2025-10_reduced.json" if shape == "post-2025" else \
        "events/PushEvent_pre-2025-10_with_commits_size.json"
    ev = copy.deepcopy(fixture(name))
    ev["id"] = event_id
    ev["payload"]["ref"] = ref
    ev["payload"]["head"] = head
    return ev


def create_tag_event(event_id: str, tag: str) -> dict:
    """The real 2012 CreateEvent (ref_type tag), with this id and tag name."""
    ev = copy.deepcopy(fixture("events/event_CreateEvent_tag_v0.7_2012.json"))
    ev["id"] = event_id
    ev["payload"]["ref"] = tag
    return ev


def merged_pr_event(event_id: str) -> dict:
    ev = copy.deepcopy(fixture("events/event_PullRequestEvent_closed_merged_2012.json"))
    ev["id"] = event_id
    return ev


def add_events(rsps, events, etag='W/"e1"', if_none_match=None, status=200, poll_interval="60", url=EVENTS,
               link=None):
    headers = {"ETag": etag, "X-Poll-Interval": poll_interval}
    if link:
        headers["Link"] = link
    match = [matchers.header_matcher({"If-None-Match": if_none_match})] if if_none_match else []
    if status == 304:
        rsps.add(responses.GET, url, status=304, headers=headers, match=match)
    else:
        rsps.add(responses.GET, url, json=events, status=status, headers=headers, match=match)


def add_branch(rsps, sha, etag='"b1"', if_none_match=None, status=200):
    match = [matchers.header_matcher({"If-None-Match": if_none_match})] if if_none_match else []
    if status == 304:
        rsps.add(responses.GET, BRANCH, status=304, headers={"ETag": etag}, match=match)
        return
    body = copy.deepcopy(fixture("rest/git_ref_heads_EnricoMi.json"))
    body["ref"] = "refs/heads/master"
    body["object"]["sha"] = sha
    rsps.add(responses.GET, BRANCH, json=body, status=status, headers={"ETag": etag}, match=match)


def tag_ref(name: str, sha: str, obj_type: str = "commit") -> dict:
    """One entry shaped like the real matching-refs fixture."""
    entry = copy.deepcopy(fixture("rest/matching_refs_tags_FlorentClarret_PyGithub_2020-04-16.json")[0])
    entry["ref"] = f"refs/tags/{name}"
    kind = "tags" if obj_type == "tag" else "commits"
    entry["object"] = {"sha": sha, "type": obj_type, "url": f"{BASE}/git/{kind}/{sha}"}
    return entry


def add_tags(rsps, refs, etag='"t1"', if_none_match=None, status=200):
    match = [matchers.header_matcher({"If-None-Match": if_none_match})] if if_none_match else []
    if status == 304:
        rsps.add(responses.GET, TAGS, status=304, headers={"ETag": etag}, match=match)
    else:
        rsps.add(responses.GET, TAGS, json=refs, headers={"ETag": etag}, match=match)


def add_tag_object(rsps, tag_sha: str, commit: str):
    rsps.add(responses.GET, f"{BASE}/git/tags/{tag_sha}", json={
        "sha": tag_sha, "tag": "v", "object": {"sha": commit, "type": "commit"}})
