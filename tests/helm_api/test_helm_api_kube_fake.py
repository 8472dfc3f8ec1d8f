"""The Kubernetes API fake behaves like an API server where the services depend on it (real client on top)."""

from __future__ import annotations

import json

import pytest
from helm_api_testing import NAMESPACE, helmsman_cronjob
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

try:
    from tests.kube_fake import merge_patch, parse_selector
except ImportError:
    from kube_fake import merge_patch, parse_selector


def job_body(name: str | None = "j1", **metadata) -> dict:
    meta = {"name": name, **metadata} if name else dict(metadata)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "template": {
                "metadata": {"labels": {"app": "pod-label"}},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "busybox"}]},
            }
        },
    }


@pytest.fixture
def batch(kube):
    return k8s.BatchV1Api(kube.new_api_client())


def status_of(error: ApiException) -> dict:
    return json.loads(error.body)


def test_create_defaults_like_a_server(batch, kube):
    created = batch.create_namespaced_job(NAMESPACE, job_body(), _preload_content=False)
    job = json.loads(created.data)
    assert created.status == 201
    meta = job["metadata"]
    assert meta["uid"] and meta["creationTimestamp"] and meta["resourceVersion"].isdigit()
    assert meta["labels"] == {"app": "pod-label"}  # copied from the pod template when empty
    assert job["spec"]["suspend"] is False and job["spec"]["backoffLimit"] == 6
    assert job["spec"]["selector"] == {"matchLabels": {"batch.kubernetes.io/controller-uid": meta["uid"]}}
    assert job["spec"]["template"]["metadata"]["labels"]["job-name"] == "j1"
    assert job["status"] == {}
    # The typed client parses it too.
    typed = batch.read_namespaced_job("j1", NAMESPACE)
    assert typed.metadata.uid == meta["uid"] and typed.status.start_time is not None


