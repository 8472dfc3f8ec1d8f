"""HelmApiClient and ApplySender over `responses`: the exact request posted, what the store records after each
answer of the Helm API, backoff, rejection until the configuration changes, restarts and crashes."""

from __future__ import annotations

import json
import logging
import socket

import pytest
import requests
import responses
from responses import matchers

from polling_server.applies.helm_api_client import (
    MAX_REASON_LENGTH,
    ApplyResult,
    ApplySender,
    HelmApiClient,
    apply_reason,
)
from polling_server.chart_watch import ChartWatcher
from polling_server.config import parse_settings
from polling_server.errors import ApplyRejected, ApplyUnavailable
from polling_server.http import HttpClient
from polling_server.metrics import Metrics
from polling_server.planning.model import ChartChange, ChartState
from polling_server.planning.planner import plan_charts
from polling_server.sources.chart_index import ChartIndexSource
from polling_server.state import StateStore
from tests.fixture_paths import FIXTURES

OPENFAAS = FIXTURES / "helm-index" / "openfaas_faas-netes_docs_index.yaml"

API = "http://helm-api.test"
APPLY_URL = f"{API}/apply"
REPO = "http://chartmuseum.test"
TOKEN = "api-t0ken-secret"


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_settings(tmp_path, url=API, token=TOKEN, **helm_api):
    return parse_settings({
        "state_path": str(tmp_path / "state.db"),
        "chart_repository": {"url": REPO},
        "helm_api": {"url": url, "token": token, **helm_api},
    }, env={})


def make_sender(settings, store):
    client = HelmApiClient(settings.helm_api, HttpClient(sleep=lambda s: None))
    return ApplySender(settings, store, Metrics(), client)


def queue(store, *changes):
    """Record what a chart poll records when it finds `changes` ((name, version, digest)...): one apply request."""
    state, _ = store.chart_state(REPO)
    if not state.baseline:
        store.save_charts(REPO, plan_charts({}, ChartState()), "h0")
        state, _ = store.chart_state(REPO)
    index = dict(state.versions)
    index.update({(n, v): d for n, v, d in changes})
    return store.save_charts(REPO, plan_charts(index, state), f"h{len(index)}")


def answer(job="helmsman-cronjob-apply-1", state="running", status=202, **flags):
    return {"status": status, "json": {"job": job, "namespace": "cd", "state": state, "created": True,
                                       "coalesced": False, "duplicate": False, **flags}}


def posted(call) -> dict:
    return json.loads(call.request.body)


def events(caplog, name):
    return [r for r in caplog.records if getattr(r, "event", None) == name]


@pytest.fixture
def rsps():
    with responses.RequestsMock(assert_all_requests_are_fired=True) as r:
        yield r


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(tmp_path, clock):
    s = StateStore(tmp_path / "state.db", clock=clock)
    yield s
    s.close()


@pytest.fixture(autouse=True)
def _logs(caplog):
    caplog.set_level(logging.DEBUG, logger="polling_server")


# --- accepted ----------------------------------------------------------------------------------------------
def test_202_running_posts_the_exact_body_and_records_the_job(tmp_path, rsps, store, caplog):
    settings = make_settings(tmp_path)
    record = queue(store, ("podinfo", "6.5.0", "a" * 64), ("redis", "v18.0.0-rc.1", "b" * 64))
    rsps.post(APPLY_URL, **answer(), match=[matchers.header_matcher({"Authorization": f"Bearer {TOKEN}"})])
    sender = make_sender(settings, store)
    [done] = sender.send_due()
    assert posted(rsps.calls[0]) == {
        "reason": "chart change: podinfo-6.5.0 (added), redis-v18.0.0-rc.1 (added)",
        "request_id": record.request_id,
        "charts": [
            {"name": "podinfo", "version": "6.5.0", "digest": "a" * 64, "change": "added"},
            {"name": "redis", "version": "v18.0.0-rc.1", "digest": "b" * 64, "change": "added"},
        ],
    }
    assert rsps.calls[0].request.headers["Content-Type"] == "application/json"
    assert (done.status, done.job, done.job_state, done.attempts) == ("accepted", "helmsman-cronjob-apply-1",
                                                                      "running", 1)
    assert store.apply(record.id) == done
    [logged] = events(caplog, "apply.requested")
    assert logged.fields["job"] == "helmsman-cronjob-apply-1" and logged.fields["state"] == "running"
    assert logged.fields["request_id"] == record.request_id
    assert TOKEN not in caplog.text
    assert sender.metrics.applies.labels("accepted")._value.get() == 1
    assert sender.send_due() == []  # accepted: never sent again
    assert len(rsps.calls) == 1


