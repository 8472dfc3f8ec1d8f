"""The daemon under APScheduler: polls on its interval, builds beside polling, serves /healthz and /metrics."""

from __future__ import annotations

import time

import requests

from polling_server.builds.docker_engine import BuildResult
from polling_server.config import parse_settings
from polling_server.daemon import Daemon
from tests.gitrepo import GitRepo


class RecordingBuilder:
    """Stands in for the Docker builder (tested on its own against the real engine): records what it built."""

    def __init__(self):
        self.built = []

    def build(self, build, repo, on_log=None):
        self.built.append((build.ref, build.sha))
        return BuildResult(image=f"r/{repo.image}", tags=(f"r/{repo.image}:staging",), digest="sha256:" + "0" * 64)


def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_daemon_polls_builds_and_reports_health(tmp_path):
    repo = GitRepo(tmp_path)
    repo.commit({"a": "1"})
    settings = parse_settings({
        "state_path": str(tmp_path / "state.db"), "poll_interval_seconds": 0.2,
        "http": {"host": "127.0.0.1", "port": 0},
        "repositories": [{"url": repo.url, "name": "app", "image": "team/app"}]}, env={})
    builder = RecordingBuilder()
    daemon = Daemon(settings, builder=builder)
    server = daemon.start()
    try:
        assert wait_for(lambda: daemon.store.repo_state("app").baseline)
        sha = repo.commit({"a": "2"})
        assert wait_for(lambda: builder.built == [("master", sha)])
        assert wait_for(lambda: daemon.store.builds()[0].status.value == "succeeded")
        health = requests.get(f"http://127.0.0.1:{server.port}/healthz", timeout=5)
        assert health.status_code == 200 and health.json()["scheduler_running"] is True
        metrics = requests.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5).text
        assert 'poller_builds_planned_total{kind="staging"} 1.0' in metrics
        assert 'poller_builds_total{outcome="succeeded"} 1.0' in metrics
        assert requests.get(f"http://127.0.0.1:{server.port}/nope", timeout=5).status_code == 404
    finally:
        daemon.stop()
        server.stop()
    # Stopped: nothing runs any more.
    assert daemon.scheduler.running is False


def test_health_fails_when_polls_stop(tmp_path):
    settings = parse_settings({"state_path": str(tmp_path / "s.db"), "poll_interval_seconds": 30,
                               "http": {"enabled": False}, "repositories": []}, env={})
    daemon = Daemon(settings, builder=RecordingBuilder())
    ok, details = daemon.health()
    assert not ok and details["scheduler_running"] is False
    daemon.start()
    try:
        assert wait_for(lambda: daemon.poller.last_cycle_at is not None)
        assert daemon.health()[0]
        daemon.poller.last_cycle_at = time.time() - 3600  # the poll job has not run for an hour
        assert daemon.health()[0] is False
    finally:
        daemon.stop()


def test_fresh_metrics_show_every_series_at_zero_and_no_created(tmp_path):
    settings = parse_settings({"state_path": str(tmp_path / "s.db"), "http": {"host": "127.0.0.1", "port": 0},
                               "repositories": []}, env={})
    daemon = Daemon(settings, builder=RecordingBuilder(), tag_mover=None)
    server = daemon.start()
    try:
        text = requests.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5).text
        ready = requests.get(f"http://127.0.0.1:{server.port}/readyz", timeout=5)
    finally:
        daemon.stop()
    assert "_created" not in text
    for series in ('poller_builds_total{outcome="failed"} 0.0', 'poller_builds_total{outcome="succeeded"} 0.0',
                   'poller_apply_requests_total{outcome="accepted"} 0.0',
                   'poller_polls_total{outcome="failed",source="github"} 0.0',
                   'poller_builds_planned_total{kind="release"} 0.0', "poller_state_writable 1.0"):
        assert series in text, series
    assert ready.status_code == 200 and ready.json()["state_writable"] is True
