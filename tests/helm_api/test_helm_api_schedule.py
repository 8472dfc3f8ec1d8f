"""The re-apply schedule: each slot goes through the /apply queue, once, whatever the number of replicas.

The slot function is called directly with a slot time (an injected clock for ``fire``); one test checks the job
APScheduler holds. Against the API fake through the real kubernetes client.
"""

from __future__ import annotations

import subprocess
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from apscheduler.triggers.cron import CronTrigger
from helm_api_testing import AUTH, CRONJOB, NAMESPACE, clean_env, helm_api_command

from helm_api import jobs as J
from helm_api import schedule as S
from helm_api.config import load_settings
from helm_api.errors import ConfigError

HOURLY = "0 * * * *"
SLOT = datetime(2025, 3, 1, 3, 0, tzinfo=UTC)
SLOT_ID = "schedule/2025-03-01T03:00:00Z"


def schedule_of(app) -> S.ApplySchedule:
    schedule = app.extensions["helm_api"].schedule
    assert schedule is not None
    return schedule


def states(kube) -> list[str]:
    return sorted(J.job_state(job) for job in kube.jobs(NAMESPACE))


def post(client, body=None):
    return client.post("/apply", json=body, headers=AUTH)


@pytest.fixture
def scheduled_app(make_app, cronjob):
    return make_app(HELM_API_SCHEDULE=HOURLY)


def test_a_slot_creates_kubectls_job_with_always_upgrade(scheduled_app, kube, cronjob):
    answer = schedule_of(scheduled_app).run_slot(SLOT)
    assert answer is not None
    assert (answer["state"], answer["origin"], answer["created"]) == ("running", "schedule", True)

    [posted] = kube.posted_jobs()
    # kubectl's Job from the CronJob (as /apply makes it), our annotations...
    expected = J.job_from_cronjob(
        cronjob,
        answer["job"],
        annotations={
            J.SEQUENCE_ANNOTATION: "1",
            J.ORIGIN_ANNOTATION: "schedule",
            J.REQUESTED_AT_ANNOTATION: posted["metadata"]["annotations"][J.REQUESTED_AT_ANNOTATION],
            J.REASON_ANNOTATION: f"schedule {HOURLY} (UTC): slot 2025-03-01T03:00:00Z",
            J.REQUESTED_BY_ANNOTATION: "helm-api schedule",
            J.REQUEST_IDS_ANNOTATION: f'["{SLOT_ID}"]',
        },
        labels={J.APPLY_LABEL: CRONJOB},
    )
    # ...and the one difference: helmsman gets --always-upgrade after its own arguments, so every release is
    # upgraded and helm's three-way merge undoes hand edits that plain `helmsman --apply` leaves alone.
    container = expected["spec"]["template"]["spec"]["containers"][0]
    container["command"] = [*container["command"], "--always-upgrade"]
    assert posted == expected
    assert kube.job(answer["job"], NAMESPACE)["spec"]["template"]["spec"]["containers"][0]["command"][-1] == (
        "--always-upgrade"
    )

    # The same slot again (a retry, another worker): the Job that holds it, nothing new.
    again = schedule_of(scheduled_app).run_slot(SLOT)
    assert again is not None and (again["duplicate"], again["job"]) == (True, answer["job"])
    assert len(kube.posted_jobs()) == 1


def test_an_apply_job_has_no_always_upgrade(scheduled_app, kube, cronjob):
    body = post(scheduled_app.test_client()).get_json()
    assert body["origin"] == "apply"
    command = kube.job(body["job"], NAMESPACE)["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command == cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"]


