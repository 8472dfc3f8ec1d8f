"""Notifications end to end over loopback (Slack and a JSON webhook as local servers recording what they receive),
the pure rules of messages.py as a table, following apply Jobs against a local fake of helm-api's
`GET /apply/<job>`, and the daemon's wiring (nothing is reported or sent in a dry run)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re

import pytest

from polling_server.applies.helm_api_client import HelmApiClient
from polling_server.applies.job_follow import ApplyFollower
from polling_server.config import NOTIFICATION_EVENTS, parse_settings
from polling_server.daemon import Daemon
from polling_server.errors import ConfigError
from polling_server.notify import messages
from polling_server.notify.reporter import REPORT_MAX_AGE_SECONDS, Reporter
from polling_server.notify.sender import BASE_BACKOFF_SECONDS, OutboxSender
from polling_server.planning.model import BuildKind, BuildStatus, ChartChange, ChartState
from polling_server.planning.planner import plan_charts
from polling_server.state import BuildRecord, StateStore
from tests.fixture_paths import FIXTURES
from tests.poller.build_helpers import enqueue
from tests.poller.report_fakes import Answer, Clock, RecordingServer

SLACK_PATH = "/services/T0001/B0001/sl4ckHookSecretPath"
SIGNING_SECRET = "json-signing-s3cret"  # noqa: S105 - a test value
REGISTRY_PASSWORD = "registry-pa55word-secret"  # noqa: S105 - a test value
SLACK_FIXTURE = json.loads((FIXTURES / "slack" / "incoming_webhook_request_text_api-slack-docs.json").read_text())
SHA1 = "3f2a9c1e8b7d" + "a" * 28
SHA2 = "1b2c3d4e5f60" + "b" * 28
CHART_REPO = "http://127.0.0.1:9/charts"  # loopback, nothing listens: never polled for real


@pytest.fixture
def slack():
    server = RecordingServer(lambda r: Answer(200, "ok"))
    yield server
    server.close()


@pytest.fixture
def webhook():
    """Answers 204 to a body whose X-Signature-256 is right, 401 otherwise (as a careful receiver would)."""
    def answer(received):
        expected = "sha256=" + hmac.new(SIGNING_SECRET.encode(), received.body, hashlib.sha256).hexdigest()
        good = hmac.compare_digest(received.headers.get("x-signature-256", ""), expected)
        return Answer(204 if good else 401, b"")
    server = RecordingServer(answer)
    yield server
    server.close()


def make_settings(tmp_path, targets, helm_api=None, **extra):
    data = {
        "state_path": str(tmp_path / "state.db"),
        "http": {"enabled": False, "public_url": "https://cd.example.com"},
        "registry": {"host": "registry.example.com", "username": "ci", "password": REGISTRY_PASSWORD},
        "repositories": [{"repo": "acme/app", "name": "app", "image": "acme/app"}],
        "notifications": targets,
        **extra,
    }
    if helm_api:
        data["chart_repository"] = {"url": CHART_REPO}
        data["helm_api"] = {"url": helm_api, "token": "helm-api-t0ken"}
    return parse_settings(data, env={})


def slack_target(server, events, name="team-chat"):
    return {"name": name, "url": server.url + SLACK_PATH, "format": "slack", "events": events}


class Rig:
    def __init__(self, tmp_path, targets, clock=None, **kwargs):
        self.clock = clock or Clock()
        self.settings = make_settings(tmp_path, targets, **kwargs)
        self.open()

    def open(self):
        self.store = StateStore(self.settings.state_path, clock=self.clock)
        self.reporter = Reporter(self.settings, self.store, clock=self.clock)
        self.sender = OutboxSender.for_settings(self.settings, self.store, clock=self.clock)

    def step(self):
        self.reporter.step()
        return self.sender.send_due()

    def notifications(self):
        return self.store.outbox("notification", limit=1000)[::-1]


def succeed(store, build_id):
    store.claim_build()
    store.finish_build(build_id, ["registry.example.com/acme/app:sha-3f2a9c1e8b7d"], "sha256:" + "1" * 64)


# --- Slack ----------------------------------------------------------------------------------------------------
def test_slack_gets_a_short_message_for_the_events_it_asked_for(tmp_path, slack):
    rig = Rig(tmp_path, [slack_target(slack, ["build.succeeded", "build.failed"])])
    build_id = enqueue(rig.store, "app", SHA1)
    rig.step()
    assert slack.received == []  # build.planned was not asked for
    succeed(rig.store, build_id)
    rig.step()
    (got,) = slack.received
    assert got.method == "POST" and got.path == SLACK_PATH
    assert got.headers["content-type"] == "application/json"
    body = got.json()
    assert set(SLACK_FIXTURE) <= set(body)  # the documented shape: a `text`, here with short blocks beside it
    assert body["text"] == (f":white_check_mark: app: staging build of master #{build_id} at 3f2a9c1 succeeded, "
                            "pushed registry.example.com/acme/app:sha-3f2a9c1e8b7d "
                            f"<https://cd.example.com/builds/{build_id}|details>")
    assert body["blocks"][0]["text"]["text"] == body["text"]
    assert [r.status for r in rig.notifications()] == ["sent"]
    rig.step()
    assert len(slack.received) == 1


def test_slack_text_is_escaped_and_secrets_are_masked(tmp_path, slack):
    rig = Rig(tmp_path, [slack_target(slack, ["build.failed"])])
    build_id = enqueue(rig.store, "app", SHA1)
    rig.store.claim_build()
    rig.store.fail_build(build_id, f"PushFailed: <!channel> auth with {REGISTRY_PASSWORD} refused", retry_in=None)
    rig.step()
    text = slack.received[0].json()["text"]
    assert "&lt;!channel&gt;" in text and "<!channel>" not in text
    assert REGISTRY_PASSWORD not in slack.received[0].body.decode() and "***" in text


@pytest.mark.parametrize(("status", "body", "outcome"), [
    (400, "invalid_payload", "failed"),
    (403, "action_prohibited", "failed"),
    (404, "channel_not_found", "failed"),
    (410, "channel_is_archived", "failed"),
    (200, "invalid_token", "pending"),  # 200 without `ok`: not delivered; tried again later
    (500, "rollup_error", "pending"),
    (503, "service_unavailable", "pending"),  # with Retry-After: 7, obeyed as for a 429
    (429, "rate_limited", "pending"),
])
def test_slack_answers_other_than_ok_are_failures(tmp_path, slack, caplog, status, body, outcome):
    slack.answer = lambda r: Answer(status, body, {"Retry-After": "7"} if status in (429, 503) else None)
    rig = Rig(tmp_path, [slack_target(slack, ["build.planned"])])
    enqueue(rig.store, "app", SHA1)
    with caplog.at_level(logging.INFO):
        rig.step()
    (row,) = rig.notifications()
    assert row.status == outcome
    assert str(status) in row.last_error
    assert body in row.last_error  # Slack's own code, a 5xx's included
    if status in (429, 503):
        assert row.next_attempt_at == rig.clock.now + 7
    elif outcome == "pending":
        assert row.next_attempt_at == rig.clock.now + BASE_BACKOFF_SECONDS
    # The URL is the secret: only its scheme and host are ever shown.
    for text in (caplog.text, row.last_error):
        assert SLACK_PATH not in text and "sl4ckHookSecretPath" not in text
    assert slack.url in row.last_error


def test_a_failing_target_is_logged_once_per_episode(tmp_path, slack, caplog):
    slack.answer = lambda r: Answer(503, "service unavailable")
    rig = Rig(tmp_path, [slack_target(slack, ["build.planned"])])
    enqueue(rig.store, "app", SHA1)
    enqueue(rig.store, "app", SHA2, tag="v1.0.0")
    with caplog.at_level(logging.INFO):
        for _ in range(4):
            rig.step()
            rig.clock.now += 3600
        slack.answer = lambda r: Answer(200, "ok")
        rig.step()
        rig.step()
    events = [getattr(r, "event", None) for r in caplog.records]
    assert events.count("report.failing") == 1 and events.count("report.recovered") == 1
    assert [r.status for r in rig.notifications()] == ["sent", "sent"]
    assert SLACK_PATH not in caplog.text


def test_an_unreachable_target_names_only_scheme_and_host(tmp_path, caplog):
    server = RecordingServer()
    url = server.url
    server.close()
    rig = Rig(tmp_path, [{"name": "chat", "url": url + SLACK_PATH, "events": ["build.planned"]}])
    enqueue(rig.store, "app", SHA1)
    with caplog.at_level(logging.INFO):
        rig.step()
    (row,) = rig.notifications()
    assert row.status == "pending" and url in row.last_error
    assert SLACK_PATH not in row.last_error and SLACK_PATH not in caplog.text


# --- JSON webhook ---------------------------------------------------------------------------------------------
def test_json_webhook_is_signed_and_carries_a_stable_id(tmp_path, webhook):
    rig = Rig(tmp_path, [{"name": "audit", "url": webhook.url + "/hook", "format": "json", "secret": SIGNING_SECRET,
                          "events": ["build.planned", "build.superseded"]}])
    enqueue(rig.store, "app", SHA1)
    rig.step()
    enqueue(rig.store, "app", SHA2)
    rig.step()
    assert [r.status for r in rig.notifications()] == ["sent", "sent", "sent"]  # the server checked each signature
    bodies = [r.json() for r in webhook.received]
    assert [(b["event"], b["build"]) for b in bodies] == [("build.planned", 1), ("build.superseded", 1),
                                                           ("build.planned", 2)]
    superseded = bodies[1]
    assert superseded["id"] == "notify:audit:1:build.superseded"
    assert superseded["sha"] == SHA1 and superseded["superseded_by_sha"] == SHA2
    assert superseded["url"] == "https://cd.example.com/builds/1"
    assert webhook.received[0].headers["x-helmsman-cd-event"] == "build.planned"
    assert SIGNING_SECRET not in b"".join(r.body for r in webhook.received).decode()


def test_json_webhook_without_secret_is_unsigned_and_a_wrong_secret_is_refused(tmp_path, webhook):
    rig = Rig(tmp_path, [
        {"name": "plain", "url": webhook.url + "/a", "format": "json", "events": ["build.planned"]},
        {"name": "wrong", "url": webhook.url + "/b", "format": "json", "secret": "not-it",
         "events": ["build.planned"]},
    ])
    enqueue(rig.store, "app", SHA1)
    rig.step()
    assert all("x-signature-256" not in r.headers for r in webhook.received if r.path == "/a")
    assert {r.target: r.status for r in rig.notifications()} == {"plain": "failed", "wrong": "failed"}  # both 401


def test_crash_mid_send_repeats_a_notification_once(tmp_path, webhook):
    rig = Rig(tmp_path, [{"name": "audit", "url": webhook.url + "/hook", "format": "json", "secret": SIGNING_SECRET,
                          "events": ["build.planned"]}])
    enqueue(rig.store, "app", SHA1)
    rig.reporter.step()
    (row,) = rig.store.due_outbox("notification")
    rig.store.outbox_attempted(row.id)
    rig.sender.channels["notification"].send(row)  # delivered, then the process died before recording it
    rig.store.close()
    rig.open()
    for _ in range(3):
        rig.step()
    assert [r.json()["id"] for r in webhook.received] == ["notify:audit:1:build.planned"] * 2  # receiver dedupes
    assert rig.notifications()[0].status == "sent"


# --- other events ---------------------------------------------------------------------------------------------
def test_release_awaiting_approval_then_rejected(tmp_path, slack):
    from polling_server.planning.model import BuildRequest, RepoPlan, RepoState

    rig = Rig(tmp_path, [slack_target(slack, ["release.awaiting_approval", "release.rejected"])])
    plan = RepoPlan((BuildRequest("app", BuildKind.RELEASE, "v2.0.0", SHA1, "2.0.0", gated=True),),
                    RepoState(True, SHA1, {"v2.0.0": SHA1}), ())
    rig.store.save_poll("app", plan)
    rig.step()
    rig.store.decide_gated("app", "v2.0.0", "alice", approve=False, reason="not this week")
    rig.step()
    texts = [r.json()["text"] for r in slack.received]
    assert "awaits approval: polling-server approve --repo app --tag v2.0.0" in texts[0]
    assert "was rejected: rejected by alice: not this week" in texts[1] and len(texts) == 2


def test_a_rollback_is_notified_once(tmp_path, slack):
    rig = Rig(tmp_path, [slack_target(slack, ["rollback"])])
    build_id = enqueue(rig.store, "app", SHA1)
    succeed(rig.store, build_id)
    rig.store.record_rollback("app", "staging", "alice", None, rig.store.build(build_id), "sha256:" + "1" * 64)
    for _ in range(3):
        rig.step()
    (got,) = slack.received
    assert ":staging rolled back to 3f2a9c1 (build #1) by alice" in got.json()["text"]


def test_changes_older_than_a_day_are_marked_reported_without_a_message(tmp_path, slack, caplog):
    clock = Clock()
    rig = Rig(tmp_path, [slack_target(slack, ["build.succeeded"])], clock=clock)
    build_id = enqueue(rig.store, "app", SHA1)
    succeed(rig.store, build_id)
    clock.now += REPORT_MAX_AGE_SECONDS + 60  # e.g. a build from before reporting was turned on
    with caplog.at_level(logging.INFO):
        rig.step()
    assert slack.received == [] and rig.store.builds_to_report() == []
    assert any(getattr(r, "event", None) == "report.skipped" for r in caplog.records)


# --- following apply Jobs -------------------------------------------------------------------------------------
def accepted_apply(store, job="helmsman-cronjob-3f2a9c1b7e", state="running"):
    store.save_charts(CHART_REPO, plan_charts({}, ChartState()), "h0")
    base, _ = store.chart_state(CHART_REPO)
    record = store.save_charts(CHART_REPO, plan_charts({("web", "1.4.2"): "sha256:d1"}, base), "h1")
    store.apply_attempted(record.id)
    store.apply_accepted(record.id, job, state)
    return store.apply(record.id)


@pytest.fixture
def helm_api():
    """helm-api's `GET /apply/<job>`: the states set in `jobs`; 404 `{"error", "job"}` for a Job it has not."""
    jobs: dict[str, str] = {}

    def answer(received):
        name = received.path.rsplit("/", 1)[-1]
        if received.headers.get("authorization") != "Bearer helm-api-t0ken":
            return Answer(401, {"error": "missing or invalid bearer token"})
        if name in jobs:
            return Answer(200, {"job": name, "namespace": "cd", "state": jobs[name], "origin": "apply"})
        return Answer(404, {"error": f"no run {name} of CronJob helmsman-cronjob in namespace cd", "job": name})
    server = RecordingServer(answer)
    server.jobs = jobs
    yield server
    server.close()


