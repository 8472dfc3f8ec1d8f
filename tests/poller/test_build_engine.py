"""Builds against the real Docker engine and registries: tags, labels, failures, restarts and time limits."""

from __future__ import annotations

import logging
import os
import re
import time

import docker
import pytest
import responses

from polling_server.builds.docker_engine import ImageBuilder
from polling_server.builds.registry import registry_client_for
from polling_server.builds.tag_mover import TagMover
from polling_server.builds.worker import BuildWorker
from polling_server.metrics import Metrics
from polling_server.planning.model import BuildStatus
from polling_server.state import StateStore
from tests.gitrepo import GitRepo
from tests.poller.build_helpers import (
    dockerfile,
    enqueue,
    file_in_image,
    github_tarball,
    make_settings,
    unique_image,
)

pytestmark = pytest.mark.engine

REVISION = "org.opencontainers.image.revision"
VERSION = "org.opencontainers.image.version"


def _git(tmp_path) -> GitRepo:
    root = tmp_path / "git"
    root.mkdir()
    return GitRepo(root)


def _worker(settings, store, **builder_kwargs) -> BuildWorker:
    metrics = Metrics()
    mover = TagMover(settings, store, registry_client_for(settings), metrics)
    return BuildWorker(settings, store, ImageBuilder(settings, **builder_kwargs), metrics, tag_mover=mover)


@pytest.fixture
def git_app(tmp_path, base_image):
    """A repository with two commits, each writing its own marker file into the image."""
    repo = _git(tmp_path)
    first = repo.commit({"Dockerfile": dockerfile(base_image), "marker.txt": "first\n"}, "first")
    second = repo.commit({"marker.txt": "second\n"}, "second")
    return repo, first, second


def test_staging_and_release_tags_follow_the_commits(tmp_path, git_app, registry, docker_client):
    repo, first, second = git_app
    image = unique_image()
    settings = make_settings(tmp_path, registry, [{"name": "app", "url": repo.url, "image": image,
                                                   "floating_tags": True}])
    store = StateStore(tmp_path / "state.db")
    worker = _worker(settings, store)

    # The first commit is built even though the branch has moved on: the source is the planned commit.
    enqueue(store, "app", first)
    (done,) = worker.run_until_idle()
    assert done.status is BuildStatus.SUCCEEDED, done.error
    ref = f"{registry.host}/{image}"
    # A build pushes its immutable tag; the tag mover then put staging on the same manifest.
    assert set(done.pushed_tags) == {f"{ref}:sha-{first[:12]}"}
    assert registry.manifest(image, "staging")[0] == done.digest
    assert registry.labels(image, f"sha-{first[:12]}")[REVISION] == first
    assert file_in_image(docker_client, f"{ref}:sha-{first[:12]}", "/app/marker.txt") == "first\n"

    enqueue(store, "app", second)
    (done,) = worker.run_until_idle()
    assert done.status is BuildStatus.SUCCEEDED, done.error
    staging_digest, _ = registry.manifest(image, "staging")
    assert staging_digest == registry.manifest(image, f"sha-{second[:12]}")[0] == done.digest
    assert registry.labels(image, "staging")[REVISION] == second
    assert registry.labels(image, "staging")[VERSION] == "staging"
    assert registry.labels(image, f"sha-{first[:12]}")[REVISION] == first
    assert file_in_image(docker_client, f"{ref}:sha-{second[:12]}", "/app/marker.txt") == "second\n"

    # A release gets its version and, with floating tags, 1.2 and 1.
    repo.tag("v1.2.3", second)
    enqueue(store, "app", second, tag="v1.2.3")
    (done,) = worker.run_until_idle()
    assert done.status is BuildStatus.SUCCEEDED, done.error
    assert set(done.pushed_tags) == {f"{ref}:1.2.3"}
    release_digest = registry.manifest(image, "1.2.3")[0]
    assert registry.manifest(image, "1")[0] == registry.manifest(image, "1.2")[0] == release_digest
    labels = registry.labels(image, "1.2.3")
    assert labels[VERSION] == "1.2.3" and labels[REVISION] == second
    assert labels["org.opencontainers.image.source"] == repo.url
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", labels["org.opencontainers.image.created"])

    # An older release later: 1.1 appears, but 1 does not move back.
    repo.tag("1.1.9", first)
    enqueue(store, "app", first, tag="1.1.9")
    (done,) = worker.run_until_idle()
    assert done.status is BuildStatus.SUCCEEDED, done.error
    assert set(done.pushed_tags) == {f"{ref}:1.1.9"}
    assert registry.manifest(image, "1")[0] == release_digest
    assert registry.labels(image, "1")[VERSION] == "1.2.3"
    assert registry.labels(image, "1.1")[REVISION] == first

    # A pre-release gets its own tag only.
    repo.tag("v2.0.0-rc.1", second)
    enqueue(store, "app", second, tag="v2.0.0-rc.1")
    (done,) = worker.run_until_idle()
    assert done.status is BuildStatus.SUCCEEDED, done.error
    assert done.pushed_tags == (f"{ref}:2.0.0-rc.1",)
    assert registry.tags(image) == sorted(["staging", f"sha-{first[:12]}", f"sha-{second[:12]}", "1.2.3", "1.2",
                                           "1", "1.1.9", "1.1", "2.0.0-rc.1"])


