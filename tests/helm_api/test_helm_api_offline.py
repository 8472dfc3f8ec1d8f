"""Offline mode: the CronJob comes from a rendered manifest, Jobs are recorded and written, never created."""

from __future__ import annotations

import yaml

from helm_api import jobs as J
from helm_api.app import create_app
from helm_api.offline import load_cronjob_manifest


def offline_app(manifest, jobs_dir=None, **extra):
    config = {"HELM_API_TOKEN": "t" * 8, "HELM_API_OFFLINE_CRONJOB_FILE": str(manifest), **extra}
    if jobs_dir is not None:
        config["HELM_API_OFFLINE_JOBS_DIR"] = str(jobs_dir)
    # No api_client: the offline backend must not need a cluster or a kubeconfig.
    return create_app({**config, "KUBECONFIG": "/nonexistent"}, start_reconciler=False)


TOKEN = {"Authorization": "Bearer " + "t" * 8}


def test_offline_apply_records_the_job_and_creates_nothing(offline_manifest, tmp_path):
    app = offline_app(offline_manifest, tmp_path / "jobs")
    client = app.test_client()
    answer = client.post("/apply", json={"reason": "demo"}, headers=TOKEN)
    assert answer.status_code == 202
    body = answer.get_json()
    assert (body["created"], body["offline"], body["state"]) == (False, True, "running")

    [written] = list((tmp_path / "jobs").glob("*.yaml"))
    job = yaml.safe_load(written.read_text())
    assert written.name == f"{body['job']}.yaml"
    cronjob = load_cronjob_manifest(offline_manifest, "helmsman-cronjob")
    assert job["metadata"]["labels"] == {"app.kubernetes.io/name": "helmsman", J.APPLY_LABEL: "helmsman-cronjob"}
    assert job["metadata"]["annotations"][J.INSTANTIATE_ANNOTATION] == "manual"
    assert job["metadata"]["annotations"][J.REASON_ANNOTATION] == "demo"
    assert job["spec"] == cronjob["spec"]["jobTemplate"]["spec"]
    assert job["metadata"]["ownerReferences"][0]["name"] == "helmsman-cronjob"

    # No helmsman runs offline: the Job counts as finished, so the next /apply makes a new one.
    second = client.post("/apply", headers=TOKEN).get_json()
    assert second["job"] != body["job"] and second["state"] == "running"
    assert (second["created"], second["offline"]) == (False, True)
    listing = client.get("/apply", headers=TOKEN).get_json()
    assert listing["offline"] is True
    assert [j["job"] for j in listing["jobs"]] == [second["job"], body["job"]]
    assert all(j["offline"] and not j["created"] for j in listing["jobs"])
    assert client.get(f"/apply/{body['job']}", headers=TOKEN).get_json()["state"] == "succeeded"
    assert client.get("/readyz").status_code == 200


def test_offline_without_jobs_dir_keeps_jobs_in_memory(offline_manifest, tmp_path):
    app = offline_app(offline_manifest)
    client = app.test_client()
    first = client.post("/apply", json={"request_id": "c1"}, headers=TOKEN).get_json()
    again = client.post("/apply", json={"request_id": "c1"}, headers=TOKEN)
    assert again.status_code == 200
    assert again.get_json()["duplicate"] and again.get_json()["job"] == first["job"]
    assert again.get_json()["offline"] is True
    assert list(tmp_path.glob("**/*.yaml")) == [offline_manifest]


def test_offline_missing_cronjob_in_manifest_is_404(tmp_path):
    manifest = tmp_path / "m.yaml"
    manifest.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    app = offline_app(manifest)
    answer = app.test_client().post("/apply", headers=TOKEN)
    assert answer.status_code == 404
    assert "helmsman-cronjob" in answer.get_json()["error"]
