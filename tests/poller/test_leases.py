"""A failed write of a build's outcome never blocks its repository: claims are leases (real engine and registry).

The write fails for real: another connection holds the database's write lock (as a stuck backup or a second
process would), so SQLite answers "database is locked". While writes fail the store says so, /readyz is not ready
and `poller_state_writable` is 0; liveness stays ok (a full disk must not restart-loop the pod).
"""

from __future__ import annotations

import sqlite3

import pytest
import requests

from polling_server.builds.docker_engine import ImageBuilder
from polling_server.builds.registry import registry_client_for
from polling_server.builds.tag_mover import TagMover
from polling_server.builds.worker import BuildWorker, lease_seconds
from polling_server.config import parse_settings
from polling_server.daemon import Daemon
from polling_server.metrics import Metrics
from polling_server.planning.model import BuildStatus
from polling_server.state import StateStore
from tests.clocks import Clock
from tests.gitrepo import GitRepo
from tests.poller.build_helpers import dockerfile, enqueue, make_settings, unique_image


class Locker:
    """Holds the database's write lock from a connection of its own."""

    def __init__(self, path):
        self.db = sqlite3.connect(str(path), isolation_level=None, timeout=1, check_same_thread=False)

    def lock(self):
        self.db.execute("BEGIN IMMEDIATE")

    def release(self):
        self.db.execute("ROLLBACK")
        self.db.close()


@pytest.mark.engine
def test_a_lost_outcome_is_built_again_when_its_lease_ends(tmp_path, registry, base_image):
    root = tmp_path / "git"
    root.mkdir()
    repo = GitRepo(root)
    sha = repo.commit({"Dockerfile": dockerfile(base_image), "marker.txt": "lease\n"})
    image = unique_image()
    settings = make_settings(tmp_path, registry, [{"name": "app", "url": repo.url, "image": image}],
                             timeout_seconds=60)
    clock = Clock()
    store = StateStore(tmp_path / "state.db", clock=clock, busy_timeout=0.2)
    build_id = enqueue(store, "app", sha)
    locker = Locker(tmp_path / "state.db")
    real = ImageBuilder(settings)

    class LockDuringBuild:
        def build(self, build, repo_settings, on_log=None):
            result = real.build(build, repo_settings, on_log)
            if not getattr(self, "locked", False):
                self.locked = True
                locker.lock()  # the outcome cannot be written now
            return result

    metrics = Metrics()
    worker = BuildWorker(settings, store, LockDuringBuild(), metrics,
                         tag_mover=TagMover(settings, store, registry_client_for(settings), metrics))
    worker.run_until_idle()
    assert store.writable is False and "locked" in store.last_write_error
    assert metrics.registry.get_sample_value("poller_state_writable") == 0
    locker.release()

    # The build is still recorded running, under its lease: nothing else of the repository starts yet.
    assert store.build(build_id).status is BuildStatus.RUNNING
    assert store.claim_build() is None
    # Once the lease has ended the build is due again (the push is idempotent), and then it is recorded.
    clock.t += lease_seconds(settings.builds.timeout_seconds) + 1
    (done,) = worker.run_until_idle()
    assert done.id == build_id and done.status is BuildStatus.SUCCEEDED and done.attempts == 1
    assert store.writable is True and metrics.registry.get_sample_value("poller_state_writable") == 1
    assert registry.manifest(image, "staging")[0] == done.digest
    # The repository is not blocked: the next build runs.
    second = enqueue(store, "app", repo.commit({"marker.txt": "next\n"}))
    (after,) = worker.run_until_idle()
    assert after.id == second and after.status is BuildStatus.SUCCEEDED


def test_readiness_reports_a_store_that_cannot_write_and_liveness_does_not(tmp_path):
    settings = parse_settings({"state_path": str(tmp_path / "s.db"), "poll_interval_seconds": 30,
                               "http": {"host": "127.0.0.1", "port": 0}, "repositories": []}, env={})
    store = StateStore(settings.state_path, busy_timeout=0.2)
    daemon = Daemon(settings, store=store, tag_mover=None)
    server = daemon.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert requests.get(f"{base}/readyz", timeout=10).status_code == 200
        locker = Locker(tmp_path / "s.db")
        locker.lock()
        with pytest.raises(Exception, match="cannot write the state"):
            enqueue(store, "app", "a" * 40)
        ready = requests.get(f"{base}/readyz", timeout=10)
        assert ready.status_code == 503
        assert ready.json()["state_writable"] is False and "locked" in ready.json()["state_error"]
        assert requests.get(f"{base}/healthz", timeout=10).status_code == 200
        assert "poller_state_writable 0.0" in requests.get(f"{base}/metrics", timeout=10).text
        locker.release()
        enqueue(store, "app", "b" * 40)  # a write succeeds again
        assert requests.get(f"{base}/readyz", timeout=10).status_code == 200
    finally:
        daemon.stop()