def test_an_apply_is_followed_until_its_job_ends_and_the_end_is_notified(tmp_path, helm_api, slack):
    rig = Rig(tmp_path, [slack_target(slack, ["apply.requested", "apply.job_succeeded", "apply.job_failed"])],
              helm_api=helm_api.url)
    follower = ApplyFollower(rig.settings, rig.store)
    record = accepted_apply(rig.store)
    helm_api.jobs[record.job] = "running"
    assert follower.follow() == []  # still running: nothing changed
    rig.step()
    helm_api.jobs[record.job] = "succeeded"
    (changed,) = follower.follow()
    assert changed.job_state == "succeeded" and rig.store.apply(record.id).job_state == "succeeded"
    rig.step()
    asked = len(helm_api.received)
    follower.follow()
    assert len(helm_api.received) == asked  # ended: no longer followed
    assert helm_api.received[0].path == f"/apply/{record.job}"
    texts = [r.json()["text"] for r in slack.received]
    assert texts == [
        ":rocket: helmsman apply requested: Job helmsman-cronjob-3f2a9c1b7e running (web-1.4.2 (added)) "
        "<https://cd.example.com/|details>",
        ":white_check_mark: helmsman Job helmsman-cronjob-3f2a9c1b7e succeeded (web-1.4.2 (added)) "
        "<https://cd.example.com/|details>",
    ]


