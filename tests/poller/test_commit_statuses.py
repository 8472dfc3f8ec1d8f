"""Commit statuses on GitHub, end to end over loopback: the reporter queues them from the state, the outbox sender
POSTs them to a local server that answers like GitHub (the recorded create-status exchange of tests/fixtures), and
the test reads back what GitHub received and what the outbox recorded: pending -> success with the tags, failure only
on the final attempt, superseded -> error, refusals logged once, backoff across a restart, at most one duplicate."""

from __future__ import annotations

import copy
import json
import logging

import pytest

from polling_server.config import parse_settings
from polling_server.notify.reporter import Reporter
from polling_server.notify.sender import BASE_BACKOFF_SECONDS, OutboxSender
from polling_server.sources.github_budget import GitHubBudget
from polling_server.state import StateStore
from tests.fixture_paths import GITHUB
from tests.poller.build_helpers import enqueue
from tests.poller.report_fakes import Answer, Clock, RecordingServer

TOKEN = "ghp_commitStatusT0kenSecret000000000000"  # noqa: S105 - a test value
SHA1 = "3f2a9c1e8b7d" + "a" * 28
SHA2 = "1b2c3d4e5f60" + "b" * 28
RECORDED = json.loads((GITHUB / "rest" / "create-status_normalized-fixture.json").read_text())
CREATED = next(x for x in RECORDED if x["method"] == "post" and x["status"] == 201)
FORBIDDEN = {"message": "Resource not accessible by integration",
             "documentation_url": "https://docs.github.com/rest/commits/statuses#create-a-commit-status"}


def github_answer(received) -> Answer:
    """201 with GitHub's recorded body, the status as it was asked for (like the real API)."""
    body = copy.deepcopy(CREATED["response"])
    body.update({k: v for k, v in received.json().items() if k in ("state", "description", "context", "target_url")})
    return Answer(201, body, {"Location": f"https://api.github.com{received.path}"})


@pytest.fixture
def github():
    server = RecordingServer(github_answer)
    yield server
    server.close()


def make_settings(tmp_path, api_url, **github):
    return parse_settings({
        "state_path": str(tmp_path / "state.db"),
        "github": {"api_url": api_url, "token": TOKEN, **github},
        "http": {"public_url": "https://cd.example.com"},
        "repositories": [
            {"repo": "acme/app", "name": "app", "image": "acme/app"},
            {"repo": "acme/other", "name": "other", "image": "acme/other"},
            {"url": "https://git.example.com/team/lib.git", "name": "lib", "image": "team/lib"},
        ],
    }, env={})


class Rig:
    """The reporter and the outbox sender over one state file, as the daemon wires them."""

    def __init__(self, tmp_path, api_url, clock=None, **github):
        self.tmp_path, self.api_url, self.github = tmp_path, api_url, github
        self.clock = clock or Clock()
        self.settings = make_settings(tmp_path, api_url, **github)
        self.budget = GitHubBudget(600, 10, clock=self.clock)
        self.open()

    def open(self):
        self.store = StateStore(self.settings.state_path, clock=self.clock)
        self.reporter = Reporter(self.settings, self.store, clock=self.clock)
        self.sender = OutboxSender.for_settings(self.settings, self.store, budget=self.budget, clock=self.clock)

    def restart(self):
        """A new process: a new StateStore on the same file, a new sender (nothing kept in memory)."""
        self.store.close()
        self.open()

    def step(self):
        self.reporter.step()
        return self.sender.send_due()

    def statuses(self):
        return [r for r in self.store.outbox("commit_status", limit=1000)][::-1]


def posted(server):
    return [(r.path, r.json()) for r in server.received]


def test_a_build_goes_pending_then_success_with_its_tags(tmp_path, github):
    rig = Rig(tmp_path, github.url)
    build_id = enqueue(rig.store, "app", SHA1)
    rig.step()
    rig.store.claim_build()  # running: still `pending`, not posted again
    rig.step()
    rig.store.finish_build(build_id, ["registry.example.com/acme/app:sha-3f2a9c1e8b7d"], "sha256:" + "1" * 64)
    rig.step()

    path = f"/repos/acme/app/statuses/{SHA1}"
    assert posted(github) == [
        (path, {"state": "pending", "description": "queued", "context": "helmsman-cd/staging",
                "target_url": f"https://cd.example.com/builds/{build_id}"}),
        (path, {"state": "success", "description": "pushed :sha-3f2a9c1e8b7d", "context": "helmsman-cd/staging",
                "target_url": f"https://cd.example.com/builds/{build_id}"}),
    ]
    first = github.received[0]
    assert first.headers["authorization"] == f"Bearer {TOKEN}"
    assert first.headers["accept"] == "application/vnd.github+json"
    assert [r.status for r in rig.statuses()] == ["sent", "sent"]
    assert rig.budget.spent == 10  # two POSTs, five points each, through the token's budget
    rig.step()
    assert len(github.received) == 2  # nothing more to say


