"""Table tests of the pure core: job_from_cronjob, apply_job_name, job_state and the apply planner."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from helm_api import jobs as J
from helm_api.errors import InvalidCronJobError

DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
UID = "3f1c9a52-0d7e-4c4e-9d2b-6a1f1e0b7c11"
JOB_SPEC = {
    "backoffLimit": 0,
    "template": {
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "helmsman", "image": "helmsman:v3", "args": ["--apply", "-f", "dss.yaml"]}],
        }
    },
}


def cronjob(name: str = "helmsman-cronjob", template_metadata: dict | None = None, **top: Any) -> dict[str, Any]:
    job_template: dict[str, Any] = {"spec": copy.deepcopy(JOB_SPEC)}
    if template_metadata is not None:
        job_template["metadata"] = template_metadata
    obj = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": name, "namespace": "cd", "uid": UID, "labels": {"cronjob-only": "yes"}},
        "spec": {"schedule": "@daily", "jobTemplate": job_template},
    }
    obj.update(top)
    return obj


def owner(name: str = "helmsman-cronjob") -> list[dict[str, Any]]:
    return [{"apiVersion": "batch/v1", "kind": "CronJob", "name": name, "uid": UID, "controller": True}]


# What `kubectl create job NAME --from=cronjob/CJ` creates, written out by hand from its rules.
CASES = [
    pytest.param(
        cronjob(template_metadata={"labels": {"app": "helmsman"}, "annotations": {"team": "platform"}}),
        {},
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": "run-1",
                "labels": {"app": "helmsman"},
                "annotations": {"cronjob.kubernetes.io/instantiate": "manual", "team": "platform"},
                "ownerReferences": owner(),
            },
            "spec": JOB_SPEC,
        },
        id="labels-and-annotations-from-the-template-only",
    ),
    pytest.param(
        cronjob(),
        {},
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": "run-1",
                "annotations": {"cronjob.kubernetes.io/instantiate": "manual"},
                "ownerReferences": owner(),
            },
            "spec": JOB_SPEC,
        },
        id="no-template-metadata",
    ),
    pytest.param(
        cronjob(template_metadata={"labels": {}, "annotations": {}}),
        {},
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": "run-1",
                "annotations": {"cronjob.kubernetes.io/instantiate": "manual"},
                "ownerReferences": owner(),
            },
            "spec": JOB_SPEC,
        },
        id="empty-labels-and-annotations",
    ),
    pytest.param(
        cronjob(template_metadata={"annotations": {"cronjob.kubernetes.io/instantiate": "by-template"}}),
        {},
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": "run-1",
                "annotations": {"cronjob.kubernetes.io/instantiate": "by-template"},
                "ownerReferences": owner(),
            },
            "spec": JOB_SPEC,
        },
        id="template-annotation-overrides-instantiate",
    ),
    pytest.param(
        cronjob(template_metadata={"labels": {"app": "helmsman"}}),
        {"annotations": {"helmsman-cd.io/apply-reason": "chart 1.2.3"}, "labels": {"helmsman-cd.io/apply-for": "x"},
         "suspend": True},
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": "run-1",
                "labels": {"app": "helmsman", "helmsman-cd.io/apply-for": "x"},
                "annotations": {
                    "cronjob.kubernetes.io/instantiate": "manual",
                    "helmsman-cd.io/apply-reason": "chart 1.2.3",
                },
                "ownerReferences": owner(),
            },
            "spec": {**JOB_SPEC, "suspend": True},
        },
        id="our-label-annotations-and-suspend",
    ),
]


@pytest.mark.parametrize(("cronjob_obj", "kwargs", "expected"), CASES)
def test_job_from_cronjob_is_what_kubectl_creates(cronjob_obj, kwargs, expected):
    before = copy.deepcopy(cronjob_obj)
    job = J.job_from_cronjob(cronjob_obj, "run-1", **kwargs)
    assert job == expected
    assert "blockOwnerDeletion" not in job["metadata"]["ownerReferences"][0]
    assert cronjob_obj == before  # pure: the CronJob is not modified


def test_job_spec_is_a_copy():
    source = cronjob()
    job = J.job_from_cronjob(source, "run-1", suspend=True)
    job["spec"]["template"]["spec"]["containers"][0]["image"] = "changed"
    assert source["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["image"] == "helmsman:v3"
    assert "suspend" not in source["spec"]["jobTemplate"]["spec"]


@pytest.mark.parametrize(
    ("api_version", "kind"),
    [("batch/v1beta1", "CronJob"), ("batch/v2alpha1", "CronJob"), (None, "CronJob"), ("batch/v1", "Job")],
)
def test_only_batch_v1_cronjobs(api_version, kind):
    with pytest.raises(InvalidCronJobError, match="only batch/v1 CronJobs"):
        J.job_from_cronjob(cronjob(apiVersion=api_version, kind=kind), "run-1")


def test_cronjob_without_job_template_is_refused():
    broken = cronjob()
    del broken["spec"]["jobTemplate"]
    with pytest.raises(InvalidCronJobError, match="jobTemplate"):
        J.job_from_cronjob(broken, "run-1")


@pytest.mark.parametrize("name", ["Run-1", "run_1", "-run", "a" * 64, ""])
def test_invalid_job_names_are_refused(name):
    with pytest.raises(InvalidCronJobError):
        J.job_from_cronjob(cronjob(), name)


@pytest.mark.parametrize(
    "cronjob_name",
    ["helmsman-cronjob", "h", "a" * 52, "b" * 60, "c" * 63, "x" * 253, "helmsman.cronjob.example", "a" * 52 + "-" * 8],
)
def test_apply_job_name_is_a_short_dns1123_label(cronjob_name):
    name = J.apply_job_name(cronjob_name, "seed")
    assert len(name) <= 63
    assert DNS1123.match(name), name
    assert J.is_dns1123_label(name)


def test_apply_job_name_keeps_the_cronjob_name_and_depends_on_the_seed():
    assert J.apply_job_name("helmsman-cronjob", "a").startswith("helmsman-cronjob-")
    assert J.apply_job_name("helmsman-cronjob", "a") == J.apply_job_name("helmsman-cronjob", "a")
    assert J.apply_job_name("helmsman-cronjob", "a") != J.apply_job_name("helmsman-cronjob", "b")
    long_name = "b" * 60
    assert J.apply_job_name(long_name, "a").startswith("b" * 52 + "-")


def test_sixty_character_cronjob_builds_a_valid_job():
    source = cronjob(name="h" * 60)
    name = J.next_job_name(source, 1)
    job = J.job_from_cronjob(source, name)
    assert len(job["metadata"]["name"]) <= 63
    assert DNS1123.match(job["metadata"]["name"])
    assert len(J.apply_label_value("h" * 60)) <= 63
    assert len(J.apply_label_value("h" * 100)) <= 63


def condition(kind: str, status: str = "True") -> dict[str, str]:
    return {"type": kind, "status": status, "lastTransitionTime": "2025-01-01T00:00:00Z"}


@pytest.mark.parametrize(
    ("job", "state"),
    [
        ({"spec": {}}, "running"),
        ({"spec": {"suspend": False}, "status": {"startTime": "t"}}, "running"),
        ({"spec": {"suspend": True}}, "queued"),
        ({"spec": {"suspend": True}, "status": {"conditions": [condition("Suspended")]}}, "queued"),
        ({"spec": {}, "status": {"conditions": [condition("SuccessCriteriaMet"), condition("Complete")]}},
         "succeeded"),
        ({"spec": {}, "status": {"conditions": [condition("FailureTarget"), condition("Failed")]}}, "failed"),
        ({"spec": {}, "status": {"conditions": [condition("Complete", "False")]}}, "running"),
        ({"spec": {}, "status": {"conditions": [condition("Failed", "Unknown")]}}, "running"),
        ({"spec": {}, "status": {"conditions": [condition("SuccessCriteriaMet")]}}, "running"),
        ({"spec": {"suspend": True}, "status": {"conditions": [condition("Failed")]}}, "failed"),
    ],
)
def test_job_state(job, state):
    assert J.job_state(job) == state


def apply_job(sequence: int, state: str, request_ids: list[str] | None = None) -> dict[str, Any]:
    annotations = {J.SEQUENCE_ANNOTATION: str(sequence)}
    if request_ids:
        annotations[J.REQUEST_IDS_ANNOTATION] = J.encode_request_ids(request_ids)
    job: dict[str, Any] = {
        "metadata": {
            "name": f"job-{sequence}",
            "labels": {J.APPLY_LABEL: "helmsman-cronjob"},
            "annotations": annotations,
            "resourceVersion": str(sequence),
            "ownerReferences": owner(),
        },
        "spec": {"suspend": state == "queued"},
        "status": {},
    }
    if state == "succeeded":
        job["status"]["conditions"] = [condition("Complete")]
    if state == "failed":
        job["status"]["conditions"] = [condition("Failed")]
    return job


SOURCE = cronjob()


@pytest.mark.parametrize(
    ("jobs", "request_id", "expected"),
    [
        ([], None, J.Create(J.next_job_name(SOURCE, 1), 1, suspend=False)),
        ([apply_job(1, "succeeded")], None, J.Create(J.next_job_name(SOURCE, 2), 2, suspend=False)),
        ([apply_job(4, "failed"), apply_job(3, "succeeded")], None, J.Create(J.next_job_name(SOURCE, 5), 5, False)),
        ([apply_job(1, "running")], None, J.Create(J.next_job_name(SOURCE, 2), 2, suspend=True)),
        ([apply_job(1, "running"), apply_job(2, "queued")], None, J.Coalesce(apply_job(2, "queued"))),
        ([apply_job(1, "succeeded"), apply_job(2, "queued")], None, J.Resume(apply_job(2, "queued"))),
        ([apply_job(1, "running", ["r1"])], "r1", J.Duplicate(apply_job(1, "running", ["r1"]))),
        ([apply_job(1, "succeeded", ["r1", "r2"])], "r2", J.Duplicate(apply_job(1, "succeeded", ["r1", "r2"]))),
        ([apply_job(1, "running", ["r1"])], "r9", J.Create(J.next_job_name(SOURCE, 2), 2, suspend=True)),
    ],
    ids=["idle", "after-success", "after-failure", "running", "running-and-waiting", "finished-and-waiting",
         "duplicate-creator", "duplicate-coalesced", "new-request-id"],
)
def test_plan_apply(jobs, request_id, expected):
    assert J.plan_apply(SOURCE, jobs, request_id) == expected


def test_plan_reconcile_resumes_only_when_nothing_runs():
    assert J.plan_reconcile([apply_job(1, "running"), apply_job(2, "queued")]) is None
    assert J.plan_reconcile([apply_job(1, "failed"), apply_job(2, "queued")]) == apply_job(2, "queued")
    assert J.plan_reconcile([apply_job(1, "succeeded")]) is None
    assert J.plan_reconcile([]) is None


def test_next_names_differ_per_sequence_and_cronjob_uid():
    other = cronjob()
    other["metadata"]["uid"] = "another-uid"
    names = {J.next_job_name(SOURCE, n) for n in range(1, 200)}
    assert len(names) == 199
    assert J.next_job_name(other, 1) != J.next_job_name(SOURCE, 1)


def test_summary_of_a_failed_job_uses_the_failed_condition_time():
    job = apply_job(3, "failed")
    job["metadata"]["annotations"][J.REASON_ANNOTATION] = "chart bump"
    summary = J.summarize_job(job)
    assert summary["state"] == "failed"
    assert summary["finished_at"] == "2025-01-01T00:00:00Z"
    assert summary["reason"] == "chart bump"
    assert summary["sequence"] == 3


# ----- runs of the CronJob that helm-api did not create ---------------------------------------------------


def foreign_job(name: str, state: str, *, scheduled: bool = False, created: str = "2025-01-01T00:00:00Z") -> dict:
    """A Job of the CronJob made by someone else: the CronJob controller (scheduled) or `kubectl create job
    --from` (manual), with the metadata each of them sets."""
    ref: dict[str, Any] = {"apiVersion": "batch/v1", "kind": "CronJob", "name": "helmsman-cronjob", "uid": UID,
                           "controller": True}
    if scheduled:
        ref["blockOwnerDeletion"] = True
        annotations = {"batch.kubernetes.io/cronjob-scheduled-timestamp": created}
    else:
        annotations = {"cronjob.kubernetes.io/instantiate": "manual"}
    job: dict[str, Any] = {
        "metadata": {"name": name, "labels": {"app": "helmsman"}, "annotations": annotations,
                     "ownerReferences": [ref], "creationTimestamp": created, "resourceVersion": "7"},
        "spec": {"suspend": state == "queued"},
        "status": {},
    }
    if state == "succeeded":
        job["status"]["conditions"] = [condition("Complete")]
    if state == "failed":
        job["status"]["conditions"] = [condition("Failed")]
    return job


@pytest.mark.parametrize(
    ("refs", "expected"),
    [
        (owner(), True),
        ([{**owner()[0], "blockOwnerDeletion": True}], True),  # the CronJob controller's own Jobs
        ([{**owner()[0], "uid": "an-earlier-cronjob"}], True),  # matched by name, like the CronJob controller
        ([{**owner()[0], "controller": False}], False),
        ([{k: v for k, v in owner()[0].items() if k != "controller"}], False),
        ([{**owner()[0], "name": "other-cronjob"}], False),
        ([{**owner()[0], "kind": "Deployment", "apiVersion": "apps/v1"}], False),
        ([{**owner()[0], "apiVersion": "example.com/v1"}], False),
        ([{**owner()[0], "controller": False}, {**owner()[0]}], True),
        ([], False),
        (None, False),
    ],
    ids=["kubectl", "cronjob-controller", "older-uid", "not-controller", "no-controller-field", "other-name",
         "other-kind", "other-group", "second-ref", "empty", "missing"],
)
def test_is_run_of_follows_the_controller_reference(refs, expected):
    job = {"metadata": {"name": "x", "ownerReferences": refs}}
    assert J.is_run_of(job, "helmsman-cronjob") is expected


@pytest.mark.parametrize(
    ("jobs", "request_id", "expected"),
    [
        ([foreign_job("manual-1", "running")], None, J.Create(J.next_job_name(SOURCE, 1), 1, suspend=True)),
        ([foreign_job("cron-1", "running", scheduled=True)], None,
         J.Create(J.next_job_name(SOURCE, 1), 1, suspend=True)),
        ([foreign_job("manual-1", "running"), apply_job(3, "queued")], None, J.Coalesce(apply_job(3, "queued"))),
        ([foreign_job("manual-1", "succeeded"), apply_job(3, "queued")], None, J.Resume(apply_job(3, "queued"))),
        ([apply_job(2, "succeeded"), foreign_job("manual-1", "running")], None,
         J.Create(J.next_job_name(SOURCE, 3), 3, suspend=True)),
        # A suspended Job of someone else's runs nothing and is not ours to start.
        ([foreign_job("manual-1", "queued")], None, J.Create(J.next_job_name(SOURCE, 1), 1, suspend=False)),
        ([foreign_job("manual-1", "failed")], None, J.Create(J.next_job_name(SOURCE, 1), 1, suspend=False)),
    ],
    ids=["manual-running", "scheduled-running", "manual-running-ours-waiting", "manual-done-ours-waiting",
         "sequence-from-ours", "manual-suspended", "manual-failed"],
)
def test_plan_apply_counts_every_run_of_the_cronjob(jobs, request_id, expected):
    assert J.plan_apply(SOURCE, jobs, request_id) == expected


def test_plan_reconcile_waits_for_a_foreign_run():
    assert J.plan_reconcile([foreign_job("cron-1", "running", scheduled=True), apply_job(2, "queued")]) is None
    assert J.plan_reconcile([foreign_job("cron-1", "failed"), apply_job(2, "queued")]) == apply_job(2, "queued")
    assert J.plan_reconcile([foreign_job("manual-1", "queued")]) is None


def test_origin_of_each_kind_of_run():
    created = apply_job(1, "running")
    created["metadata"]["annotations"][J.ORIGIN_ANNOTATION] = "apply"
    scheduled = apply_job(2, "running")
    scheduled["metadata"]["annotations"][J.ORIGIN_ANNOTATION] = "schedule"
    # Without our origin annotation the creator's request id tells (the first one recorded).
    by_id = apply_job(3, "running", ["schedule/2025-01-01T03:00:00Z", "push-1"])
    plain = apply_job(4, "running", ["push-1", "schedule/2025-01-01T03:00:00Z"])
    assert [J.job_origin(job) for job in (created, scheduled, by_id, plain)] == ["apply", "schedule", "schedule",
                                                                                 "apply"]
    assert J.job_origin(foreign_job("manual-1", "running")) == "manual"
    assert J.job_origin(foreign_job("cron-1", "running", scheduled=True)) == "manual"
    summary = J.summarize_job(foreign_job("manual-1", "running"))
    assert (summary["origin"], summary["sequence"], summary["reason"]) == ("manual", 0, None)


def test_newest_first_by_creation_time_ours_and_foreign_alike():
    ours_old = apply_job(7, "succeeded")
    ours_old["metadata"]["creationTimestamp"] = "2025-01-01T01:00:00Z"
    ours_new = apply_job(8, "queued")
    ours_new["metadata"]["creationTimestamp"] = "2025-01-01T03:00:00Z"
    ours_same_second = apply_job(9, "queued")
    ours_same_second["metadata"]["creationTimestamp"] = "2025-01-01T03:00:00Z"
    manual = foreign_job("manual-1", "running", created="2025-01-01T02:00:00Z")
    cron = foreign_job("cron-1", "succeeded", scheduled=True, created="2025-01-01T00:00:00Z")
    ordered = J.newest_first([cron, ours_old, manual, ours_new, ours_same_second])
    assert [job["metadata"]["name"] for job in ordered] == ["job-9", "job-8", "manual-1", "job-7", "cron-1"]


CHART_CONTAINER = {"name": "helmsman", "image": "helmsman:v3", "command": ["helmsman", "--apply", "-f", "a.yaml"]}


def job_with(*containers: dict) -> dict:
    return {"metadata": {"name": "run-1"}, "spec": {"template": {"spec": {"containers": list(containers)}}}}


@pytest.mark.parametrize(
    ("containers", "expected"),
    [
        ([CHART_CONTAINER], [{**CHART_CONTAINER, "command": [*CHART_CONTAINER["command"], "--always-upgrade"]}]),
        ([{"name": "x", "args": ["--apply"]}], [{"name": "x", "args": ["--apply", "--always-upgrade"]}]),
        ([{"name": "x", "command": ["helmsman"], "args": ["--apply"]}],
         [{"name": "x", "command": ["helmsman"], "args": ["--apply", "--always-upgrade"]}]),
        ([{"name": "x", "command": ["helmsman", "--apply", "--always-upgrade"]}],
         [{"name": "x", "command": ["helmsman", "--apply", "--always-upgrade"]}]),
        ([{"name": "sidecar", "args": ["run"]}, CHART_CONTAINER],
         [{"name": "sidecar", "args": ["run"]},
          {**CHART_CONTAINER, "command": [*CHART_CONTAINER["command"], "--always-upgrade"]}]),
    ],
    ids=["chart-command", "args-only", "command-and-args", "already-there", "named-among-several"],
)
def test_with_helmsman_flag(containers, expected):
    job = job_with(*copy.deepcopy(containers))
    before = copy.deepcopy(job)
    flagged = J.with_helmsman_flag(job, J.ALWAYS_UPGRADE_FLAG)
    assert flagged["spec"]["template"]["spec"]["containers"] == expected
    assert job == before  # pure: a copy


@pytest.mark.parametrize(
    "containers",
    [[{"name": "a", "args": ["x"]}, {"name": "b", "args": ["y"]}], [{"name": "helmsman", "image": "i"}], []],
    ids=["which-container", "entrypoint-only", "none"],
)
def test_with_helmsman_flag_refuses_what_it_cannot_extend(containers):
    with pytest.raises(InvalidCronJobError, match="cannot add --always-upgrade"):
        J.with_helmsman_flag(job_with(*containers), J.ALWAYS_UPGRADE_FLAG)