def test_202_queued_and_coalesced(tmp_path, rsps, store, caplog):
    queue(store, ("podinfo", "6.5.0", "a" * 64))
    rsps.post(APPLY_URL, **answer(job="helmsman-cronjob-apply-2", state="queued", coalesced=True))
    [done] = make_sender(make_settings(tmp_path), store).send_due()
    assert (done.status, done.job, done.job_state) == ("accepted", "helmsman-cronjob-apply-2", "queued")
    [logged] = events(caplog, "apply.requested")
    assert logged.fields["state"] == "queued" and logged.fields["coalesced"] is True


def test_client_result_fields(tmp_path, rsps):
    rsps.post(APPLY_URL, **answer(status=200, state="succeeded", duplicate=True))
    client = HelmApiClient(make_settings(tmp_path).helm_api, HttpClient(sleep=lambda s: None))
    result = client.request_apply("rid-1", "chart change: x", [])
    assert result == ApplyResult("helmsman-cronjob-apply-1", "cd", "succeeded", coalesced=False, duplicate=True)


def test_no_token_configured_sends_no_authorization(tmp_path, rsps):
    rsps.post(APPLY_URL, **answer())
    client = HelmApiClient(make_settings(tmp_path, token=None).helm_api, HttpClient(sleep=lambda s: None))
    client.request_apply("rid-1", "r", [])
    assert "Authorization" not in rsps.calls[0].request.headers


# --- unavailable: kept and retried with backoff ------------------------------------------------------------
def test_500_then_202(tmp_path, rsps, store, clock, caplog):
    settings = make_settings(tmp_path)
    record = queue(store, ("podinfo", "6.5.0", "a" * 64))
    rsps.post(APPLY_URL, status=500, json={"error": "internal error"})
    sender = make_sender(settings, store)
    [failed] = sender.send_due()
    assert failed.status == "pending" and failed.attempts == 1 and "HTTP 500" in failed.last_error
    assert failed.next_attempt_at == clock.now + 5.0
    [logged] = events(caplog, "apply.failed")
    assert logged.levelname == "WARNING" and logged.fields["retry_in"] == 5.0
    assert sender.send_due() == []  # not due yet
    assert len(rsps.calls) == 1

    clock.now += 5
    rsps.post(APPLY_URL, **answer())
    [done] = sender.send_due()
    assert done.status == "accepted" and done.attempts == 2 and done.last_error is None
    assert [posted(c)["request_id"] for c in rsps.calls] == [record.request_id] * 2
    assert sender.metrics.applies.labels("unavailable")._value.get() == 1


def test_backoff_is_exponential_and_capped(tmp_path, rsps, store, clock):
    settings = make_settings(tmp_path, retry_backoff_seconds=5, max_backoff_seconds=15)
    queue(store, ("podinfo", "6.5.0", "a" * 64))
    sender = make_sender(settings, store)
    waits = []
    for _ in range(4):
        rsps.post(APPLY_URL, status=503)
        [failed] = sender.send_due()
        waits.append(failed.next_attempt_at - clock.now)
        clock.now = failed.next_attempt_at
    assert waits == [5.0, 10.0, 15.0, 15.0]