def test_a_job_gone_before_it_was_seen_to_end_is_unknown(tmp_path, helm_api, webhook):
    rig = Rig(tmp_path, [{"name": "audit", "url": webhook.url + "/h", "format": "json", "secret": SIGNING_SECRET,
                          "events": ["apply.job_unknown", "apply.job_failed"]}], helm_api=helm_api.url)
    record = accepted_apply(rig.store)
    ApplyFollower(rig.settings, rig.store).follow()
    assert rig.store.apply(record.id).job_state == "unknown"
    rig.step()
    (got,) = webhook.received
    assert got.json()["event"] == "apply.job_unknown" and got.json()["job"] == record.job


def test_a_404_that_is_not_about_the_job_leaves_it_followed_and_is_logged_once(tmp_path, caplog):
    server = RecordingServer(lambda r: Answer(404, {"error": "CronJob cd/helmsman-cronjob not found"}))
    try:
        rig = Rig(tmp_path, [], helm_api=server.url)
        record = accepted_apply(rig.store)
        follower = ApplyFollower(rig.settings, rig.store, HelmApiClient(rig.settings.helm_api))
        with caplog.at_level(logging.INFO):
            follower.follow()
            follower.follow()
        assert rig.store.apply(record.id).job_state == "running" and len(server.received) == 2
        assert [getattr(r, "event", None) for r in caplog.records].count("apply.follow_failed") == 1
        assert "helm-api-t0ken" not in caplog.text
    finally:
        server.close()