def test_a_slot_while_one_runs_and_one_waits_joins_the_waiting_one(scheduled_app, kube, cronjob):
    client = scheduled_app.test_client()
    running = post(client, {"reason": "one"}).get_json()
    waiting = post(client, {"reason": "two", "request_id": "push-2"}).get_json()
    assert (running["state"], waiting["state"]) == ("running", "queued")

    answer = schedule_of(scheduled_app).run_slot(SLOT)
    assert answer is not None
    assert (answer["job"], answer["state"], answer["coalesced"], answer["created"]) == (
        waiting["job"], "queued", True, False,
    )
    assert states(kube) == ["queued", "running"]  # still exactly one running and one waiting
    assert len(kube.posted_jobs()) == 2
    assert J.job_request_ids(kube.job(waiting["job"], NAMESPACE)) == ["push-2", SLOT_ID]

    # Once the running one finishes, the waiting one starts, holding the slot.
    kube.complete_job(running["job"], NAMESPACE)
    scheduled_app.extensions["helm_api"].service.reconcile()
    assert J.job_state(kube.job(waiting["job"], NAMESPACE)) == "running"
    again = schedule_of(scheduled_app).run_slot(SLOT)
    assert again is not None and (again["duplicate"], again["job"]) == (True, waiting["job"])
    assert len(kube.posted_jobs()) == 2


def test_a_slot_while_one_runs_waits_as_its_own_job(scheduled_app, kube, cronjob):
    running = post(scheduled_app.test_client()).get_json()
    answer = schedule_of(scheduled_app).run_slot(SLOT)
    assert answer is not None
    assert (answer["state"], answer["origin"], answer["created"]) == ("queued", "schedule", True)
    assert states(kube) == ["queued", "running"]
    # An /apply now joins the scheduled Job waiting, which runs with --always-upgrade.
    joined = post(scheduled_app.test_client()).get_json()
    assert (joined["job"], joined["coalesced"], joined["origin"]) == (answer["job"], True, "schedule")
    assert kube.job(answer["job"], NAMESPACE)["spec"]["template"]["spec"]["containers"][0]["command"][-1] == (
        "--always-upgrade"
    )
    assert running["job"] != answer["job"]


def _race(apps: list[Any]) -> list[dict[str, Any] | None]:
    """Every app lists the same cluster state, then all act at once on SLOT."""
    barrier = threading.Barrier(len(apps))
    for app in apps:
        backend = app.extensions["helm_api"].service.backend
        original = backend.list_jobs
        first_call = threading.Event()

        def list_then_wait(selector, original=original, first_call=first_call):
            jobs = original(selector)
            if not first_call.is_set():
                first_call.set()
                barrier.wait(timeout=10)
            return jobs

        backend.list_jobs = list_then_wait
    results: list[dict[str, Any] | None] = []
    threads = [threading.Thread(target=lambda a=app: results.append(schedule_of(a).run_slot(SLOT))) for app in apps]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    return results


def test_two_replicas_firing_the_same_slot_make_one_job(make_app, kube, cronjob):
    replicas = [make_app(HELM_API_SCHEDULE=HOURLY) for _ in range(2)]
    results = _race(replicas)
    assert len(results) == 2 and all(results)
    assert len(kube.posted_jobs()) == 2  # both tried the same name...
    assert len({body["metadata"]["name"] for body in kube.posted_jobs()}) == 1
    [job] = kube.jobs(NAMESPACE)  # ...the API server kept one
    assert J.job_request_ids(job) == [SLOT_ID]
    assert sorted((r["created"], r["duplicate"]) for r in results if r) == [(False, True), (True, False)]
    assert {r["job"] for r in results if r} == {job["metadata"]["name"]}


def test_two_replicas_firing_a_slot_into_the_waiting_job_record_it_once(make_app, kube, cronjob):
    replicas = [make_app(HELM_API_SCHEDULE=HOURLY) for _ in range(2)]
    client = replicas[0].test_client()
    post(client)
    waiting = post(client).get_json()["job"]
    results = _race(replicas)
    assert all(results) and {r["job"] for r in results if r} == {waiting}
    assert states(kube) == ["queued", "running"]
    assert J.job_request_ids(kube.job(waiting, NAMESPACE)) == [SLOT_ID]
    assert sorted((r["coalesced"], r["duplicate"]) for r in results if r) == [(False, True), (True, False)]


