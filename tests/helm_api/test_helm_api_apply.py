"""POST /apply, GET /apply and the reconciler through the real kubernetes client against the API fake."""

from __future__ import annotations

import copy
import re
import threading

from helm_api_testing import AUTH, CRONJOB, NAMESPACE, helmsman_cronjob

from helm_api import jobs as J

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def post(client, body=None, **headers):
    return client.post("/apply", json=body, headers={**AUTH, "User-Agent": "poller/1", **headers})


def states(kube):
    return sorted(J.job_state(job) for job in kube.jobs(NAMESPACE))


def reconcile(app):
    return app.extensions["helm_api"].service.reconcile()


def test_first_apply_creates_the_job_kubectl_would_create(client, kube, cronjob):
    answer = post(client, {"reason": "chart web 1.2.3"})
    assert answer.status_code == 202
    body = answer.get_json()
    assert body["state"] == "running"
    assert body["namespace"] == NAMESPACE
    assert (body["created"], body["coalesced"], body["duplicate"], body["offline"]) == (True, False, False, False)

    [posted] = kube.posted_jobs()
    requested_at = posted["metadata"]["annotations"].pop(J.REQUESTED_AT_ANNOTATION)
    assert TIMESTAMP.match(requested_at)
    template = cronjob["spec"]["jobTemplate"]
    assert posted == {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": body["job"],
            "labels": {
                "app.kubernetes.io/name": "helmsman",
                "app.kubernetes.io/component": "apply",
                "helmsman-cd.io/apply-for": CRONJOB,
            },
            "annotations": {
                "cronjob.kubernetes.io/instantiate": "manual",
                "example.com/team": "platform",
                "helmsman-cd.io/apply-sequence": "1",
                "helmsman-cd.io/apply-origin": "apply",
                "helmsman-cd.io/apply-reason": "chart web 1.2.3",
                "helmsman-cd.io/apply-requested-by": "127.0.0.1 (poller/1)",
            },
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "CronJob",
                    "name": CRONJOB,
                    "uid": cronjob["metadata"]["uid"],
                    "controller": True,
                }
            ],
        },
        "spec": template["spec"],
    }
    assert body["job"].startswith(f"{CRONJOB}-") and len(body["job"]) <= 63
    stored = kube.job(body["job"], NAMESPACE)
    assert stored["spec"]["suspend"] is False
    assert J.job_state(stored) == "running"


def test_queued_while_running_then_coalesced(client, kube, cronjob):
    first = post(client, {"reason": "one"}).get_json()
    second = post(client, {"reason": "two"})
    assert second.status_code == 202
    second = second.get_json()
    assert (second["state"], second["created"], second["coalesced"]) == ("queued", True, False)
    assert second["job"] != first["job"]
    assert kube.job(second["job"], NAMESPACE)["spec"]["suspend"] is True
    assert kube.posted_jobs()[1]["spec"]["suspend"] is True

    for reason in ("three", "four", "five"):
        again = post(client, {"reason": reason})
        assert again.status_code == 202
        assert again.get_json() | {"reason": None} == {**second, "created": False, "coalesced": True} | {"reason": None}
    assert len(kube.posted_jobs()) == 2
    assert states(kube) == ["queued", "running"]


def test_get_apply_lists_newest_first_and_one_job(client, kube, cronjob):
    first = post(client, {"reason": "one"}).get_json()["job"]
    second = post(client, {"reason": "two"}).get_json()["job"]
    listing = client.get("/apply", headers=AUTH)
    assert listing.status_code == 200
    jobs = listing.get_json()["jobs"]
    assert [(j["job"], j["state"]) for j in jobs] == [(second, "queued"), (first, "running")]
    assert jobs[1]["started_at"] is not None

    kube.complete_job(first, NAMESPACE)
    one = client.get(f"/apply/{first}", headers=AUTH).get_json()
    assert one["state"] == "succeeded"
    assert TIMESTAMP.match(one["finished_at"]) and TIMESTAMP.match(one["started_at"])
    # The GET ran the reconciler: the waiting Job is running now.
    assert client.get(f"/apply/{second}", headers=AUTH).get_json()["state"] == "running"
    assert client.get("/apply?limit=1", headers=AUTH).get_json()["jobs"][0]["job"] == second


