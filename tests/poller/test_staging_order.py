"""`:staging` only ever moves to the build planned last for its branch: real engine, real registry.

The orders that used to roll staging back: the daemon killed (-9) while A builds and B waits, then restarted; and
A's attempt failing while, or before, B is planned, then retried. Also: a build overtaken while it runs pushes its
`sha-…` tag but never moves staging.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from polling_server.builds.docker_engine import ImageBuilder
from polling_server.builds.registry import registry_client_for
from polling_server.builds.tag_mover import TagMover
from polling_server.builds.worker import BuildWorker
from polling_server.errors import PushFailed
from polling_server.metrics import Metrics
from polling_server.planning.model import BuildStatus
from polling_server.state import StateStore
from tests.gitrepo import GitRepo
from tests.poller.build_helpers import dockerfile, enqueue, make_settings, unique_image

pytestmark = pytest.mark.engine

REVISION = "org.opencontainers.image.revision"


def _repo(tmp_path, base_image, extra: str = "") -> GitRepo:
    root = tmp_path / "git"
    root.mkdir()
    repo = GitRepo(root)
    repo.commit({"Dockerfile": dockerfile(base_image, extra), "marker.txt": "base\n"}, "base")
    return repo


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _builds(state_path):
    store = StateStore.in_memory_copy(state_path)
    try:
        return store.builds(limit=50)
    finally:
        store.close()


def _start_daemon(cfg, log):
    return subprocess.Popen([sys.executable, "-m", "polling_server", "--config", str(cfg), "--log-format", "json"],
                            stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy(), start_new_session=True)


def test_kill_during_a_build_then_restart_never_moves_staging_back(tmp_path, registry, base_image):
    repo = _repo(tmp_path, base_image, "RUN sleep 4\n")
    image = unique_image()
    cfg = tmp_path / "poller.yaml"
    cfg.write_text(yaml.safe_dump({
        "state_path": str(tmp_path / "state.db"), "poll_interval_seconds": 0.3, "http": {"enabled": False},
        "registry": {"host": registry.host},
        "builds": {"retries": 1, "retry_backoff_seconds": 0.2, "timeout_seconds": 120,
                   "workdir": str(tmp_path / "work")},
        "repositories": [{"url": repo.url, "name": "app", "image": image}],
    }))
    state = tmp_path / "state.db"
    log = open(tmp_path / "daemon.log", "ab")  # noqa: SIM115 - closed at the end
    daemon = _start_daemon(cfg, log)
    try:
        _wait(lambda: state.exists() and StateStore.in_memory_copy(state).repo_state("app").baseline, 30,
              "the baseline")
        a = repo.commit({"marker.txt": "A\n"}, "A")
        _wait(lambda: any(b.sha == a and b.status is BuildStatus.RUNNING for b in _builds(state)), 30,
              "A to be building")
        b = repo.commit({"marker.txt": "B\n"}, "B")
        _wait(lambda: any(x.sha == b for x in _builds(state)), 30, "B to be planned")
        os.killpg(daemon.pid, signal.SIGKILL)  # kill -9 while A builds and B waits
        daemon.wait(10)
        assert {x.sha: x.status for x in _builds(state)}[a] is BuildStatus.RUNNING

        daemon = _start_daemon(cfg, log)
        done = _wait(lambda: next((x for x in _builds(state) if x.sha == b and x.status is BuildStatus.SUCCEEDED),
                                  None), 90, "B to succeed")
        _wait(lambda: registry.tags(image) and "staging" in registry.tags(image), 30, "staging to be moved")
        time.sleep(2)  # time enough for a wrong re-run of A to start
        by_sha = {x.sha: x for x in _builds(state)}
        assert by_sha[a].status is BuildStatus.SUPERSEDED and by_sha[a].superseded_by == done.id
        assert registry.manifest(image, "staging")[0] == done.digest
        assert registry.labels(image, "staging")[REVISION] == b
    finally:
        if daemon.poll() is None:
            os.killpg(daemon.pid, signal.SIGTERM)
            daemon.wait(60)
        log.close()


class FlakyBuilder:
    """The real ImageBuilder, except that A's first attempt fails after `during` ran (as a lost push would)."""

    def __init__(self, real: ImageBuilder, fail_sha: str, during=None):
        self.real = real
        self.fail_sha = fail_sha
        self.during = during
        self.attempts: list[str] = []

    def build(self, build, repo, on_log=None):
        self.attempts.append(build.sha)
        if build.sha == self.fail_sha and self.attempts.count(build.sha) == 1:
            if self.during:
                self.during()
            raise PushFailed("the registry went away mid-push")
        return self.real.build(build, repo, on_log)


