"""The webhook receiver: captured real deliveries (GitHub, GitLab, Gitea) × good / bad / missing / wrong
signature × which repositories woke; deduplication, form bodies, limits; and a delivery that makes a poll happen
at once, where the payload is only a trigger (a replayed payload builds nothing that is not on the branch)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from pathlib import Path
from urllib.parse import urlencode

import pytest
import requests

from polling_server.config import parse_settings
from polling_server.daemon import Daemon
from polling_server.metrics import Metrics
from polling_server.state import StateStore
from polling_server.web.receiver import WebhookReceiver, clone_url_key
from polling_server.web.signatures import gitea_signature_valid, github_signature_valid, token_valid
from tests.gitrepo import GitRepo

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
GH = FIXTURES / "github" / "webhooks"
SECRET = "It's a Secret to Everybody"
OLD_SECRET = "the-previous-secret"


def body_of(path: Path) -> bytes:
    return path.read_bytes()


def gh_sig(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_github_signature_matches_the_documented_vector():
    header = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert github_signature_valid(b"Hello, World!", header, [SECRET])
    assert github_signature_valid(b"Hello, World!", header, [OLD_SECRET, SECRET])  # rotation: either one
    assert not github_signature_valid(b"Hello, World?", header, [SECRET])
    assert not github_signature_valid(b"Hello, World!", header, [OLD_SECRET])
    for bad in (None, "", "sha256=", "sha1=" + "0" * 40, header[:-1], header.upper().replace("SHA256", "md5")):
        assert not github_signature_valid(b"Hello, World!", bad, [SECRET])


def test_gitea_signature_and_tokens():
    body = b'{"ref": "refs/heads/main"}'
    good = hmac.new(b"gitea-secret-1", body, hashlib.sha256).hexdigest()
    assert gitea_signature_valid(body, good, ["gitea-secret-1"])
    assert not gitea_signature_valid(body, "", ["gitea-secret-1"])  # Gitea sends an empty one without a secret
    assert not gitea_signature_valid(body, "sha256=" + good, ["gitea-secret-1"])
    assert token_valid("gitlab-token-1", ["gitlab-token-1"]) and not token_valid("gitlab-token-2", ["gitlab-token-1"])
    assert not token_valid("", ["gitlab-token-1"]) and not token_valid(None, ["gitlab-token-1"])


@pytest.mark.parametrize("url, key", [
    ("https://example.com/mike/diaspora.git", ("https", "example.com", "/mike/diaspora")),
    ("https://user:pw@Example.com/mike/diaspora/", ("https", "example.com", "/mike/diaspora")),
    ("git@example.com:mike/diaspora.git", ("ssh", "example.com", "/mike/diaspora")),
    ("ssh://git@example.com:2222/mike/diaspora.git", ("ssh", "example.com:2222", "/mike/diaspora")),
    ("/srv/git/app.git", None),
])
def test_clone_urls_are_normalised(url, key):
    assert clone_url_key(url) == key


REPOS = [
    {"repo": "Codertocat/Hello-World", "name": "hello", "image": "c/hello", "branch": "master"},
    {"repo": "binkkatal/sample_app", "name": "sample", "image": "b/sample", "branch": "master"},
    {"repo": "baxterthehacker/public-repo", "name": "public", "image": "b/public", "branch": "main"},
    {"url": "http://example.com/mike/diaspora.git", "name": "diaspora", "image": "m/diaspora", "branch": "master"},
    {"url": "http://example.com/jsmith/example", "name": "example", "image": "j/example"},
    {"url": "http://localhost:3000/gitea/webhooks.git", "name": "gitea-hooks", "image": "g/hooks",
     "branch": "develop"},
    {"url": "git@localhost:example/example.git", "name": "gitea-example", "image": "g/example", "branch": "other"},
]


@pytest.fixture
def receiver(tmp_path):
    settings = parse_settings({
        "state_path": str(tmp_path / "s.db"), "repositories": REPOS,
        "webhooks": {"github_secret": [OLD_SECRET, SECRET], "gitlab_token": "gitlab-token-1",
                     "gitea_secret": "gitea-secret-1", "charts_token": "charts-token-1"}}, env={})
    woke: list[str] = []
    charts: list[bool] = []
    r = WebhookReceiver(settings, StateStore(settings.state_path), Metrics(), woke.append,
                        lambda: charts.append(True))
    r.woke, r.charts_woke = woke, charts
    return r


@pytest.mark.parametrize("fixture, event, status, woke", [
    ("webhook_push_branch-update_real-2018_go-playground.json", "push", 202, ["sample"]),
    ("webhook_push_with-new-branch.payload.json", "push", 202, ["hello"]),
    ("webhook_push_tag-created_ghes-3.5.payload.json", "push", 202, ["hello"]),  # a tag push
    ("webhook_push_payload.json", "push", 202, ["hello"]),  # a tag deleted: polled, the planner decides
    ("webhook_create_payload.json", "create", 202, ["hello"]),  # tag created
    ("webhook_delete_payload.json", "delete", 202, ["hello"]),
    ("webhook_create_tag_real_go-playground.json", "create", 202, ["public"]),
    ("webhook_pull_request_closed.payload.json", "pull_request", 202, []),  # not a trigger
    ("webhook_release_published.payload.json", "release", 202, []),
    ("webhook_ping_payload.json", "ping", 200, []),
])
def test_github_deliveries_wake_the_repositories_they_name(receiver, fixture, event, status, woke):
    body = body_of(GH / fixture)
    answer = receiver.github(body, {"X-Hub-Signature-256": gh_sig(body), "X-GitHub-Event": event,
                                    "X-GitHub-Delivery": f"d-{fixture}", "Content-Type": "application/json"})
    assert answer.status == status and receiver.woke == woke
    if event == "ping":
        assert answer.body["ok"] is True


def test_github_other_branches_and_unknown_repositories_are_ignored(receiver):
    payload = json.loads(body_of(GH / "webhook_push_branch-update_real-2018_go-playground.json"))
    for ref, full_name in (("refs/heads/feature", "binkkatal/sample_app"), ("refs/heads/master", "someone/else")):
        payload.update(ref=ref)
        payload["repository"]["full_name"] = full_name
        body = json.dumps(payload).encode()
        answer = receiver.github(body, {"X-Hub-Signature-256": gh_sig(body), "X-GitHub-Event": "push",
                                        "X-GitHub-Delivery": ref + full_name, "Content-Type": "application/json"})
        assert answer.status == 202 and answer.body["accepted"] is False
    assert receiver.woke == []
    # full_name matches case-insensitively
    payload.update(ref="refs/heads/master")
    payload["repository"]["full_name"] = "BINKKATAL/Sample_App"
    body = json.dumps(payload).encode()
    assert receiver.github(body, {"X-Hub-Signature-256": gh_sig(body), "X-GitHub-Event": "push",
                                  "Content-Type": "application/json"}).status == 202
    assert receiver.woke == ["sample"]


@pytest.mark.parametrize("headers", [
    {},  # missing
    {"X-Hub-Signature-256": "sha256=" + "0" * 64},  # bad
    {"X-Hub-Signature-256": gh_sig(b"other body")},  # over another body
    {"X-Hub-Signature-256": None},  # wrong secret (filled in below)
])
def test_github_bad_signatures_get_401_and_nothing_happens(receiver, headers):
    body = body_of(GH / "webhook_push_with-new-branch.payload.json")
    if "X-Hub-Signature-256" in headers and headers["X-Hub-Signature-256"] is None:
        headers = {"X-Hub-Signature-256": gh_sig(body, "a-wrong-secret")}
    answer = receiver.github(body, {**headers, "X-GitHub-Event": "push", "Content-Type": "application/json"})
    assert answer.status == 401 and receiver.woke == []
    assert receiver.metrics.registry.get_sample_value(
        "poller_webhook_deliveries_total", {"provider": "github", "outcome": "bad_signature"}) == 1


def test_a_redelivery_is_a_duplicate_and_plans_nothing_new(receiver):
    body = body_of(GH / "webhook_push_with-new-branch.payload.json")
    headers = {"X-Hub-Signature-256": gh_sig(body), "X-GitHub-Event": "push", "X-GitHub-Delivery": "guid-1",
               "Content-Type": "application/json"}
    assert receiver.github(body, headers).status == 202
    again = receiver.github(body, headers)
    assert again.status == 200 and again.body["duplicate"] is True
    assert receiver.woke == ["hello"]
    # the ids survive a restart: they are in the state database
    restarted = WebhookReceiver(receiver.settings, StateStore(receiver.settings.state_path), Metrics(),
                                receiver.woke.append)
    assert restarted.github(body, headers).outcome == "duplicate" and receiver.woke == ["hello"]


def test_form_encoded_deliveries_and_bodies_that_are_not_deliveries(receiver):
    payload = body_of(GH / "webhook_push_with-new-branch.payload.json").decode()
    form = urlencode({"payload": payload}).encode()
    ok = receiver.github(form, {"X-Hub-Signature-256": gh_sig(form), "X-GitHub-Event": "push",
                                "Content-Type": "application/x-www-form-urlencoded"})
    assert ok.status == 202 and receiver.woke == ["hello"]
    for bad in (b"not json", b"[1, 2]", b"{}", b"[" * 100_000 + b"]" * 100_000):
        answer = receiver.github(bad, {"X-Hub-Signature-256": gh_sig(bad), "X-GitHub-Event": "push",
                                       "Content-Type": "application/json"})
        assert answer.status == 400, bad[:20]


@pytest.mark.parametrize("fixture, event, token, status, woke", [
    ("push_hook_docs_example.json", "Push Hook", "gitlab-token-1", 202, ["diaspora"]),
    ("tag_push_hook_docs_example.json", "Tag Push Hook", "gitlab-token-1", 202, ["example"]),
    ("push_hook_docs_example.json", "Push Hook", "wrong-token", 401, []),
    ("push_hook_docs_example.json", None, None, 401, []),
    ("push_hook_docs_example.json", "Issue Hook", "gitlab-token-1", 202, []),
])
def test_gitlab_deliveries(receiver, fixture, event, token, status, woke):
    body = body_of(FIXTURES / "gitlab" / "webhooks" / fixture)
    headers = {"Content-Type": "application/json"}
    if event:
        headers["X-Gitlab-Event"] = event
    if token:
        headers["X-Gitlab-Token"] = token
    answer = receiver.gitlab(body, headers)
    assert answer.status == status and receiver.woke == woke


@pytest.mark.parametrize("fixture, secret, status, woke", [
    ("push_branch-update_docs_example.json", "gitea-secret-1", 202, ["gitea-hooks"]),
    ("push_new-branch_go-playground_testdata.json", "gitea-secret-1", 202, []),  # branch master not watched
    ("push_branch-update_docs_example.json", "wrong-secret-1", 401, []),
    ("push_branch-update_docs_example.json", None, 401, []),
])
def test_gitea_deliveries(receiver, fixture, secret, status, woke):
    body = body_of(FIXTURES / "gitea" / "webhooks" / fixture)
    headers = {"Content-Type": "application/json", "X-Gitea-Event": "push"}
    headers["X-Gitea-Signature"] = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest() if secret else ""
    answer = receiver.gitea(body, headers)
    assert answer.status == status and receiver.woke == woke


def test_the_charts_hook_needs_its_bearer_token(receiver):
    assert receiver.charts({"Authorization": "Bearer nope-nope"}).status == 401
    assert receiver.charts({}).status == 401 and receiver.charts_woke == []
    assert receiver.charts({"Authorization": "Bearer charts-token-1"}).status == 202
    assert receiver.charts_woke == [True]


def test_a_hook_without_a_configured_secret_is_not_there(tmp_path):
    settings = parse_settings({"state_path": str(tmp_path / "s.db"), "repositories": REPOS}, env={})
    r = WebhookReceiver(settings, StateStore(settings.state_path), Metrics(), lambda name: None)
    body = body_of(GH / "webhook_push_with-new-branch.payload.json")
    assert r.github(body, {"X-Hub-Signature-256": gh_sig(body), "X-GitHub-Event": "push"}).status == 404
    assert r.gitlab(body, {"X-Gitlab-Token": "x"}).status == 404
    assert r.charts({"Authorization": "Bearer x"}).status == 404


def test_a_delivery_makes_the_poll_happen_now_and_the_payload_is_never_the_truth(tmp_path, caplog):
    """A git remote watched with a poll interval of an hour: only the hook can make it be polled."""
    caplog.set_level(logging.INFO)
    root = tmp_path / "g"
    root.mkdir()
    repo = GitRepo(root, branch="develop")
    repo.commit({"f": "1"})
    url = "http://localhost:3000/gitea/webhooks.git"  # what the payload names; git itself reads the local repo
    settings = parse_settings({
        "state_path": str(tmp_path / "s.db"), "poll_interval_seconds": 3600,
        "http": {"host": "127.0.0.1", "port": 0},
        "webhooks": {"gitea_secret": "gitea-secret-1", "host": "127.0.0.1", "port": 0},
        "repositories": [{"url": url, "name": "app", "image": "t/app", "branch": "develop"}]}, env={})
    daemon = Daemon(settings, sources={"git": LocalGit(repo.url)}, tag_mover=None, builder=NoBuilder())
    daemon.start()
    try:
        deadline = time.monotonic() + 20
        while not daemon.store.repo_state("app").baseline:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        head = repo.commit({"f": "2"})
        payload = json.loads(body_of(FIXTURES / "gitea" / "webhooks" / "push_branch-update_docs_example.json"))
        # a stale payload: its `after` is not the branch's head. The poll reads the truth.
        body = json.dumps(payload).encode()
        sig = hmac.new(b"gitea-secret-1", body, hashlib.sha256).hexdigest()
        sent = time.monotonic()
        for port in (daemon.server.port, daemon.hooks_server.port):  # both listeners take the hooks
            r = requests.post(f"http://127.0.0.1:{port}/hooks/gitea", data=body, timeout=10,
                              headers={"Content-Type": "application/json", "X-Gitea-Event": "push",
                                       "X-Gitea-Signature": sig, "X-Gitea-Delivery": f"uuid-{port}"})
            assert r.status_code == 202 and r.json()["repositories"] == ["app"]
        while not [x for x in daemon.store.builds() if x.sha == head]:
            assert time.monotonic() - sent < 20, "the hook did not make the repository be polled"
            time.sleep(0.02)
        planned = [x.sha for x in daemon.store.builds()]
        assert planned == [head] and payload["after"] not in planned
        # the hooks-only listener serves nothing else
        assert requests.get(f"http://127.0.0.1:{daemon.hooks_server.port}/metrics", timeout=10).status_code == 404
        too_big = requests.post(f"http://127.0.0.1:{daemon.server.port}/hooks/gitea", data=b"x" * (25 * 2**20 + 1),
                                timeout=30, headers={"Content-Type": "application/json"})
        assert too_big.status_code == 413
    finally:
        daemon.stop()


class LocalGit:
    """The real git-remote source, pointed at a local repository whatever URL the configuration names."""

    kind = "git"

    def __init__(self, path):
        from polling_server.sources.git_remote import GitRemoteSource

        self.path = path
        self.inner = GitRemoteSource()

    def poll(self, repo, cursors, state, reconcile):
        from dataclasses import replace

        return self.inner.poll(replace(repo, url=self.path), cursors, state, reconcile)


class NoBuilder:
    def build(self, *args, **kwargs):
        raise RuntimeError("not in this test")