def test_unknown_or_foreign_job_is_404(client, kube, cronjob):
    kube.add_job(
        {"metadata": {"name": "someone-elses"}, "spec": copy.deepcopy(cronjob["spec"]["jobTemplate"]["spec"])},
        NAMESPACE,
    )
    for name in ("nope", "someone-elses"):
        answer = client.get(f"/apply/{name}", headers=AUTH)
        assert answer.status_code == 404
        assert name in answer.get_json()["error"]


def test_reconciler_resumes_the_waiting_job_after_complete(app, client, kube, cronjob):
    running = post(client).get_json()["job"]
    waiting = post(client).get_json()["job"]
    reconcile(app)
    assert kube.job(waiting, NAMESPACE)["spec"]["suspend"] is True  # still running: nothing to do

    kube.complete_job(running, NAMESPACE)
    reconcile(app)
    assert kube.job(waiting, NAMESPACE)["spec"]["suspend"] is False
    [patch] = kube.patches()
    assert patch.path.endswith(f"/jobs/{waiting}")
    assert patch.content_type == "application/merge-patch+json"
    assert patch.body["spec"] == {"suspend": False}
    assert patch.body["metadata"]["resourceVersion"]
    reconcile(app)
    assert len(kube.patches()) == 1
    assert states(kube) == ["running", "succeeded"]


def test_reconciler_resumes_the_waiting_job_after_failed(app, client, kube, cronjob):
    running = post(client).get_json()["job"]
    waiting = post(client).get_json()["job"]
    kube.fail_job(running, NAMESPACE)
    reconcile(app)
    assert J.job_state(kube.job(waiting, NAMESPACE)) == "running"
    assert states(kube) == ["failed", "running"]


def test_background_thread_resumes_and_stops(make_app, kube, cronjob):
    app = make_app(start_reconciler=True, HELM_API_RECONCILE_SECONDS="0.05")
    client = app.test_client()
    running = post(client).get_json()["job"]
    waiting = post(client).get_json()["job"]
    kube.complete_job(running, NAMESPACE)
    deadline = threading.Event()
    for _ in range(100):
        if not kube.job(waiting, NAMESPACE)["spec"]["suspend"]:
            break
        deadline.wait(0.05)
    assert kube.job(waiting, NAMESPACE)["spec"]["suspend"] is False
    reconciler = app.extensions["helm_api"].reconciler
    reconciler.stop()
    assert not reconciler.running


def test_apply_when_nothing_runs_but_one_waits_resumes_it_and_coalesces(client, kube, cronjob):
    running = post(client).get_json()["job"]
    waiting = post(client).get_json()["job"]
    kube.complete_job(running, NAMESPACE)
    answer = post(client, {"reason": "after finish"}).get_json()
    assert (answer["job"], answer["state"], answer["coalesced"], answer["created"]) == (waiting, "running", True, False)
    assert len(kube.posted_jobs()) == 2
    assert states(kube) == ["running", "succeeded"]


def test_after_everything_finished_a_new_job_runs(client, kube, cronjob):
    first = post(client).get_json()["job"]
    kube.complete_job(first, NAMESPACE)
    second = post(client).get_json()
    assert second["state"] == "running" and second["created"] and second["job"] != first
    assert second["sequence"] == 2


def test_restart_with_a_waiting_job_duplicates_nothing_and_resumes_once(make_app, kube, cronjob):
    old = make_app()
    running = post(old.test_client()).get_json()["job"]
    waiting = post(old.test_client()).get_json()["job"]
    del old  # the process goes away; the queue is in the cluster

    new = make_app()
    client = new.test_client()
    answer = post(client).get_json()
    assert (answer["job"], answer["state"], answer["coalesced"]) == (waiting, "queued", True)
    kube.complete_job(running, NAMESPACE)
    reconcile(new)
    reconcile(new)
    assert len(kube.posted_jobs()) == 2
    assert len(kube.patches()) == 1
    assert states(kube) == ["running", "succeeded"]