def _refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed on exit: nothing listens there


def test_connection_refused_then_202(tmp_path, store, clock):
    url = f"http://127.0.0.1:{_refused_port()}"
    settings = make_settings(tmp_path, url=url)
    record = queue(store, ("podinfo", "6.5.0", "a" * 64))
    sender = make_sender(settings, store)
    [failed] = sender.send_due()  # a real refused connection
    assert failed.status == "pending" and "connection failed" in failed.last_error
    assert TOKEN not in failed.last_error

    clock.now += 60
    with responses.RequestsMock() as rsps:
        rsps.post(f"{url}/apply", **answer())
        [done] = sender.send_due()
        assert posted(rsps.calls[0])["request_id"] == record.request_id
    assert done.status == "accepted"


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 429])
def test_transient_statuses_are_unavailable(tmp_path, rsps, status):
    rsps.post(APPLY_URL, status=status, json={"error": "busy"})
    client = HelmApiClient(make_settings(tmp_path).helm_api, HttpClient(sleep=lambda s: None))
    with pytest.raises(ApplyUnavailable, match=f"HTTP {status}"):
        client.request_apply("rid", "r", [])
    assert len(rsps.calls) == 1  # retried by the durable queue, not by the HTTP layer


@pytest.mark.parametrize("body", [b"<html>proxy</html>", b'{"status": "ok"}'])
def test_a_2xx_that_is_not_a_helm_api_answer_is_unavailable(tmp_path, rsps, body):
    rsps.post(APPLY_URL, status=200, body=body)
    client = HelmApiClient(make_settings(tmp_path).helm_api, HttpClient(sleep=lambda s: None))
    with pytest.raises(ApplyUnavailable, match="without a Job"):
        client.request_apply("rid", "r", [])


# --- rejected: retried only after the configuration changes -------------------------------------------------
@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_refusals_are_rejected_with_status_and_no_token(tmp_path, rsps, status):
    rsps.post(APPLY_URL, status=status, json={"error": "missing or wrong bearer token"})
    client = HelmApiClient(make_settings(tmp_path).helm_api, HttpClient(sleep=lambda s: None))
    with pytest.raises(ApplyRejected) as e:
        client.request_apply("rid", "r", [])
    assert e.value.status == status and f"HTTP {status}" in str(e.value) and TOKEN not in str(e.value)


def test_401_is_loud_and_sent_again_only_after_the_configuration_changes(tmp_path, rsps, store, clock, caplog):
    wrong = make_settings(tmp_path, token="wrong-t0ken")
    record = queue(store, ("podinfo", "6.5.0", "a" * 64))
    rsps.post(APPLY_URL, status=401, json={"error": "missing or wrong bearer token (Authorization: Bearer <token>)"},
              match=[matchers.header_matcher({"Authorization": "Bearer wrong-t0ken"})])
    sender = make_sender(wrong, store)
    [rejected] = sender.send_due()
    assert rejected.status == "rejected" and rejected.rejected_fingerprint == wrong.helm_api.fingerprint()
    assert "HTTP 401" in rejected.last_error
    [logged] = events(caplog, "apply.failed")
    assert logged.levelname == "ERROR" and logged.fields["status"] == 401
    assert "helm_api.token" in logged.getMessage() and "configuration" in logged.getMessage()
    assert "wrong-t0ken" not in caplog.text

    clock.now += 86_400  # a day later, same configuration: still not sent
    assert sender.send_due() == [] and make_sender(wrong, store).send_due() == []
    assert len(rsps.calls) == 1

    fixed = make_settings(tmp_path, token=TOKEN)
    rsps.post(APPLY_URL, **answer(), match=[matchers.header_matcher({"Authorization": f"Bearer {TOKEN}"})])
    [done] = make_sender(fixed, store).send_due()
    assert done.status == "accepted" and done.attempts == 2
    assert [posted(c)["request_id"] for c in rsps.calls] == [record.request_id] * 2