def _worker(settings, store, builder) -> BuildWorker:
    metrics = Metrics()
    return BuildWorker(settings, store, builder, metrics,
                       tag_mover=TagMover(settings, store, registry_client_for(settings), metrics))


@pytest.mark.parametrize("when", ["during_the_failing_attempt", "after_it_failed"])
def test_a_failed_build_is_not_retried_over_a_newer_plan(tmp_path, registry, base_image, when):
    repo = _repo(tmp_path, base_image)
    a = repo.commit({"marker.txt": "A\n"}, "A")
    b = repo.commit({"marker.txt": "B\n"}, "B")
    image = unique_image()
    settings = make_settings(tmp_path, registry, [{"name": "app", "url": repo.url, "image": image}],
                             retries=2, retry_backoff_seconds=0)
    store = StateStore(tmp_path / "state.db")
    enqueue(store, "app", a, max_attempts=3)
    planned_b = []
    builder = FlakyBuilder(ImageBuilder(settings), a,
                           during=(lambda: planned_b.append(enqueue(store, "app", b, max_attempts=3)))
                           if when == "during_the_failing_attempt" else None)
    worker = _worker(settings, store, builder)
    first = worker.run_until_idle()
    if when == "after_it_failed":
        assert [x.status for x in first] == [BuildStatus.QUEUED]  # A waits for its retry...
        planned_b.append(enqueue(store, "app", b, max_attempts=3))  # ...when B is planned
    while worker.run_until_idle():
        pass
    records = {x.sha: x for x in store.builds()}
    assert records[a].status is BuildStatus.SUPERSEDED and records[a].superseded_by == planned_b[0]
    assert records[b].status is BuildStatus.SUCCEEDED
    assert builder.attempts == [a, b]  # A never ran again
    assert registry.manifest(image, "staging")[0] == records[b].digest
    assert registry.labels(image, "staging")[REVISION] == b


def test_an_overtaken_running_build_pushes_its_sha_tag_but_never_staging(tmp_path, registry, base_image):
    repo = _repo(tmp_path, base_image)
    a = repo.commit({"marker.txt": "A\n"}, "A")
    b = repo.commit({"marker.txt": "B\n"}, "B")
    image = unique_image()
    settings = make_settings(tmp_path, registry, [{"name": "app", "url": repo.url, "image": image}])
    store = StateStore(tmp_path / "state.db")
    enqueue(store, "app", a)
    real = ImageBuilder(settings)
    seen_before_b: list[list[str]] = []

    class Overtaking:
        def build(self, build, repo_settings, on_log=None):
            if build.sha == a and not seen_before_b:
                enqueue(store, "app", b)  # B is planned while A runs
            else:
                seen_before_b.append(registry.tags(image))
            return real.build(build, repo_settings, on_log)

    worker = _worker(settings, store, Overtaking())
    while worker.run_until_idle():
        pass
    records = {x.sha: x for x in store.builds()}
    assert records[a].status is BuildStatus.SUCCEEDED and records[b].status is BuildStatus.SUCCEEDED
    # When B started, A's image was in the registry under sha-A only: staging had not moved to it.
    assert seen_before_b == [[f"sha-{a[:12]}"]]
    assert registry.manifest(image, "staging")[0] == records[b].digest
    # A force-push back to A is a newer plan: staging follows it.
    enqueue(store, "app", a)
    (again,) = worker.run_until_idle()
    assert again.status is BuildStatus.SUCCEEDED
    assert registry.labels(image, "staging")[REVISION] == a
