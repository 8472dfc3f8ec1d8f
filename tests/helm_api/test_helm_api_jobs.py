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
        "metadata": {"name": f"job-{sequence}", "annotations": annotations, "resourceVersion": str(sequence)},
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
