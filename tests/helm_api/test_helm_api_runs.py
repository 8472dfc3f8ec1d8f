"""Every Job the CronJob controls is a helmsman run: ours, the CronJob controller's and `kubectl create job --from`
ones. Through the real kubernetes client against the API fake."""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any

from helm_api_testing import AUTH, CRONJOB, NAMESPACE

from helm_api import jobs as J
from helm_api import kube as kube_backend


def kubectl_job(cronjob: dict[str, Any], name: str) -> dict[str, Any]:
    """What `kubectl create job NAME --from=cronjob/CJ` sends: the template, instantiate=manual, a controller ref."""
    template = cronjob["spec"]["jobTemplate"]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "labels": dict(template["metadata"]["labels"]),
            "annotations": {"cronjob.kubernetes.io/instantiate": "manual", **template["metadata"]["annotations"]},
            "ownerReferences": [
                {"apiVersion": "batch/v1", "kind": "CronJob", "name": CRONJOB, "uid": cronjob["metadata"]["uid"],
                 "controller": True}
            ],
        },
        "spec": copy.deepcopy(template["spec"]),
    }


def scheduled_job(cronjob: dict[str, Any], name: str, scheduled_at: str) -> dict[str, Any]:
    """What the CronJob controller creates at a slot: template metadata, the scheduled-timestamp annotation and
    a controller ref with blockOwnerDeletion."""
    template = cronjob["spec"]["jobTemplate"]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "labels": dict(template["metadata"]["labels"]),
            "annotations": {
                **template["metadata"]["annotations"],
                "batch.kubernetes.io/cronjob-scheduled-timestamp": scheduled_at,
            },
            "ownerReferences": [
                {"apiVersion": "batch/v1", "kind": "CronJob", "name": CRONJOB, "uid": cronjob["metadata"]["uid"],
                 "controller": True, "blockOwnerDeletion": True}
            ],
        },
        "spec": copy.deepcopy(template["spec"]),
    }


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def post(client, body=None):
    return client.post("/apply", json=body, headers=AUTH)


def states(kube):
    return sorted(J.job_state(job) for job in kube.jobs(NAMESPACE))


def reconcile(app):
    return app.extensions["helm_api"].service.reconcile()


def test_a_running_kubectl_job_makes_apply_queue(app, client, kube, cronjob):
    kube.add_job(kubectl_job(cronjob, "by-hand"), NAMESPACE)
    answer = post(client, {"reason": "chart web 1.2.3"})
    assert answer.status_code == 202
    body = answer.get_json()
    assert (body["state"], body["created"], body["origin"]) == ("queued", True, "apply")
    assert kube.job(body["job"], NAMESPACE)["spec"]["suspend"] is True
    assert states(kube) == ["queued", "running"]

    # More applies join the waiting Job; still one running (the foreign one) and one waiting.
    again = post(client, {"reason": "chart api 2.0.0"}).get_json()
    assert (again["job"], again["coalesced"]) == (body["job"], True)
    assert len(kube.posted_jobs()) == 1
    reconcile(app)
    assert kube.job(body["job"], NAMESPACE)["spec"]["suspend"] is True  # the kubectl run still runs

    kube.complete_job("by-hand", NAMESPACE)
    reconcile(app)
    assert J.job_state(kube.job(body["job"], NAMESPACE)) == "running"
    assert kube.job("by-hand", NAMESPACE)["spec"]["suspend"] is False  # never touched
    assert [p.path.rsplit("/", 1)[-1] for p in kube.patches()] == [body["job"]]


def test_a_running_scheduled_job_of_the_cronjob_controller_makes_apply_queue(app, client, kube, cronjob):
    kube.add_job(scheduled_job(cronjob, f"{CRONJOB}-29000000", "2025-03-01T03:00:00Z"), NAMESPACE)
    body = post(client).get_json()
    assert (body["state"], body["created"]) == ("queued", True)
    kube.fail_job(f"{CRONJOB}-29000000", NAMESPACE)
    reconcile(app)
    assert J.job_state(kube.job(body["job"], NAMESPACE)) == "running"
    assert states(kube) == ["failed", "running"]