def test_two_replicas_reconciling_at_once_do_not_double_start(make_app, kube, cronjob):
    replicas = [make_app() for _ in range(4)]
    client = replicas[0].test_client()
    running = post(client).get_json()["job"]
    waiting = post(client).get_json()["job"]
    kube.complete_job(running, NAMESPACE)

    # Every replica lists the same state, then they all try to resume at the same moment.
    barrier = threading.Barrier(len(replicas))
    services = [r.extensions["helm_api"].service for r in replicas]
    for service in services:
        original = service.backend.list_jobs
        first_call = threading.Event()

        def list_then_wait(selector, original=original, first_call=first_call):
            jobs = original(selector)
            if not first_call.is_set():
                first_call.set()
                barrier.wait(timeout=5)
            return jobs

        service.backend.list_jobs = list_then_wait
    threads = [threading.Thread(target=service.reconcile) for service in services]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    patches = kube.patches()
    assert len(patches) == len(replicas)  # all tried, with the same resourceVersion precondition...
    assert len({p.body["metadata"]["resourceVersion"] for p in patches}) == 1
    resumed = [s.metrics.jobs_resumed._value.get() for s in services]
    assert sorted(resumed) == [0] * (len(replicas) - 1) + [1]  # ...and exactly one won
    assert J.job_state(kube.job(waiting, NAMESPACE)) == "running"
    assert states(kube) == ["running", "succeeded"]


def test_replicas_applying_at_once_create_one_running_and_one_waiting(make_app, kube, cronjob):
    replicas = [make_app() for _ in range(3)]
    results = []

    def call(app):
        results.append(post(app.test_client()).get_json())

    threads = [threading.Thread(target=call, args=(app,)) for app in replicas for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert len(results) == 15
    assert states(kube) == ["queued", "running"]
    assert sum(1 for r in results if r["created"]) == 2


def test_request_id_makes_a_retried_post_a_duplicate(client, kube, cronjob):
    first = post(client, {"reason": "push abc", "request_id": "change-1"})
    assert first.status_code == 202
    again = post(client, {"reason": "push abc", "request_id": "change-1"})
    assert again.status_code == 200
    assert again.get_json()["duplicate"] is True
    assert again.get_json()["job"] == first.get_json()["job"]
    assert len(kube.posted_jobs()) == 1

    # A coalesced request id is recorded on the waiting Job, so its retry is a duplicate too.
    queued = post(client, {"request_id": "change-2"}).get_json()
    coalesced = post(client, {"request_id": "change-3"}).get_json()
    assert coalesced["coalesced"] and coalesced["job"] == queued["job"]
    stored = kube.job(queued["job"], NAMESPACE)
    assert J.job_request_ids(stored) == ["change-2", "change-3"]
    retry = post(client, {"request_id": "change-3"}).get_json()
    assert (retry["duplicate"], retry["job"]) == (True, queued["job"])

    # Still a duplicate after the Job finished: helmsman never runs twice for one change.
    kube.complete_job(first.get_json()["job"], NAMESPACE)
    late = post(client, {"request_id": "change-1"}).get_json()
    assert (late["duplicate"], late["state"]) == (True, "succeeded")
    assert len(kube.posted_jobs()) == 2


def test_concurrent_retries_of_one_request_id_start_one_job(make_app, kube, cronjob):
    apps = [make_app() for _ in range(2)]
    results = []

    def call(app):
        results.append(post(app.test_client(), {"request_id": "same"}).get_json())

    threads = [threading.Thread(target=call, args=(app,)) for app in apps for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert len(kube.jobs(NAMESPACE)) == 1
    assert {r["job"] for r in results} == {kube.jobs(NAMESPACE)[0]["metadata"]["name"]}
    assert sum(1 for r in results if r["created"]) == 1


def test_sixty_character_cronjob_name(make_app, kube):
    name = "h" * 60
    kube.add_cronjob(helmsman_cronjob(name=name))
    app = make_app(HELM_API_CRONJOB=name)
    answer = post(app.test_client())
    assert answer.status_code == 202, answer.get_json()
    job = answer.get_json()["job"]
    assert len(job) <= 63 and job.startswith("h" * 52 + "-")
    assert kube.job(job, NAMESPACE)["metadata"]["ownerReferences"][0]["name"] == name


def test_jobs_of_another_cronjob_are_ignored(make_app, kube, cronjob):
    other = helmsman_cronjob(name="other-cronjob")
    kube.add_cronjob(other)
    other_app = make_app(HELM_API_CRONJOB="other-cronjob")
    post(other_app.test_client())
    app = make_app()
    answer = post(app.test_client()).get_json()
    assert answer["state"] == "running"
    assert [j["job"] for j in app.test_client().get("/apply", headers=AUTH).get_json()["jobs"]] == [answer["job"]]