def test_a_failed_slot_is_logged_and_the_next_one_runs(scheduled_app, kube, cronjob, caplog):
    kube.fail_next(503, method="GET", path="/cronjobs/")
    assert schedule_of(scheduled_app).run_slot(SLOT) is None
    assert kube.jobs(NAMESPACE) == []
    assert "schedule slot failed: slot=schedule/2025-03-01T03:00:00Z" in caplog.text
    answer = schedule_of(scheduled_app).run_slot(SLOT + timedelta(hours=1))
    assert answer is not None and answer["created"]
    metrics = scheduled_app.test_client().get("/metrics").get_data(as_text=True)
    assert 'helm_api_schedule_slots_total{outcome="failed"} 1.0' in metrics
    assert 'helm_api_schedule_slots_total{outcome="created"} 1.0' in metrics


@pytest.mark.parametrize(
    ("now", "slot"),
    [
        (SLOT, SLOT),
        (SLOT + timedelta(seconds=0.2), SLOT),
        (SLOT + timedelta(seconds=S.MISFIRE_GRACE_SECONDS), SLOT),
        (SLOT + timedelta(seconds=S.MISFIRE_GRACE_SECONDS + 1), None),
        (SLOT + timedelta(minutes=30), None),
        (SLOT - timedelta(seconds=1), None),
    ],
    ids=["on-time", "a-little-late", "at-the-grace", "too-late", "half-past", "early"],
)
def test_fire_names_its_slot_from_the_clock_or_skips(make_app, kube, cronjob, now, slot):
    app = make_app(HELM_API_SCHEDULE=HOURLY)
    schedule = schedule_of(app)
    schedule.clock = lambda: now
    schedule.fire()
    if slot is None:
        assert kube.jobs(NAMESPACE) == []
        metrics = app.test_client().get("/metrics").get_data(as_text=True)
        assert 'helm_api_schedule_slots_total{outcome="skipped"} 1.0' in metrics
    else:
        [job] = kube.jobs(NAMESPACE)
        assert J.job_request_ids(job) == [S.slot_request_id(slot)]


def test_the_apscheduler_job_has_the_cron_trigger_and_skips_misfires(scheduled_app):
    schedule = schedule_of(scheduled_app)
    scheduler = schedule.build_scheduler()
    scheduler.start(paused=True)
    try:
        job = scheduler.get_job(S.JOB_ID)
        assert job is not None and job.func == schedule.fire
        assert isinstance(job.trigger, CronTrigger)
        fields = {field.name: str(field) for field in job.trigger.fields}
        assert fields == {"year": "*", "month": "*", "day": "*", "week": "*", "day_of_week": "*",
                               "hour": "*", "minute": "0", "second": "0"}
        assert str(job.trigger.timezone) == "UTC"
        assert (job.misfire_grace_time, job.coalesce, job.max_instances) == (S.MISFIRE_GRACE_SECONDS, True, 1)
        # Started now, it waits for the next slot: the one before (missed while down) is never run late.
        now = datetime.now(UTC)
        assert now < job.next_run_time <= now + timedelta(hours=1)
        assert job.next_run_time.minute == 0 and job.next_run_time.second == 0
    finally:
        scheduler.shutdown(wait=False)


def test_the_app_starts_and_stops_the_schedule_with_its_threads(make_app, cronjob):
    app = make_app(start_reconciler=True, HELM_API_SCHEDULE="*/5 * * * *", HELM_API_SCHEDULE_TZ="Europe/Berlin")
    schedule = schedule_of(app)
    assert schedule.scheduler is not None and schedule.scheduler.running
    assert schedule.scheduler.get_job(S.JOB_ID).next_run_time.minute % 5 == 0
    schedule.stop()
    assert schedule.scheduler is None
    assert make_app(start_reconciler=True).extensions["helm_api"].schedule is None  # unset: no schedule