def test_a_new_url_also_counts_as_a_configuration_change(tmp_path, rsps, store):
    queue(store, ("podinfo", "6.5.0", "a" * 64))
    rsps.post(APPLY_URL, status=404, json={"error": "not found"})
    make_sender(make_settings(tmp_path), store).send_due()
    other = "http://helm-api.other.test"
    rsps.post(f"{other}/apply", **answer())
    [done] = make_sender(make_settings(tmp_path, url=other), store).send_due()
    assert done.status == "accepted"


# --- several requests, restarts and crashes ----------------------------------------------------------------
def test_a_failure_stops_the_round_and_later_requests_wait(tmp_path, rsps, store, clock):
    first = queue(store, ("podinfo", "6.5.0", "a" * 64))
    rsps.post(APPLY_URL, status=503)
    sender = make_sender(make_settings(tmp_path), store)
    sender.send_due()
    second = queue(store, ("podinfo", "6.5.1", "b" * 64))  # first was sent once: a new request, not merged
    assert second.id != first.id
    clock.now += 5
    rsps.post(APPLY_URL, **answer(job="j1"))
    rsps.post(APPLY_URL, **answer(job="j2", state="queued", coalesced=True))
    done = sender.send_due()
    assert sorted(r.status for r in done) == ["accepted", "accepted"]
    assert {posted(c)["request_id"] for c in rsps.calls[1:]} == {first.request_id, second.request_id}


def test_long_reasons_are_shortened_but_every_chart_is_sent(tmp_path, rsps, store):
    changes = [(f"chart-with-a-long-name-{i:03d}", f"1.{i}.0", f"{i:064x}") for i in range(80)]
    queue(store, *changes)
    rsps.post(APPLY_URL, **answer())
    make_sender(make_settings(tmp_path), store).send_due()
    body = posted(rsps.calls[0])
    assert len(body["reason"]) <= MAX_REASON_LENGTH < 1024
    assert body["reason"].startswith("chart change: chart-with-a-long-name-000-1.0.0 (added), ")
    assert body["reason"].endswith(" more")
    assert len(body["charts"]) == 80


def test_apply_reason():
    changes = tuple(ChartChange("c", f"1.0.{i}", "d", "added") for i in range(3))
    assert apply_reason(changes) == "chart change: c-1.0.0 (added), c-1.0.1 (added), c-1.0.2 (added)"
    assert apply_reason(changes, limit=45) == "chart change: c-1.0.0 (added), and 2 more"


def _watcher(settings, store):
    http = HttpClient(max_retries=0, sleep=lambda s: None)
    return ChartWatcher(settings, store, Metrics(), ChartIndexSource(settings.chart_repository, http))


def _with_version(text: str, chart: str, version: str, digest: str) -> str:
    # Derived from the real openfaas index: one more version of `chart`, listed first.
    marker = f"\n  {chart}:\n"
    entry = f"  - apiVersion: v2\n    digest: {digest}\n    name: {chart}\n    version: {version}\n"
    assert marker in text
    return text.replace(marker, marker + entry, 1)