def test_release_context_and_a_long_reason_cut_to_140(tmp_path, github):
    rig = Rig(tmp_path, github.url)
    build_id = enqueue(rig.store, "app", SHA1, tag="v1.2.3")
    rig.store.claim_build()
    rig.store.fail_build(build_id, "ImageBuildFailed: step 4/9 " + "x" * 400, retry_in=None)
    rig.step()
    (status,) = [body for _, body in posted(github)]
    assert status["context"] == "helmsman-cd/release" and status["state"] == "failure"
    assert len(status["description"]) == 140 and status["description"].endswith("…")
    assert status["description"].startswith("failed: ImageBuildFailed: step 4/9 xxx")


def test_failure_is_posted_only_for_the_final_attempt(tmp_path, github):
    rig = Rig(tmp_path, github.url)
    build_id = enqueue(rig.store, "app", SHA1, max_attempts=2)
    rig.store.claim_build()
    rig.store.fail_build(build_id, "PushFailed: registry down", retry_in=0)  # queued again: not final
    rig.step()
    assert [b["state"] for _, b in posted(github)] == ["pending"]
    rig.store.claim_build()
    rig.store.fail_build(build_id, "PushFailed: registry down", retry_in=0)  # no attempt left: failed
    rig.step()
    assert [b["state"] for _, b in posted(github)] == ["pending", "failure"]
    assert posted(github)[-1][1]["description"] == "failed after 2 attempts: PushFailed: registry down"


def test_a_superseded_build_ends_in_error_naming_the_newer_commit(tmp_path, github):
    rig = Rig(tmp_path, github.url)
    enqueue(rig.store, "app", SHA1)
    rig.step()
    enqueue(rig.store, "app", SHA2)  # a newer merge overtakes the queued build
    rig.step()
    assert posted(github) == [
        (f"/repos/acme/app/statuses/{SHA1}", {"state": "pending", "description": "queued",
                                               "context": "helmsman-cd/staging",
                                               "target_url": "https://cd.example.com/builds/1"}),
        (f"/repos/acme/app/statuses/{SHA1}", {"state": "error", "description": f"superseded by {SHA2[:7]}",
                                               "context": "helmsman-cd/staging",
                                               "target_url": "https://cd.example.com/builds/1"}),
        (f"/repos/acme/app/statuses/{SHA2}", {"state": "pending", "description": "queued",
                                               "context": "helmsman-cd/staging",
                                               "target_url": "https://cd.example.com/builds/2"}),
    ]


def test_only_the_latest_status_of_a_build_is_sent_when_both_wait(tmp_path, github):
    rig = Rig(tmp_path, github.url)
    build_id = enqueue(rig.store, "app", SHA1)
    rig.reporter.step()  # pending queued, not sent yet
    rig.store.claim_build()
    rig.store.finish_build(build_id, ["r/acme/app:sha-3f2a9c1e8b7d"], "sha256:" + "1" * 64)
    rig.step()
    assert [b["state"] for _, b in posted(github)] == ["success"]  # pending was moot: never sent after success
    assert [r.status for r in rig.statuses()] == ["failed", "sent"]


@pytest.mark.parametrize("status", [403, 404])
def test_a_refusing_repository_is_logged_once_and_not_retried(tmp_path, github, caplog, status):
    github.answer = lambda r: Answer(status, FORBIDDEN if status == 403 else {"message": "Not Found"})
    rig = Rig(tmp_path, github.url)
    enqueue(rig.store, "app", SHA1)
    enqueue(rig.store, "app", SHA2, tag="v1.0.0")
    with caplog.at_level(logging.DEBUG):
        for _ in range(4):
            rig.clock.now += 3600
            rig.step()
    assert len(github.received) == 1  # the second status failed at once: the repository is remembered as refused
    assert [r.status for r in rig.statuses()] == ["failed", "failed"]
    failing = [r for r in caplog.records if getattr(r, "event", None) == "report.failing"]
    assert len(failing) == 1
    text = failing[0].getMessage()
    assert "acme/app" in text and "repo:status" in text and '"Commit statuses: Read and write"' in text
    assert TOKEN not in caplog.text and all(TOKEN not in (r.last_error or "") for r in rig.statuses())
    # Another repository is not affected by that refusal.
    github.answer = github_answer
    enqueue(rig.store, "other", SHA1)
    rig.step()
    assert github.received[-1].path == f"/repos/acme/other/statuses/{SHA1}"