def test_the_slot_id_is_utc_whatever_the_zone(make_app, kube, cronjob):
    app = make_app(HELM_API_SCHEDULE="0 3 * * *", HELM_API_SCHEDULE_TZ="Europe/Berlin")
    schedule = schedule_of(app)
    schedule.clock = lambda: datetime(2025, 1, 15, 2, 0, 5, tzinfo=UTC)  # 03:00:05 in Berlin (winter, +01:00)
    schedule.fire()
    [job] = kube.jobs(NAMESPACE)
    assert J.job_request_ids(job) == ["schedule/2025-01-15T02:00:00Z"]


def test_clients_may_not_use_the_schedules_request_ids(client, kube, cronjob):
    answer = post(client, {"request_id": SLOT_ID})
    assert answer.status_code == 400
    assert "schedule/" in answer.get_json()["error"]
    assert kube.posted_jobs() == []


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, (None, "UTC")),
        ({"HELM_API_SCHEDULE": ""}, (None, "UTC")),
        ({"HELM_API_SCHEDULE": "  0  *  * * * "}, ("0 * * * *", "UTC")),
        ({"HELM_API_SCHEDULE": "15 */2 * * 1-5", "HELM_API_SCHEDULE_TZ": "Europe/Berlin"},
         ("15 */2 * * 1-5", "Europe/Berlin")),
    ],
)
def test_schedule_settings(env, expected):
    settings = load_settings({"HELM_API_TOKEN": "t", **env})
    assert (settings.schedule, settings.schedule_timezone) == expected


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"HELM_API_SCHEDULE": "hourly"}, "HELM_API_SCHEDULE"),
        ({"HELM_API_SCHEDULE": "61 * * * *"}, "HELM_API_SCHEDULE"),
        ({"HELM_API_SCHEDULE": "0 * * *"}, "HELM_API_SCHEDULE"),
        ({"HELM_API_SCHEDULE": HOURLY, "HELM_API_SCHEDULE_TZ": "Mars/Olympus"}, "HELM_API_SCHEDULE_TZ"),
        ({"HELM_API_SCHEDULE_TZ": "../etc/passwd"}, "HELM_API_SCHEDULE_TZ"),
        ({"HELM_API_SCHEDULE_TZ": "Europe"}, "HELM_API_SCHEDULE_TZ"),
    ],
)
def test_bad_schedule_settings_name_the_variable(env, variable):
    with pytest.raises(ConfigError, match=variable):
        load_settings({"HELM_API_TOKEN": "t", **env})


def test_a_bad_schedule_stops_the_command_with_one_line_and_exit_2():
    env = clean_env(HELM_API_TOKEN="t", HELM_API_SCHEDULE="every hour", KUBECONFIG="/nonexistent")
    done = subprocess.run(
        [*helm_api_command(), "--port", "0"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("helm-api: configuration error: HELM_API_SCHEDULE: 'every hour'")


def test_slot_request_id_is_rfc3339_utc():
    berlin = S.parse_timezone("Europe/Berlin")
    assert S.slot_request_id(datetime(2025, 7, 1, 5, 0, tzinfo=berlin)) == "schedule/2025-07-01T03:00:00Z"
    assert S.parse_timezone("UTC") is UTC


def test_the_charts_and_the_dss_schedules_are_valid_settings():
    root = Path(__file__).resolve().parents[2]
    chart = yaml.safe_load((root / "charts" / "helm-api" / "values.yaml").read_text())
    dss = yaml.safe_load((root / "dss" / "values-helm-api.yaml").read_text())
    assert (chart["schedule"], chart["scheduleTimezone"]) == (HOURLY, "UTC")  # hourly unless the DSS says otherwise
    for values in (chart, dss):
        env = {"HELM_API_TOKEN": "t", "HELM_API_SCHEDULE": values["schedule"],
               "HELM_API_SCHEDULE_TZ": values["scheduleTimezone"]}
        assert load_settings(env).schedule == values["schedule"]
    deployment = " ".join((root / "charts" / "helm-api" / "templates" / "deployment.yaml").read_text().split())
    assert "- name: HELM_API_SCHEDULE value: {{ .Values.schedule | quote }}" in deployment
    assert "- name: HELM_API_SCHEDULE_TZ value: {{ .Values.scheduleTimezone | quote }}" in deployment