def test_an_apply_refused_for_good_is_notified_once(tmp_path, slack):
    rig = Rig(tmp_path, [slack_target(slack, ["apply.failed"])], helm_api="http://127.0.0.1:9")
    rig.store.save_charts(CHART_REPO, plan_charts({}, ChartState()), "h0")
    base, _ = rig.store.chart_state(CHART_REPO)
    record = rig.store.save_charts(CHART_REPO, plan_charts({("web", "1.4.2"): "sha256:d1"}, base), "h1")
    rig.store.apply_rejected(record.id, "POST http://helm-api/apply: answered HTTP 401 (check helm_api.token)", "f1")
    for _ in range(3):
        rig.step()
    (got,) = slack.received
    assert "the Helm API refused the apply request (web-1.4.2 (added))" in got.json()["text"]


# --- the pure rules ---------------------------------------------------------------------------------------------
def record(status, *, id=1, sha=SHA1, attempts=1, error=None, superseded_by=None, kind=BuildKind.STAGING,
           ref="master", tags=()):
    return BuildRecord(id=id, repo="app", kind=kind, ref=ref, sha=sha, version=None, status=status,
                       attempts=attempts, max_attempts=3, next_attempt_at=0.0, error=error, pushed_tags=tags,
                       digest=None, superseded_by=superseded_by, created_at=1.0, started_at=None, finished_at=None)