def test_github_tarball_of_the_exact_commit(tmp_path, registry, base_image, docker_client):
    sha = "0123456789abcdef0123456789abcdef01234567"
    image = unique_image()
    settings = make_settings(
        tmp_path, registry, [{"repo": "acme/app", "image": image, "dockerfile": "build/Dockerfile",
                              "context": "src", "build_args": {"GREETING": "hello"}}],
        github={"api_url": "https://ghe.example.com/api/v3", "token": "ghp-secret-token-123"})
    tarball = github_tarball(f"acme-app-{sha[:7]}", {
        "build/Dockerfile": f"FROM {base_image}\nARG GREETING\nCOPY marker.txt /app/marker.txt\n"
                            "RUN echo \"$GREETING\" > /app/greeting\n",
        "src/marker.txt": f"tarball {sha}\n",
    }, commit=sha)
    store = StateStore(tmp_path / "state.db")
    enqueue(store, "acme/app", sha)
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        mock.add_passthru(re.compile(r"http\+docker://.*"))
        mock.add_passthru(f"http://{registry.host}/")
        mock.get(f"https://ghe.example.com/api/v3/repos/acme/app/tarball/{sha}", body=tarball,
                 content_type="application/x-gzip",
                 match=[responses.matchers.header_matcher({"Authorization": "Bearer ghp-secret-token-123"})])
        (done,) = _worker(settings, store).run_until_idle()
    assert done.status is BuildStatus.SUCCEEDED, done.error
    ref = f"{registry.host}/{image}:sha-{sha[:12]}"
    assert file_in_image(docker_client, ref, "/app/marker.txt") == f"tarball {sha}\n"
    assert file_in_image(docker_client, ref, "/app/greeting") == "hello\n"
    labels = registry.labels(image, "staging")
    assert labels[REVISION] == sha
    assert labels["org.opencontainers.image.source"] == "https://ghe.example.com/acme/app"


def test_failing_run_step_is_recorded_and_nothing_is_pushed(tmp_path, registry, base_image, caplog):
    repo = _git(tmp_path)
    sha = repo.commit({"Dockerfile": dockerfile(base_image, "RUN echo about to fail && false\n"),
                       "marker.txt": "x\n"})
    image = unique_image()
    settings = make_settings(tmp_path, registry, [{"name": "app", "url": repo.url, "image": image}], retries=0)
    store = StateStore(tmp_path / "state.db")
    enqueue(store, "app", sha, max_attempts=settings.builds.retries + 1)
    with caplog.at_level(logging.INFO):
        (done,) = _worker(settings, store).run_until_idle()
    assert done.status is BuildStatus.FAILED
    assert "ImageBuildFailed" in done.error and "returned a non-zero code: 1" in done.error
    assert done.pushed_tags == () and done.digest is None
    assert registry.tags(image) == []
    assert list((tmp_path / "work").iterdir()) == []  # the checkout is gone
    # The engine's output reached the log, prefixed with the repository and the short commit.
    assert any(f"app@{sha[:12]}" in r.getMessage() and "about to fail" in r.getMessage() for r in caplog.records)
    failed = [r for r in caplog.records if getattr(r, "event", None) == "build.failed"]
    assert failed and failed[0].fields["will_retry"] is False and failed[0].fields["attempt"] == 1


def test_refused_push_fails_without_leaking_the_password(tmp_path, auth_registry, base_image, caplog):
    repo = _git(tmp_path)
    sha = repo.commit({"Dockerfile": dockerfile(base_image), "marker.txt": "auth\n"})
    image = unique_image()
    wrong = "wrong-password-98765"
    repos = [{"name": "app", "url": repo.url, "image": image}]
    bad = make_settings(tmp_path, auth_registry, repos, password=wrong)
    store = StateStore(tmp_path / "state.db")
    enqueue(store, "app", sha)
    with caplog.at_level(logging.DEBUG):
        (done,) = _worker(bad, store).run_until_idle()
    assert done.status is BuildStatus.FAILED
    assert "PushFailed" in done.error
    assert re.search(r"unauthori[sz]ed|authentication required|no basic auth", done.error, re.I), done.error
    assert done.pushed_tags == () and auth_registry.tags(image) == []
    assert wrong not in done.error and auth_registry.password not in done.error
    assert not [r for r in caplog.records if wrong in r.getMessage() or wrong in str(getattr(r, "fields", ""))]

    good = make_settings(tmp_path, auth_registry, repos)
    enqueue(store, "app", sha)
    (done,) = _worker(good, store).run_until_idle()
    assert done.status is BuildStatus.SUCCEEDED, done.error
    assert auth_registry.tags(image) == sorted(["staging", f"sha-{sha[:12]}"])
    assert auth_registry.manifest(image, "staging")[0] == done.digest