def test_resource_versions_increase(batch, kube):
    first = json.loads(batch.create_namespaced_job(NAMESPACE, job_body("a"), _preload_content=False).data)
    second = json.loads(batch.create_namespaced_job(NAMESPACE, job_body("b"), _preload_content=False).data)
    assert int(second["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])


def test_already_exists_and_invalid_names(batch):
    batch.create_namespaced_job(NAMESPACE, job_body())
    with pytest.raises(ApiException) as caught:
        batch.create_namespaced_job(NAMESPACE, job_body())
    assert caught.value.status == 409
    assert status_of(caught.value)["reason"] == "AlreadyExists"
    for bad in ("x" * 64, "Upper", "under_score", "-dash"):
        with pytest.raises(ApiException) as caught:
            batch.create_namespaced_job(NAMESPACE, job_body(bad))
        assert caught.value.status == 422
        assert status_of(caught.value)["kind"] == "Status"


def test_invalid_label_value_and_template(batch):
    with pytest.raises(ApiException) as caught:
        batch.create_namespaced_job(NAMESPACE, job_body(labels={"a": "v" * 64}))
    assert caught.value.status == 422
    body = job_body("j2")
    body["spec"]["template"]["spec"]["restartPolicy"] = "Always"
    with pytest.raises(ApiException) as caught:
        batch.create_namespaced_job(NAMESPACE, body)
    assert caught.value.status == 422


def test_generate_name(batch, kube):
    created = batch.create_namespaced_job(NAMESPACE, job_body(None, generateName="apply-"))
    assert created.metadata.name.startswith("apply-") and len(created.metadata.name) == 11


def test_label_selectors(batch, kube):
    for name, labels in (("a", {"k": "1", "t": "x"}), ("b", {"k": "2"}), ("c", {"other": "y"})):
        batch.create_namespaced_job(NAMESPACE, job_body(name, labels=labels))

    def names(selector):
        return sorted(j.metadata.name for j in batch.list_namespaced_job(NAMESPACE, label_selector=selector).items)

    assert names("k=1") == ["a"]
    assert names("k==2") == ["b"]
    assert names("k!=1") == ["b", "c"]
    assert names("k in (1, 2)") == ["a", "b"]
    assert names("k notin (1)") == ["b", "c"]
    assert names("k") == ["a", "b"]
    assert names("!k") == ["c"]
    assert names("k=1,t=x") == ["a"]
    assert names("") == ["a", "b", "c"]


def test_patch_with_stale_resource_version_conflicts(batch, kube):
    job = batch.create_namespaced_job(NAMESPACE, job_body(), _preload_content=False)
    rv = json.loads(job.data)["metadata"]["resourceVersion"]
    patched = batch.patch_namespaced_job(
        "j1", NAMESPACE, {"metadata": {"resourceVersion": kube.job("j1", NAMESPACE)["metadata"]["resourceVersion"]},
                          "spec": {"suspend": True}},
        _content_type="application/merge-patch+json",
    )
    assert patched.spec.suspend is True
    with pytest.raises(ApiException) as caught:
        batch.patch_namespaced_job(
            "j1", NAMESPACE, {"metadata": {"resourceVersion": rv}, "spec": {"suspend": False}},
            _content_type="application/strategic-merge-patch+json",
        )
    assert caught.value.status == 409 and status_of(caught.value)["reason"] == "Conflict"
    assert kube.job("j1", NAMESPACE)["spec"]["suspend"] is True


def test_patch_content_types(batch, kube):
    batch.create_namespaced_job(NAMESPACE, job_body())
    with pytest.raises(ApiException) as caught:
        batch.patch_namespaced_job("j1", NAMESPACE, [{"op": "add", "path": "/spec/suspend", "value": True}])
    assert caught.value.status == 415
    with pytest.raises(ApiException) as caught:
        batch.patch_namespaced_job(
            "j1", NAMESPACE, {"spec": {"template": {"spec": {"restartPolicy": "OnFailure"}}}},
            _content_type="application/merge-patch+json",
        )
    assert caught.value.status == 422


def test_not_found_and_injected_faults(batch, kube):
    with pytest.raises(ApiException) as caught:
        batch.read_namespaced_cron_job("missing", NAMESPACE)
    assert caught.value.status == 404 and status_of(caught.value)["reason"] == "NotFound"
    kube.add_cronjob(helmsman_cronjob())
    kube.fail_next(403, count=2, method="GET", path="/cronjobs/")
    for _ in range(2):
        with pytest.raises(ApiException) as caught:
            batch.read_namespaced_cron_job("helmsman-cronjob", NAMESPACE)
        assert caught.value.status == 403 and status_of(caught.value)["reason"] == "Forbidden"
    assert batch.read_namespaced_cron_job("helmsman-cronjob", NAMESPACE).metadata.uid
    assert [r.method for r in kube.requests] == ["GET"] * 4


def test_finishing_jobs(batch, kube):
    batch.create_namespaced_job(NAMESPACE, job_body("ok"))
    batch.create_namespaced_job(NAMESPACE, job_body("bad"))
    kube.complete_job("ok", NAMESPACE)
    kube.fail_job("bad", NAMESPACE)
    ok = batch.read_namespaced_job("ok", NAMESPACE)
    bad = batch.read_namespaced_job("bad", NAMESPACE)
    assert ok.status.completion_time is not None and ok.status.succeeded == 1
    assert {(c.type, c.status) for c in ok.status.conditions} >= {("Complete", "True")}
    assert bad.status.completion_time is None and bad.status.failed == 1
    assert {(c.type, c.status) for c in bad.status.conditions} >= {("Failed", "True")}


def test_merge_patch_and_selector_helpers():
    assert merge_patch({"a": {"b": 1, "c": 2}, "d": [1]}, {"a": {"b": None, "e": 3}, "d": [2]}) == {
        "a": {"c": 2, "e": 3},
        "d": [2],
    }
    [requirement] = parse_selector("x in (a,b)")
    assert requirement({"x": "b"}) and not requirement({"x": "c"})