@pytest.mark.parametrize(("status", "previous", "state", "key", "event"), [
    (BuildStatus.QUEUED, None, "pending", "status:1:pending", "build.planned"),
    (BuildStatus.RUNNING, "queued", "pending", "status:1:pending", "build.planned"),
    (BuildStatus.QUEUED, "running", "pending", "status:1:pending", "build.planned"),  # a retry: the same key
    (BuildStatus.AWAITING_APPROVAL, None, "pending", "status:1:awaiting_approval", "release.awaiting_approval"),
    (BuildStatus.SUCCEEDED, "running", "success", "status:1:succeeded", "build.succeeded"),
    (BuildStatus.FAILED, "running", "failure", "status:1:failed", "build.failed"),
    (BuildStatus.SUPERSEDED, "queued", "error", "status:1:superseded", "build.superseded"),
    (BuildStatus.REJECTED, "awaiting_approval", "error", "status:1:rejected", "release.rejected"),
    (BuildStatus.SUPERSEDED, "failed", None, None, None),  # its failure stands: nothing more to say
])
def test_what_a_build_status_reports(tmp_path, status, previous, state, key, event):
    settings = make_settings(tmp_path, [{"name": "all", "url": "https://hooks.example.com/x", "format": "json",
                                         "events": list(NOTIFICATION_EVENTS)}], github={"token": "t"})
    superseded = status is BuildStatus.SUPERSEDED
    newer = record(BuildStatus.QUEUED, id=2, sha=SHA2) if superseded else None
    items = messages.build_items(settings, record(status, superseded_by=2 if superseded else None), previous,
                                 newer, settings.repository("app"))
    statuses = [i for i in items if i.channel == messages.COMMIT_STATUS]
    notes = [i for i in items if i.channel == messages.NOTIFICATION]
    assert [(s.payload["state"], s.dedupe_key) for s in statuses] == ([(state, key)] if state else [])
    assert [n.payload["event"] for n in notes] == ([event] if event else [])
    assert [n.dedupe_key for n in notes] == ([f"notify:all:1:{event}"] if event else [])


