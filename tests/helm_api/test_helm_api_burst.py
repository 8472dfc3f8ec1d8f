"""A burst of 100 concurrent POST /apply against a real threaded server leaves one running and one waiting Job."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import requests
from helm_api_testing import AUTH, NAMESPACE

from helm_api import jobs as J


def burst(url: str, count: int, body_for=lambda i: None) -> list[requests.Response]:
    def call(i: int) -> requests.Response:
        return requests.post(f"{url}/apply", json=body_for(i), headers=AUTH, timeout=60)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(call, range(count)))


def test_burst_of_100_on_an_idle_system(make_app, serve, kube, cronjob):
    url = serve(make_app())
    answers = burst(url, 100)
    assert [a.status_code for a in answers] == [202] * 100
    bodies = [a.json() for a in answers]
    jobs = kube.jobs(NAMESPACE)
    assert sorted(J.job_state(j) for j in jobs) == ["queued", "running"]
    assert len(kube.posted_jobs()) >= 2
    assert sum(1 for b in bodies if b["created"]) == 2
    assert sum(1 for b in bodies if b["coalesced"]) == 98
    assert {b["job"] for b in bodies} == {j["metadata"]["name"] for j in jobs}


def test_burst_across_three_replicas_with_request_ids(make_app, serve, kube, cronjob):
    urls = [serve(make_app()) for _ in range(3)]

    def call(i: int) -> requests.Response:
        return requests.post(
            f"{urls[i % 3]}/apply", json={"request_id": f"change-{i % 20}"}, headers=AUTH, timeout=60
        )

    with ThreadPoolExecutor(max_workers=60) as pool:
        answers = list(pool.map(call, range(60)))
    assert all(a.status_code in (200, 202) for a in answers), [a.json() for a in answers if a.status_code >= 300]
    jobs = kube.jobs(NAMESPACE)
    assert sorted(J.job_state(j) for j in jobs) == ["queued", "running"]
    recorded = [rid for job in jobs for rid in J.job_request_ids(job)]
    assert sorted(recorded) == sorted({f"change-{i}" for i in range(20)})  # each id on exactly one Job
