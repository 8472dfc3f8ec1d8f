"""Benchmark 4: the helm API's POST /apply: latency of calls one after another and of a concurrent burst, and how
many Jobs the burst creates, against the Kubernetes API fake (tests/kube_fake.py, over real HTTP with the real
kubernetes client).

The baseline is a naive API on the same stack (Flask, werkzeug's threaded server, the kubernetes client): every
call reads the CronJob and creates a Job from it, with no queue and no coalescing.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from werkzeug.serving import make_server

from benchmarks.common import Goal, Section, Table, fmt_ratio, fmt_s, percentile, ratio

TOKEN = "bench-token"
NAMESPACE = "cd"
CRONJOB = "helmsman-cronjob"


def _cronjob() -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": CRONJOB, "namespace": NAMESPACE, "labels": {"app.kubernetes.io/name": "helmsman"}},
        "spec": {
            "schedule": "0 3 * * *", "suspend": True, "concurrencyPolicy": "Forbid",
            "jobTemplate": {
                "metadata": {"labels": {"app.kubernetes.io/name": "helmsman"}},
                "spec": {"backoffLimit": 0, "template": {"spec": {
                    "restartPolicy": "Never", "serviceAccountName": "helmsman",
                    "containers": [{"name": "helmsman", "image": "ghcr.io/mkubaczyk/helmsman:v3.17.1",
                                    "command": ["helmsman", "--apply", "-f", "/dss/production.yaml"]}]}}},
            },
        },
    }


def _serve(app: Any) -> tuple[Any, str]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"


def _naive_app(api_client: Any) -> Any:
    from flask import Flask, jsonify
    from kubernetes import client as k8s

    from helm_api.jobs import job_from_cronjob

    app = Flask("naive-apply")
    batch = k8s.BatchV1Api(api_client)
    counter = itertools.count()

    @app.post("/apply")
    def apply() -> Any:
        cronjob = api_client.sanitize_for_serialization(batch.read_namespaced_cron_job(CRONJOB, NAMESPACE))
        job = job_from_cronjob(cronjob, f"{CRONJOB}-naive-{next(counter)}")
        created = batch.create_namespaced_job(NAMESPACE, job)
        return jsonify({"job": created.metadata.name}), 202

    return app


def _calls(url: str, count: int, concurrency: int) -> tuple[list[float], list[int], float]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    local = threading.local()

    def call(i: int) -> tuple[float, int]:
        s = getattr(local, "s", None) or requests.Session()
        local.s = s
        t = time.perf_counter()
        r = s.post(f"{url}/apply", json={"reason": f"bench {i}"}, headers=headers, timeout=120)
        return time.perf_counter() - t, r.status_code

    t0 = time.perf_counter()
    if concurrency == 1:
        results = [call(i) for i in range(count)]
    else:
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            results = list(pool.map(call, range(count)))
    return [r[0] for r in results], [r[1] for r in results], time.perf_counter() - t0


def _job_states(kube: Any) -> dict[str, int]:
    from helm_api.jobs import job_state

    states: dict[str, int] = {}
    for job in kube.jobs(NAMESPACE):
        s = job_state(job)
        states[s] = states.get(s, 0) + 1
    return states


def measure(sequential: int, burst: int, naive: bool) -> dict:
    from tests.kube_fake import KubeFake

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per call would swamp the output
    result: dict = {}
    with KubeFake() as kube:
        kube.add_cronjob(_cronjob())
        if naive:
            app = _naive_app(kube.new_api_client())
        else:
            from helm_api.app import create_app

            app = create_app({"HELM_API_TOKEN": TOKEN, "HELM_API_NAMESPACE": NAMESPACE, "HELM_API_CRONJOB": CRONJOB},
                             api_client=kube.new_api_client(), start_reconciler=False)
        server, url = _serve(app)
        try:
            lat, codes, _ = _calls(url, sequential, 1)
            assert all(c in (200, 202) for c in codes), codes
            result["seq_p50"], result["seq_p99"] = percentile(lat, 50), percentile(lat, 99)
            # The burst starts from an idle system: clear the Jobs the sequential calls left.
            with kube.lock:
                kube._jobs.clear()
            posted_before = len(kube.posted_jobs())
            lat, codes, wall = _calls(url, burst, burst)
            assert all(c in (200, 202) for c in codes), codes
            result["burst_p50"], result["burst_p99"] = percentile(lat, 50), percentile(lat, 99)
            result["burst_wall"] = wall
            states = _job_states(kube)
            result["burst_running"] = states.get("running", 0)
            result["burst_waiting"] = states.get("queued", 0)
            result["burst_jobs_created"] = len(kube.posted_jobs()) - posted_before
            result["burst_jobs_total"] = sum(states.values())
        finally:
            server.shutdown()
            server.server_close()
            if not naive:
                app.extensions["helm_api"].reconciler.stop()
                app.extensions["helm_api"].backend.close()
    return result


def run(sequential: int = 200, burst: int = 200) -> Section:
    section = Section("helm_api", "4. Helm API: POST /apply latency and a concurrent burst")
    ours = measure(sequential, burst, naive=False)
    base = measure(sequential, burst, naive=True)
    t = Table(f"{sequential} calls one after another, then a burst of {burst} concurrent calls",
              ["figure", "ours", "baseline (a Job per call)", "baseline / ours"])
    for key, label in (("seq_p50", "sequential p50"), ("seq_p99", "sequential p99"), ("burst_p50", "burst p50"),
                       ("burst_p99", "burst p99"), ("burst_wall", "burst wall time")):
        t.rows.append([label, fmt_s(ours[key]), fmt_s(base[key]), fmt_ratio(ratio(base[key], ours[key]))])
    t.rows.append(["Jobs after the burst (running + waiting)",
                   f"{ours['burst_running']} + {ours['burst_waiting']}",
                   f"{base['burst_running']} + {base['burst_waiting']}",
                   fmt_ratio(ratio(base["burst_jobs_total"], ours["burst_jobs_total"]))])
    t.rows.append(["Job creations posted during the burst", str(ours["burst_jobs_created"]),
                   str(base["burst_jobs_created"]), ""])
    section.tables.append(t)
    for k, v in ours.items():
        section.figures[f"ours.{k}"] = v
    for k, v in base.items():
        section.figures[f"baseline.{k}"] = v
    section.goals.append(Goal("the burst leaves 1 running Job + at most 1 waiting",
                              ours["burst_running"] == 1 and ours["burst_waiting"] <= 1,
                              f"{ours['burst_running']} running + {ours['burst_waiting']} waiting"))
    section.notes.append(
        "Served by werkzeug's threaded server (as in tests/helm_api), reconciler thread off, against "
        "tests/kube_fake.py; each client thread keeps one connection. Sequential calls after the first two "
        "coalesce onto the waiting Job; the Jobs they leave are cleared before the burst, which so starts from an "
        "idle system. Latency = client-side time of each POST.")
    return section