def test_a_build_superseded_by_one_of_the_same_commit_posts_no_status(tmp_path):
    settings = make_settings(tmp_path, [], github={"token": "t"})
    items = messages.build_items(settings, record(BuildStatus.SUPERSEDED, superseded_by=2), "queued",
                                 record(BuildStatus.QUEUED, id=2), settings.repository("app"))
    assert items == []  # the newer build reports on that commit itself


def test_event_names_are_one_vocabulary():
    assert tuple(messages.EVENTS) == NOTIFICATION_EVENTS


@pytest.mark.parametrize(("targets", "error"), [
    ([{"url": "https://hooks.example.com/a", "events": ["build.failled"]}], "unknown event 'build.failled'"),
    ([{"name": "x", "url": "https://hooks.example.com/a"}, {"name": "x", "url": "https://hooks.example.com/b"}],
     "notifications[1].name: another notification target is called 'x'"),
])
def test_notification_config_mistakes_are_refused(tmp_path, targets, error):
    with pytest.raises(ConfigError, match=re.escape(error)):
        make_settings(tmp_path, targets)


def test_apply_messages_describe_the_charts(tmp_path):
    settings = make_settings(tmp_path, [{"name": "n", "url": "https://hooks.example.com/a", "format": "json",
                                         "events": ["apply.job_failed"]}])
    from polling_server.state import ApplyRecord

    apply = ApplyRecord(7, "r1", (ChartChange("web", "1.4.2", "d", "added"),), "accepted", 1, 0.0, None, None,
                        "job-1", "failed", 1.0, 2.0)
    (item,) = messages.apply_items(settings, apply, 3.0)
    assert item.dedupe_key == "notify:n:apply:7:apply.job_failed"
    assert item.payload["summary"] == "helmsman Job job-1 failed (web-1.4.2 (added))"
    assert item.payload["charts"] == ["web-1.4.2 (added)"]


# --- the daemon's wiring --------------------------------------------------------------------------------------
def test_a_dry_run_reports_and_sends_nothing(tmp_path, slack):
    settings = make_settings(tmp_path, [slack_target(slack, list(NOTIFICATION_EVENTS))],
                             helm_api="http://127.0.0.1:9", repositories=[])
    daemon = Daemon(settings, dry_run=True)
    assert daemon.reporter is None and daemon.outbox_sender is None and daemon.apply_follower is None
    daemon.start()
    try:
        jobs = {j.id for j in daemon.scheduler.get_jobs()}
    finally:
        daemon.stop()
    assert not jobs & {"report", "send-reports", "follow-applies"}
    assert slack.received == []


def test_the_daemon_schedules_reporting_sending_and_following(tmp_path, slack):
    settings = make_settings(tmp_path, [slack_target(slack, ["build.planned"])], helm_api="http://127.0.0.1:9",
                             repositories=[])
    daemon = Daemon(settings, builder=object())
    daemon.start()
    try:
        jobs = {j.id for j in daemon.scheduler.get_jobs()}
    finally:
        daemon.stop()
    assert {"report", "send-reports", "follow-applies"} <= jobs


def test_a_sender_bug_fails_its_row_instead_of_blocking_the_channel(tmp_path, slack):
    rig = Rig(tmp_path, [slack_target(slack, ["build.planned"])])
    enqueue(rig.store, "app", SHA1)
    enqueue(rig.store, "app", SHA2, tag="v1.0.0")
    rig.reporter.step()
    real = rig.sender.channels["notification"]

    class BrokenOnce:
        calls = 0

        def send(self, row):
            BrokenOnce.calls += 1
            if BrokenOnce.calls == 1:
                raise KeyError("summary")
            real.send(row)

    sender = OutboxSender(rig.store, {"notification": BrokenOnce()}, clock=rig.clock)
    sender.send_due()
    rig.clock.now += 3600
    sender.send_due()
    assert [r.status for r in rig.notifications()] == ["failed", "sent"]
    assert rig.notifications()[0].last_error == "internal error: KeyError"
