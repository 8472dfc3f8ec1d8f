"""Every error path answers JSON {"error": ...} with the right status; library exceptions never leak."""

from __future__ import annotations

import logging
import socket

import pytest
from helm_api_testing import AUTH, CRONJOB, NAMESPACE
from kubernetes import client as k8s

from helm_api.errors import HelmApiError
from helm_api.kube import KubernetesBackend

CRONJOB_PATH = f"/cronjobs/{CRONJOB}"
JOBS_PATH = f"/namespaces/{NAMESPACE}/jobs"


def assert_clean_error(answer, status: int) -> dict:
    assert answer.status_code == status, answer.get_data(as_text=True)
    assert answer.is_json
    body = answer.get_json()
    assert isinstance(body["error"], str) and body["error"]
    text = answer.get_data(as_text=True)
    for leak in ("Traceback", "ApiException", "urllib3", "HTTPResponse", "kubernetes.client"):
        assert leak not in text
    return body


def dead_api_client() -> k8s.ApiClient:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    configuration = k8s.Configuration(host=f"http://127.0.0.1:{port}")
    configuration.retries = 0
    return k8s.ApiClient(configuration)


@pytest.mark.parametrize(
    ("method", "path", "permission"),
    [
        ("GET", CRONJOB_PATH, f"get cronjobs.batch {CRONJOB} in namespace {NAMESPACE}"),
        ("GET", JOBS_PATH, f"list jobs.batch in namespace {NAMESPACE}"),
        ("POST", JOBS_PATH, f"create jobs.batch in namespace {NAMESPACE}"),
    ],
)
def test_forbidden_names_the_missing_permission(client, kube, cronjob, method, path, permission):
    kube.fail_next(403, method=method, path=path)
    body = assert_clean_error(client.post("/apply", headers=AUTH), 502)
    assert body["permission"] == permission
    assert permission in body["error"]


def test_forbidden_patch_names_the_permission(app, client, kube, cronjob):
    running = client.post("/apply", headers=AUTH).get_json()["job"]
    client.post("/apply", headers=AUTH)
    kube.complete_job(running, NAMESPACE)
    kube.fail_next(403, method="PATCH")
    body = assert_clean_error(client.get("/apply", headers=AUTH), 502)
    assert body["permission"] == f"patch jobs.batch in namespace {NAMESPACE}"


@pytest.mark.parametrize("status", [500, 502, 503, 504, 429, 401])
@pytest.mark.parametrize(("method", "path"), [("GET", CRONJOB_PATH), ("GET", JOBS_PATH), ("POST", JOBS_PATH)])
def test_api_server_failures_are_503(client, kube, cronjob, status, method, path):
    kube.fail_next(status, method=method, path=path)
    assert_clean_error(client.post("/apply", headers=AUTH), 503)
    assert client.post("/apply", headers=AUTH).status_code == 202  # the next call works again


@pytest.mark.parametrize("status", [400, 405, 415, 422])
def test_other_api_answers_are_502(client, kube, cronjob, status):
    kube.fail_next(status, method="POST", path=JOBS_PATH)
    body = assert_clean_error(client.post("/apply", headers=AUTH), 502)
    assert f"HTTP {status}" in body["error"]


def test_missing_cronjob_is_404_naming_namespace_and_name(make_app):
    client = make_app().test_client()
    body = assert_clean_error(client.post("/apply", headers=AUTH), 404)
    assert CRONJOB in body["error"] and NAMESPACE in body["error"]
    assert (body["namespace"], body["cronjob"]) == (NAMESPACE, CRONJOB)
    ready = assert_clean_error(client.get("/readyz"), 503)
    assert ready["failed"] == "cronjob" and CRONJOB in ready["error"]


def test_non_batch_v1_cronjob_is_refused(client, kube, cronjob):
    kube.cronjobs[(NAMESPACE, CRONJOB)]["apiVersion"] = "batch/v1beta1"
    body = assert_clean_error(client.post("/apply", headers=AUTH), 502)
    assert "batch/v1" in body["error"]
    assert kube.posted_jobs() == []


@pytest.mark.parametrize("path", ["/apply", "/readyz"])
def test_connection_refused_is_503(make_app, cronjob, path):
    app = make_app(api_client=dead_api_client())
    client = app.test_client()
    method = client.post if path == "/apply" else client.get
    body = assert_clean_error(method(path, headers=AUTH), 503)
    assert "cannot reach the Kubernetes API server" in body["error"]
    assert assert_clean_error(client.get("/apply", headers=AUTH), 503)