def test_unreachable_engine_is_retried_with_backoff_then_failed(tmp_path, registry, base_image, monkeypatch,
                                                                caplog):
    real_host = os.environ["DOCKER_HOST"]
    missing = f"unix://{tmp_path}/no-such-dir/docker.sock"
    monkeypatch.setenv("DOCKER_HOST", missing)
    engine = {"url": missing}

    def factory(**kwargs):
        return docker.DockerClient(base_url=engine["url"], **kwargs)

    repo = _git(tmp_path)
    sha = repo.commit({"Dockerfile": dockerfile(base_image), "marker.txt": "retry\n"})
    image_a, image_b = unique_image(), unique_image()
    settings = make_settings(tmp_path, registry, [{"name": "a", "url": repo.url, "image": image_a},
                                                  {"name": "b", "url": repo.url, "image": image_b}],
                             retries=1, retry_backoff_seconds=1.0)
    store = StateStore(tmp_path / "state.db")
    a = enqueue(store, "a", sha, max_attempts=2)
    b = enqueue(store, "b", sha, max_attempts=2)
    worker = _worker(settings, store, docker_factory=factory)

    with caplog.at_level(logging.INFO):
        done = worker.run_until_idle()
    failed_at = time.time()
    # Both builds were tried: the first failure did not stop the worker.
    assert {r.id for r in done} == {a, b}
    for record in done:
        assert record.status is BuildStatus.QUEUED
        assert "EngineUnavailable" in record.error and missing in record.error
        assert record.next_attempt_at >= failed_at - 0.5 + 0.9
    assert worker.run_until_idle() == []  # not due yet: the backoff holds

    time.sleep(1.2)
    done = worker.run_until_idle()
    assert {(r.id, r.status, r.attempts) for r in done} == {(a, BuildStatus.FAILED, 2), (b, BuildStatus.FAILED, 2)}
    events = [(r.fields["repo"], r.fields["will_retry"]) for r in caplog.records
              if getattr(r, "event", None) == "build.failed"]
    assert sorted(events) == [("a", False), ("a", True), ("b", False), ("b", True)]

    # The engine comes back: the same worker builds the next one.
    engine["url"] = real_host
    c = enqueue(store, "a", sha)
    (done,) = worker.run_until_idle()
    assert done.id == c and done.status is BuildStatus.SUCCEEDED, done.error
    assert registry.tags(image_a) == sorted(["staging", f"sha-{sha[:12]}"])


def test_restart_runs_the_interrupted_build_once_and_not_the_finished_one(tmp_path, registry, base_image):
    repo = _git(tmp_path)
    sha = repo.commit({"Dockerfile": dockerfile(base_image), "marker.txt": "restart\n"})
    image = unique_image()
    settings = make_settings(tmp_path, registry, [{"name": "app", "url": repo.url, "image": image}])
    store = StateStore(tmp_path / "state.db")
    finished = enqueue(store, "app", sha, tag="v0.1.0")
    assert store.claim_build().id == finished
    store.finish_build(finished, ["earlier:0.1.0"], "sha256:" + "0" * 64)
    interrupted = enqueue(store, "app", sha)
    assert store.claim_build().id == interrupted
    store.close()  # the daemon dies with `interrupted` running

    store = StateStore(tmp_path / "state.db")
    worker = _worker(settings, store)
    assert [b.id for b in worker.recover()] == [interrupted]
    done = worker.run_until_idle()
    assert [(r.id, r.status) for r in done] == [(interrupted, BuildStatus.SUCCEEDED)]
    assert store.build(interrupted).attempts == 1
    assert store.build(finished).digest == "sha256:" + "0" * 64
    assert registry.tags(image) == sorted(["staging", f"sha-{sha[:12]}"])  # no 0.1.0: not rebuilt
    assert worker.recover() == [] and worker.run_until_idle() == []


def test_build_over_the_time_limit_is_recorded_as_timed_out(tmp_path, registry, base_image, docker_client):
    repo = _git(tmp_path)
    sha = repo.commit({"Dockerfile": dockerfile(base_image, "RUN sleep 60\n"), "marker.txt": "slow\n"})
    image = unique_image()
    settings = make_settings(tmp_path, registry, [{"name": "app", "url": repo.url, "image": image}],
                             timeout_seconds=3)
    store = StateStore(tmp_path / "state.db")
    enqueue(store, "app", sha)
    began = time.monotonic()
    (done,) = _worker(settings, store).run_until_idle()
    assert time.monotonic() - began < 15
    assert done.status is BuildStatus.FAILED
    assert done.error.startswith("BuildTimeout"), done.error
    assert registry.tags(image) == []
    # The engine dropped the build when its client went away: no `sleep 60` keeps running.
    deadline = time.monotonic() + 10
    while any("sleep 60" in " ".join(c.attrs["Config"]["Cmd"] or []) for c in docker_client.containers.list()):
        assert time.monotonic() < deadline, "the timed-out build's container is still running"
        time.sleep(0.2)
    assert list((tmp_path / "work").iterdir()) == []  # the checkout is gone
