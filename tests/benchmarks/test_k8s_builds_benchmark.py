"""The Kubernetes build benchmark at a tiny size: it measures the poller against the fake in a child process and
produces its figures and section; and the drain model behaves as its formulas say."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from benchmarks import k8s_builds as K
from benchmarks.__main__ import render


def test_k8s_builds_section():
    section = K.run(builds=2, lengths=(30.0,), concurrencies=(1, 16))
    assert section.error is None
    for key in ("cpu_per_build.30", "cpu_share.30", "wall_per_build.30", "drain.docker.1.simulated",
                "drain.kubernetes.16.simulated", "drain.docker.16.paper", "drain.kubernetes.1.paper"):
        assert key in section.figures and not math.isnan(section.figures[key]), key
    assert section.figures["cpu_per_build.30"] > 0
    assert section.goals and all(t.rows for t in section.tables)
    assert f"## {section.title}" in render([section], "benchmarks/run --smoke", datetime.now(UTC), 1.0)


def test_drain_model():
    model = K.Model()
    # One at a time, both backends take N builds one after the other; Kubernetes adds its start-up to each.
    assert K.paper_drain(model, "docker", 1, 0.0) == 50 * (120.0 + 0.3)
    assert K.paper_drain(model, "kubernetes", 1, 0.0) == 50 * (120.0 + 15.0 + 2.5)
    # Past 4 builds at once one 8-core engine is full (2 cores each): Docker stops gaining, Kubernetes does not.
    assert K.paper_drain(model, "docker", 16, 0.0) >= 50 * 120.0 * 2 / 8
    assert K.paper_drain(model, "kubernetes", 16, 0.0) == 4 * (120.0 + 17.5)
    for k in (1, 4, 16):
        docker, kube = (K.simulate_drain(model, b, k, 0.05) for b in ("docker", "kubernetes"))
        assert docker > 0 and kube > 0
    assert K.simulate_drain(model, "kubernetes", 16, 0.05) < K.simulate_drain(model, "docker", 16, 0.05) / 2
    # Never two builds of one repository at once: one repository's 50 builds take 50 rounds at any concurrency.
    single = K.Model(repositories=1)
    assert K.simulate_drain(single, "kubernetes", 16, 0.0) == K.simulate_drain(single, "kubernetes", 1, 0.0)
