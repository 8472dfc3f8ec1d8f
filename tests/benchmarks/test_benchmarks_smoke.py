"""A quick run of every benchmark at tiny sizes, so that they keep working: each must produce its figures and its
section of BENCHMARKS.md. The figures themselves are not judged here (benchmarks are not pass/fail)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from benchmarks import builds, chart_index, detection, helm_api_load, poll_cycle, request_budget, webhooks
from benchmarks.__main__ import render
from benchmarks.common import Section
from tests.fixture_paths import OPENFAAS

SMALL_INDEX = OPENFAAS


def _check(section: Section, keys: list[str]) -> None:
    assert section.error is None
    missing = [k for k in keys if k not in section.figures]
    assert not missing, f"{section.key}: figures missing: {missing}"
    for k in keys:
        assert isinstance(section.figures[k], int | float) and not math.isnan(section.figures[k]), k
    assert section.tables and all(t.rows for t in section.tables)
    assert section.goals
    text = render([section], "benchmarks/run --smoke", datetime.now(UTC), 1.0)
    assert f"## {section.title}" in text and "| " + " | ".join(section.tables[0].columns) + " |" in text


def test_poll_cycle():
    section = poll_cycle.run(sizes=(3,), cycles=1, baseline_cycles=1)
    _check(section, ["ours.3.wall", "ours.3.cpu", "ours.3.rss_mb", "ours.3.server_counted_per_cycle",
                     "baseline.3.wall", "baseline.3.cpu", "baseline.3.counted_per_cycle"])
    assert section.figures["baseline.3.counted_per_cycle"] == 3  # the baseline's requests all count


def test_detection_latency():
    section = detection.run(repos=2, hours=2, mean_push_interval=900)
    _check(section, ["ours.pushes", "ours.missed", "ours.p50", "ours.max", "baseline.missed", "webhooks.p50",
                     "webhooks.max_delivered", "webhooks.polling_alone_p50"])
    f = section.figures
    assert f["ours.pushes"] > 0
    # Webhooks + polling: the same pushes; the delivered ones are planned on arrival, the lost ones still found.
    assert f["webhooks.pushes"] == f["ours.pushes"]
    assert 0 < f["webhooks.delivered"] <= f["webhooks.pushes"]
    assert f["webhooks.missed"] == 0
    assert f["webhooks.max_delivered"] <= detection.WEBHOOK_DELAY[1]
    assert f["webhooks.p50"] < f["webhooks.polling_alone_p50"]


def test_request_budget():
    # A budget of 60 points a minute, so that 40 repositories are enough to need it.
    section = request_budget.run(sizes=(6, 40), orgs=2, minutes=4, steady_from=2, points_per_minute=60)
    _check(section, [f"{m}.{n}.{k}" for m in ("per_repo", "org", "old") for n in (6, 40)
                     for k in ("worst_window", "steady_per_min", "steady_feeds_per_min", "unbudgeted")])
    f = section.figures
    ceiling = f["ceiling"]
    assert ceiling == 70  # 60 a minute + a burst of ten seconds' worth
    for n in (6, 40):
        assert f[f"old.{n}.worst_window"] == 3 * n  # every feed, branch and tags at the same instant
        for mode in ("per_repo", "org"):
            assert 0 < f[f"{mode}.{n}.worst_window"] <= ceiling, (mode, n)
            assert f[f"{mode}.{n}.unbudgeted"] == 0, (mode, n)  # every request went through the budget
    assert f["old.40.worst_window"] > ceiling  # so the budget had something to hold back
    assert 0 < f["org.40.steady_feeds_per_min"] < f["per_repo.40.steady_feeds_per_min"]


def test_webhook_latency():
    scenario = webhooks.Scenario("one", "1 repository", 1, deliveries=4, spacing=0.2, after_start=0.5, deadline=60)
    section = webhooks.run((scenario,))
    _check(section, ["one.answer_p50", "one.planned_p50", "one.planned_p99", "one.started_p99"])
    f = section.figures
    assert f["one.accepted"] == 4 and f["one.missing"] == 0
    # Every delivery was planned, then started, after its POST (each start follows its plan).
    assert 0 < f["one.planned_p50"] <= f["one.started_p50"] and f["one.planned_p99"] <= f["one.started_p99"]


def test_chart_index():
    section = chart_index.run(copies=2, repeat=1, unchanged_polls=1, text=SMALL_INDEX.read_text())
    _check(section, [f"{k}.{f}" for k in ("real", "x2") for f in
                     ("ours_parse_diff", "baseline_parse_diff", "ours_unchanged_poll", "baseline_poll")])
    assert section.figures["x2.versions"] == 2 * section.figures["real.versions"] - 1


def test_helm_api_load():
    section = helm_api_load.run(sequential=3, burst=5)
    _check(section, ["ours.seq_p50", "ours.seq_p99", "ours.burst_p99", "ours.burst_running",
                     "baseline.burst_jobs_created"])


@pytest.mark.engine
def test_builds(docker_client, registry):
    section = builds.run(rounds=1)
    _check(section, ["daemon_cold", "daemon_cached", "engine_cold", "bare_cold", "overhead_cold"])