def test_422_fails_for_good_with_githubs_message(tmp_path, github):
    github.answer = lambda r: Answer(422, {"message": "No commit found for SHA: " + SHA1})
    rig = Rig(tmp_path, github.url)
    enqueue(rig.store, "app", SHA1)
    rig.step()
    rig.clock.now += 3600
    rig.step()
    assert len(github.received) == 1
    (row,) = rig.statuses()
    assert row.status == "failed" and "HTTP 422 (No commit found for SHA" in row.last_error


def test_5xx_is_retried_with_backoff_kept_across_a_restart(tmp_path, github):
    github.script(Answer(502, "bad gateway"), Answer(503, {"message": "Service Unavailable"}))
    rig = Rig(tmp_path, github.url)
    enqueue(rig.store, "app", SHA1)
    start = rig.clock.now
    rig.step()
    (row,) = rig.statuses()
    assert row.status == "pending" and row.next_attempt_at == start + BASE_BACKOFF_SECONDS
    assert "HTTP 502" in row.last_error and TOKEN not in row.last_error

    rig.restart()
    rig.sender.send_due()
    assert len(github.received) == 1  # not due yet: the backoff is in the database, not in memory
    rig.clock.now = start + BASE_BACKOFF_SECONDS
    rig.sender.send_due()  # 503: the next delay doubles
    (row,) = rig.statuses()
    assert row.next_attempt_at == rig.clock.now + 2 * BASE_BACKOFF_SECONDS and row.attempts == 2
    rig.restart()
    rig.clock.now += 2 * BASE_BACKOFF_SECONDS
    rig.sender.send_due()
    (row,) = rig.statuses()
    assert row.status == "sent" and len(github.received) == 3


def test_a_secondary_rate_limit_is_waited_out_for_every_repository(tmp_path, github, caplog):
    github.script(Answer(403, {"message": "You have exceeded a secondary rate limit."}, {"Retry-After": "30"}))
    rig = Rig(tmp_path, github.url)
    enqueue(rig.store, "app", SHA1)
    enqueue(rig.store, "other", SHA2)
    start = rig.clock.now
    with caplog.at_level(logging.INFO):
        rig.step()
        for _ in range(3):
            rig.clock.now += 5
            rig.step()
        assert len(github.received) == 1  # the other repository's status waited: the limit belongs to the token
        rows = rig.statuses()
        assert [r.status for r in rows] == ["pending", "pending"]
        assert rows[0].next_attempt_at == start + 30
        assert rig.budget.rate(rig.clock.now) < 10  # penalized: half of 600 points a minute for a while
        rig.clock.now = start + 30
        rig.step()
    assert [r.status for r in rig.statuses()] == ["sent", "sent"] and len(github.received) == 3
    events = [getattr(r, "event", None) for r in caplog.records]
    assert events.count("report.failing") == 1 and events.count("report.recovered") == 1  # one episode


def test_a_crash_mid_send_sends_that_status_once_more_and_no_more(tmp_path, github):
    rig = Rig(tmp_path, github.url)
    enqueue(rig.store, "app", SHA1)
    rig.reporter.step()
    (row,) = rig.store.due_outbox("commit_status")
    # What the sender does, up to the crash: count the attempt, send; the process dies before `outbox_sent`.
    rig.store.outbox_attempted(row.id)
    rig.sender.channels["commit_status"].send(row)
    rig.restart()
    for _ in range(3):
        rig.step()
    assert len(github.received) == 2  # one duplicate, then sent
    (row,) = rig.statuses()
    assert row.status == "sent" and row.attempts == 2


@pytest.mark.parametrize("github_settings", [{"commit_statuses": False}, {"token": None}])
def test_statuses_can_be_off(tmp_path, github, github_settings):
    rig = Rig(tmp_path, github.url, **github_settings)
    enqueue(rig.store, "app", SHA1)
    rig.step()
    assert rig.statuses() == [] and github.received == []


def test_no_status_for_a_repository_that_is_not_on_github(tmp_path, github):
    rig = Rig(tmp_path, github.url)
    enqueue(rig.store, "lib", SHA1)
    rig.step()
    assert rig.statuses() == [] and github.received == []
    assert rig.store.builds_to_report() == []  # marked reported all the same


def test_a_timeout_is_retried_and_names_no_token(tmp_path):
    # A port that nothing listens on: the connection is refused.
    server = RecordingServer()
    url = server.url
    server.close()
    rig = Rig(tmp_path, url)
    enqueue(rig.store, "app", SHA1)
    rig.step()
    (row,) = rig.statuses()
    assert row.status == "pending" and "connection failed" in row.last_error and TOKEN not in row.last_error