def test_readyz(client, kube, cronjob):
    answer = client.get("/readyz")
    assert answer.status_code == 200
    assert answer.get_json()["ready"] is True
    kube.fail_next(503, path="/version")
    body = assert_clean_error(client.get("/readyz"), 503)
    assert body["failed"] == "apiserver"
    assert body["checks"]["cronjob"] == "not checked"
    kube.fail_next(403, path=CRONJOB_PATH)
    body = assert_clean_error(client.get("/readyz"), 503)
    assert body["failed"] == "cronjob" and "get cronjobs.batch" in body["error"]


@pytest.mark.parametrize(
    ("data", "content_type", "message"),
    [
        ("not json", "application/json", "not JSON"),
        ("{", "text/plain", "not JSON"),
        ("[1, 2]", "application/json", "JSON object"),
        ('{"reason": 5}', "application/json", "reason must be a string"),
        ('{"reason": ["a"]}', "application/json", "reason must be a string"),
        ('{"reason": "' + "x" * 1025 + '"}', "application/json", "too long"),
        ('{"request_id": 7}', "application/json", "request_id"),
        ('{"request_id": ""}', "application/json", "request_id"),
        ('{"request_id": "' + "r" * 201 + '"}', "application/json", "too long"),
    ],
)
def test_bad_body_is_400(client, kube, cronjob, data, content_type, message):
    body = assert_clean_error(client.post("/apply", data=data, content_type=content_type, headers=AUTH), 400)
    assert message in body["error"]
    assert kube.posted_jobs() == []


def test_oversized_body_is_refused_unread(client, kube, cronjob):
    huge = '{"reason": "' + "x" * (2 * 1024 * 1024) + '"}'
    body = assert_clean_error(client.post("/apply", data=huge, content_type="application/json", headers=AUTH), 413)
    assert body["error"]
    assert kube.posted_jobs() == []


@pytest.mark.parametrize("opening", ["[", '{"a":'])
def test_deeply_nested_body_is_400_not_a_traceback(client, kube, cronjob, caplog, opening):
    closing = "]" if opening == "[" else "}"
    deep = opening * 100_000 + "1" + closing * 100_000  # well under the 1 MiB body limit
    body = assert_clean_error(client.post("/apply", data=deep, content_type="application/json", headers=AUTH), 400)
    assert "nested too deeply" in body["error"]
    assert kube.posted_jobs() == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


@pytest.mark.parametrize("query", ["limit=abc", "limit=0", "limit=100000"])
def test_bad_limit_is_400(client, cronjob, query):
    assert_clean_error(client.get(f"/apply?{query}", headers=AUTH), 400)


def test_unknown_routes_and_methods_are_json(client):
    assert_clean_error(client.get("/nope"), 404)
    assert_clean_error(client.delete("/apply", headers=AUTH), 405)


def test_an_unexpected_bug_is_a_json_500(app, client, cronjob):
    def broken(selector):
        raise RuntimeError("bug with secret details")

    app.extensions["helm_api"].backend.list_jobs = broken
    body = assert_clean_error(client.post("/apply", headers=AUTH), 500)
    assert body == {"error": "internal error"}


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 410, 422, 429, 500, 503])
def test_backend_raises_only_helm_api_errors(kube, cronjob, status):
    backend = KubernetesBackend(kube.new_api_client(), NAMESPACE, CRONJOB)
    calls = [
        backend.check_api,
        backend.read_cronjob,
        lambda: backend.list_jobs("a=b"),
        lambda: backend.read_job("x"),
        lambda: backend.create_job({"metadata": {"name": "x"}}),
        lambda: backend.patch_job("x", {"spec": {}}),
    ]
    for call in calls:
        kube.fail_next(status)
        with pytest.raises(HelmApiError) as caught:
            call()
        assert caught.value.__cause__ is not None  # translated with `raise ... from e`
    dead = KubernetesBackend(dead_api_client(), NAMESPACE, CRONJOB)
    with pytest.raises(HelmApiError):
        dead.read_cronjob()


def test_endless_lost_races_give_up_with_503_and_retry_after(client, kube, cronjob):
    kube.fail_next(409, count=1000, method="POST", path=JOBS_PATH)
    answer = client.post("/apply", headers=AUTH)
    body = assert_clean_error(answer, 503)
    assert "retry" in body["error"]
    assert answer.headers["Retry-After"] == "1"
    assert kube.jobs(NAMESPACE) == []
