"""The poller's apply request against the real helm_api Flask app, served on a loopback port, backed by the
in-process Kubernetes API fake (tests/kube_fake.py): the Job is created in the fake, once per request_id."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

try:  # tests/ is a plain directory today; keep working if it becomes a package
    from tests.kube_fake import KubeFake
except ImportError:
    from kube_fake import KubeFake

from werkzeug.serving import make_server

from helm_api.app import create_app
from polling_server.applies.helm_api_client import ApplySender, HelmApiClient
from polling_server.config import parse_settings
from polling_server.http import HttpClient
from polling_server.metrics import Metrics
from polling_server.planning.model import ChartState
from polling_server.planning.planner import plan_charts
from polling_server.state import StateStore

TOKEN = "e2e-t0ken"
NAMESPACE = "cd"
CRONJOB = "helmsman-cronjob"
REPO = "http://chartmuseum.test"
REQUEST_IDS_ANNOTATION = "helmsman-cd.io/apply-request-ids"

HELMSMAN_CRONJOB = {
    "apiVersion": "batch/v1",
    "kind": "CronJob",
    "metadata": {"name": CRONJOB, "namespace": NAMESPACE, "labels": {"app.kubernetes.io/name": "helmsman"}},
    "spec": {
        "schedule": "0 3 * * *",
        "suspend": True,
        "jobTemplate": {
            "metadata": {"labels": {"app.kubernetes.io/name": "helmsman"}},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "helmsman", "image": "ghcr.io/mkubaczyk/helmsman:v3.17.1",
                                        "command": ["helmsman", "--apply", "-f", "/dss/dss.yaml"]}],
                    },
                },
            },
        },
    },
}


@pytest.fixture
def helm_api_url():
    with KubeFake() as kube:
        kube.add_cronjob(HELMSMAN_CRONJOB)
        app = create_app({"HELM_API_TOKEN": TOKEN, "HELM_API_NAMESPACE": NAMESPACE, "HELM_API_CRONJOB": CRONJOB},
                         api_client=kube.new_api_client(), start_reconciler=False)
        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            yield f"http://127.0.0.1:{server.server_port}", kube
        finally:
            server.shutdown()
            server.server_close()
            app.extensions["helm_api"].reconciler.stop()
            app.extensions["helm_api"].backend.close()


def _settings(tmp_path: Path, url: str, token: str):
    return parse_settings({"state_path": str(tmp_path / "state.db"), "chart_repository": {"url": REPO},
                           "helm_api": {"url": url, "token": token}}, env={})


def _sender(settings, store, client_cls=HelmApiClient):
    return ApplySender(settings, store, Metrics(), client_cls(settings.helm_api, HttpClient(sleep=lambda s: None)))


def _queue_change(store: StateStore):
    store.save_charts(REPO, plan_charts({}, ChartState()), "h0")
    state, _ = store.chart_state(REPO)
    return store.save_charts(REPO, plan_charts({("podinfo", "6.5.0"): "a" * 64}, state), "h1")


class Crash(BaseException):
    pass


class CrashAfterSend(HelmApiClient):
    def request_apply(self, request_id, reason, charts):
        super().request_apply(request_id, reason, charts)
        raise Crash()


def test_apply_request_creates_the_job_in_the_cluster(tmp_path, helm_api_url):
    url, kube = helm_api_url
    settings = _settings(tmp_path, url, TOKEN)
    store = StateStore(settings.state_path)
    record = _queue_change(store)

    [done] = _sender(settings, store).send_due()
    [job] = kube.jobs(NAMESPACE)
    assert done.status == "accepted" and done.job == job["metadata"]["name"] and done.job_state == "running"
    assert record.request_id in job["metadata"]["annotations"][REQUEST_IDS_ANNOTATION]
    assert "podinfo-6.5.0 (added)" in job["metadata"]["annotations"]["helmsman-cd.io/apply-reason"]
    assert job["metadata"]["ownerReferences"][0]["name"] == CRONJOB
    store.close()


def test_crash_after_send_does_not_create_a_second_job(tmp_path, helm_api_url):
    url, kube = helm_api_url
    settings = _settings(tmp_path, url, TOKEN)
    store = StateStore(settings.state_path)
    record = _queue_change(store)
    with pytest.raises(Crash):
        _sender(settings, store, CrashAfterSend).send_due()
    store.close()
    assert len(kube.jobs(NAMESPACE)) == 1

    restarted = StateStore(settings.state_path)
    [done] = _sender(settings, restarted).send_due()  # the same request_id again: the Helm API deduplicates
    [job] = kube.jobs(NAMESPACE)
    assert done.status == "accepted" and done.request_id == record.request_id
    assert done.job == job["metadata"]["name"]
    restarted.close()


def test_wrong_token_is_rejected_until_the_configuration_is_fixed(tmp_path, helm_api_url):
    url, kube = helm_api_url
    wrong = _settings(tmp_path, url, "not-the-token")
    store = StateStore(wrong.state_path)
    _queue_change(store)
    [rejected] = _sender(wrong, store).send_due()
    assert rejected.status == "rejected" and "HTTP 401" in rejected.last_error
    assert kube.jobs(NAMESPACE) == []
    assert _sender(wrong, store).send_due() == []

    [done] = _sender(_settings(tmp_path, url, TOKEN), store).send_due()
    assert done.status == "accepted" and len(kube.jobs(NAMESPACE)) == 1
    store.close()