def test_restart_between_detection_and_acceptance_applies_once(tmp_path, rsps, clock):
    settings = make_settings(tmp_path)
    text = OPENFAAS.read_text()
    pushed = _with_version(text, "cron-connector", "0.7.0", "a" * 64)
    rsps.get(f"{REPO}/index.yaml", body=text)
    rsps.get(f"{REPO}/index.yaml", body=pushed)
    rsps.post(APPLY_URL, body=requests.ConnectionError("Connection refused"))

    store = StateStore(settings.state_path, clock=clock)
    _watcher(settings, store).poll()
    _watcher(settings, store).poll()
    [pending] = make_sender(settings, store).send_due()
    assert pending.status == "pending"
    store.close()  # the poller stops before the Helm API came back

    clock.now += 3600
    restarted = StateStore(settings.state_path, clock=clock)
    rsps.get(f"{REPO}/index.yaml", body=pushed)
    assert _watcher(settings, restarted).poll() is None  # the change is known: not queued again
    rsps.post(APPLY_URL, **answer())
    sender = make_sender(settings, restarted)
    [done] = sender.send_due()
    assert sender.send_due() == []
    assert done.status == "accepted" and done.request_id == pending.request_id
    assert [(r.status, [c.version for c in r.changes]) for r in restarted.applies()] == [("accepted", ["0.7.0"])]
    answered = [c.response.status_code for c in rsps.calls
                if c.request.method == "POST" and isinstance(c.response, requests.Response)]
    assert answered == [202]
    restarted.close()


class Crash(BaseException):
    """The process dies (after the Helm API got the request, before the answer was recorded)."""


class CrashAfterSend(HelmApiClient):
    def request_apply(self, request_id, reason, charts):
        super().request_apply(request_id, reason, charts)
        raise Crash()


def test_crash_after_send_resends_the_same_request_id(tmp_path, rsps, clock):
    settings = make_settings(tmp_path)
    store = StateStore(settings.state_path, clock=clock)
    record = queue(store, ("podinfo", "6.5.0", "a" * 64))
    rsps.post(APPLY_URL, **answer(job="helmsman-cronjob-apply-7"))
    crashing = ApplySender(settings, store, Metrics(),
                           CrashAfterSend(settings.helm_api, HttpClient(sleep=lambda s: None)))
    with pytest.raises(Crash):
        crashing.send_due()
    store.close()

    restarted = StateStore(settings.state_path, clock=clock)
    interrupted = restarted.apply(record.id)
    assert interrupted.status == "pending" and interrupted.attempts == 1  # attempted, not recorded as accepted
    # The Helm API holds a Job for that request id already: it answers it as a duplicate.
    rsps.post(APPLY_URL, **answer(job="helmsman-cronjob-apply-7", status=200, duplicate=True))
    [done] = make_sender(settings, restarted).send_due()
    assert [posted(c)["request_id"] for c in rsps.calls] == [record.request_id] * 2
    assert posted(rsps.calls[0]) == posted(rsps.calls[1])
    assert (done.status, done.job) == ("accepted", "helmsman-cronjob-apply-7")
    restarted.close()


def test_several_charts_in_one_poll_make_one_post(tmp_path, rsps, clock):
    settings = make_settings(tmp_path)
    text = OPENFAAS.read_text()
    changed = _with_version(_with_version(text, "cron-connector", "0.7.0", "a" * 64), "mqtt-connector", "0.5.0",
                            "b" * 64)
    rsps.get(f"{REPO}/index.yaml", body=text)
    rsps.get(f"{REPO}/index.yaml", body=changed)
    rsps.post(APPLY_URL, **answer())
    store = StateStore(settings.state_path, clock=clock)
    _watcher(settings, store).poll()
    _watcher(settings, store).poll()
    make_sender(settings, store).send_due()
    [post] = [c for c in rsps.calls if c.request.method == "POST"]
    body = posted(post)
    assert {(c["name"], c["version"]) for c in body["charts"]} == {("cron-connector", "0.7.0"),
                                                                   ("mqtt-connector", "0.5.0")}
    assert "cron-connector-0.7.0 (added)" in body["reason"] and "mqtt-connector-0.5.0 (added)" in body["reason"]
    store.close()


def test_request_body_lists_at_most_500_charts_and_the_reason_counts_all():
    from polling_server.applies.helm_api_client import apply_charts, apply_reason

    changes = tuple(ChartChange("app", f"1.0.{i}", "d", "added") for i in range(600))
    assert len(apply_charts(changes)) == 500
    reason = apply_reason(changes)
    assert len(reason) <= 1000 and "more" in reason