def test_a_finished_or_suspended_foreign_job_does_not_hold_the_queue(client, kube, cronjob):
    kube.add_job(kubectl_job(cronjob, "done-by-hand"), NAMESPACE)
    kube.complete_job("done-by-hand", NAMESPACE)
    paused = kubectl_job(cronjob, "paused-by-hand")
    paused["spec"]["suspend"] = True
    kube.add_job(paused, NAMESPACE)
    body = post(client).get_json()
    assert (body["state"], body["created"]) == ("running", True)
    assert kube.job("paused-by-hand", NAMESPACE)["spec"]["suspend"] is True  # not ours to start
    assert kube.patches() == []


def test_jobs_not_controlled_by_the_cronjob_are_not_runs(client, kube, cronjob):
    unowned = kubectl_job(cronjob, "no-owner")
    del unowned["metadata"]["ownerReferences"]
    kube.add_job(unowned, NAMESPACE)
    not_controller = kubectl_job(cronjob, "not-controller")
    not_controller["metadata"]["ownerReferences"][0]["controller"] = False
    kube.add_job(not_controller, NAMESPACE)
    other = kubectl_job(cronjob, "other-cronjob-run")
    other["metadata"]["ownerReferences"][0]["name"] = "other-cronjob"
    kube.add_job(other, NAMESPACE)

    assert post(client).get_json()["state"] == "running"
    listed = client.get("/apply", headers=AUTH).get_json()["jobs"]
    assert len(listed) == 1 and listed[0]["origin"] == "apply"
    for name in ("no-owner", "not-controller", "other-cronjob-run"):
        assert client.get(f"/apply/{name}", headers=AUTH).status_code == 404


def test_get_apply_lists_every_run_newest_first_with_its_origin(make_app, kube, cronjob):
    app = make_app(HELM_API_SCHEDULE="0 * * * *")
    client = app.test_client()
    kube.add_job(
        scheduled_job(cronjob, f"{CRONJOB}-28999880", "2025-03-01T01:00:00Z"), NAMESPACE,
        created_at="2025-03-01T01:00:00Z",
    )
    kube.complete_job(f"{CRONJOB}-28999880", NAMESPACE)
    kube.add_job(kubectl_job(cronjob, "by-hand"), NAMESPACE, created_at="2025-03-01T02:00:00Z")
    # Ours are created now, so they are the newest: the scheduled slot's Job (queued behind by-hand) first.
    applied = post(client, {"reason": "push"}).get_json()
    slot = app.extensions["helm_api"].schedule.run_slot(utc("2025-03-01T03:00:00Z"))
    assert slot is not None and slot["job"] == applied["job"]  # the slot joined the waiting Job

    listing = client.get("/apply", headers=AUTH).get_json()["jobs"]
    assert [(j["job"], j["origin"], j["state"]) for j in listing] == [
        (applied["job"], "apply", "queued"),
        ("by-hand", "manual", "running"),
        (f"{CRONJOB}-28999880", "manual", "succeeded"),
    ]
    one = client.get("/apply/by-hand", headers=AUTH).get_json()
    assert (one["origin"], one["sequence"], one["created_at"]) == ("manual", 0, "2025-03-01T02:00:00Z")

    kube.complete_job("by-hand", NAMESPACE)
    reconcile(app)  # the apply Job runs now, so the 04:00 slot waits behind it as a Job of its own
    scheduled = app.extensions["helm_api"].schedule.run_slot(utc("2025-03-01T04:00:00Z"))
    assert scheduled is not None
    assert (scheduled["origin"], scheduled["created"], scheduled["state"]) == ("schedule", True, "queued")
    listing = client.get("/apply", headers=AUTH).get_json()["jobs"]
    assert listing[0]["job"] == scheduled["job"]
    assert [j["origin"] for j in listing] == ["schedule", "apply", "manual", "manual"]


def test_jobs_are_listed_page_by_page(monkeypatch, client, kube, cronjob):
    monkeypatch.setattr(kube_backend, "LIST_PAGE_SIZE", 2)
    for index in range(5):
        unrelated = kubectl_job(cronjob, f"build-{index}")
        del unrelated["metadata"]["ownerReferences"]
        kube.add_job(unrelated, NAMESPACE)
    kube.add_job(kubectl_job(cronjob, "zz-by-hand"), NAMESPACE)  # sorted last by the fake: on the last page
    assert post(client).get_json()["state"] == "queued"
    lists = [r for r in kube.requests if r.method == "GET" and r.path.endswith("/jobs")]
    assert [r.query.get("limit") for r in lists[:3]] == [["2"]] * 3
    assert [r.query.get("continue") for r in lists[:3]] == [None, ["2"], ["4"]]
