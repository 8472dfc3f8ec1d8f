"""The kubernetes build backend against the Kubernetes HTTP fake (tests/kube_fake.py), driven by the real client:
success, failure, timeout, supersede, restart adoption, log capture, API errors, and the digest confirmed in the
registry (`responses` for the registry's HTTP API; the real local registry in the engine test at the end).

The fake plays the Job as the cluster would (its pod, container states, termination message and log); where the
real Job would have pushed, the registry is made to serve that image."""

from __future__ import annotations

import hashlib
import json
import threading
import time

import pytest
import requests
import responses

from polling_server.builds import job_spec as J
from polling_server.builds.backend import (
    BuildSuperseded,
    ClusterUnavailable,
    backend_for,
    backends_for,
)
from polling_server.builds.docker_engine import BuildResult, ImageBuilder
from polling_server.builds.kubernetes_job import KubernetesJobBuilder
from polling_server.builds.worker import BuildWorker
from polling_server.config import parse_settings
from polling_server.errors import BuildTimeout, ImageBuildFailed, PushFailed, SourceFetchError
from polling_server.metrics import Metrics
from polling_server.planning.model import BuildStatus
from polling_server.state import StateStore
from tests.clocks import FakeTime
from tests.kube_fake import KubeFake
from tests.poller.build_helpers import enqueue

NS = "cd-builds"
REGISTRY = "127.0.0.1:5999"
SHA = "0123456789abcdef0123456789abcdef01234567"
NEWER = "89abcdef0123456789abcdef0123456789abcdef"
TAG = f"sha-{SHA[:12]}"
DIGEST = "sha256:" + "ab" * 32
MANIFEST_URL = f"http://{REGISTRY}/v2/acme/web/manifests/{TAG}"


def make_settings(tmp_path, repositories=None, **builds):
    data = {
        "state_path": str(tmp_path / "state.db"),
        "registry": {"host": REGISTRY},
        "builds": {"backend": "kubernetes", "retries": 0, "timeout_seconds": 600, "log_max_bytes": 1 << 20,
                   "kubernetes": {"namespace": NS}, **builds},
        "repositories": repositories or [{"repo": "acme/web", "image": "acme/web", "branch": "main"}],
    }
    return parse_settings(data, env={})


@pytest.fixture
def kube():
    with KubeFake() as fake:
        yield fake


@pytest.fixture
def registry_api():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


def serve(rsps, digest: str = DIGEST, tag: str = TAG, status: int = 200) -> None:
    """The registry serves `digest` for acme/web:`tag` (what the Job pushed)."""
    headers = {"Docker-Content-Digest": digest} if status == 200 else {}
    rsps.add(responses.HEAD, f"http://{REGISTRY}/v2/acme/web/manifests/{tag}", status=status, headers=headers)


def terminated(exit_code: int, message: str = "", reason: str | None = None) -> dict:
    return {"terminated": {"exitCode": exit_code, "reason": reason or ("Completed" if exit_code == 0 else "Error"),
                           "message": message, "startedAt": "2026-01-01T00:00:00Z",
                           "finishedAt": "2026-01-01T00:01:00Z"}}


def succeed(fake: KubeFake, name: str, digest: str = DIGEST, *, build_log: str = "#1 [internal] load build "
            "definition\n#5 pushing layers done\n", source_log: str = f"fetching commit {SHA}\n") -> None:
    """What the cluster shows once BuildKit pushed `digest`: the pod Succeeded, the metadata in the message."""
    metadata = json.dumps({"containerimage.digest": digest, "image.name": f"{REGISTRY}/acme/web:{TAG}"})
    fake.play_pod(name, NS, phase="Succeeded",
                  containers={"source": terminated(0), "build": terminated(0, metadata)})
    fake.set_pod_log(name, "source", source_log, NS)
    fake.set_pod_log(name, "build", build_log, NS)
    fake.complete_job(name, NS)


def fail(fake: KubeFake, name: str, container: str = "build", exit_code: int = 1, message: str = "",
         log: str = "", reason: str = "BackoffLimitExceeded") -> None:
    states = {"source": terminated(exit_code, message)} if container == "source" else {
        "source": terminated(0), "build": terminated(exit_code, message)}
    fake.play_pod(name, NS, phase="Failed", containers=states)
    fake.set_pod_log(name, container, log, NS)
    fake.fail_job(name, NS, reason=reason)


def running(fake: KubeFake, name: str) -> None:
    fake.play_pod(name, NS, phase="Running", containers={"source": terminated(0), "build": {"running": {}}})


class Setup:
    """A store with one claimed build, and a backend on the fake."""

    def __init__(self, tmp_path, kube, max_attempts: int = 1, **builds):
        self.settings = make_settings(tmp_path, **builds)
        self.repo = self.settings.repositories[0]
        self.store = StateStore(self.settings.state_path)
        self.kube = kube
        self.build_id = enqueue(self.store, "acme/web", SHA, ref="main", max_attempts=max_attempts)
        self.lines: list[str] = []
        self.time = FakeTime()

    def claim(self):
        return self.store.claim_build()

    def builder(self, **kwargs) -> KubernetesJobBuilder:
        kwargs.setdefault("poll_seconds", 5.0)
        kwargs.setdefault("sleep", self.time.sleep)
        kwargs.setdefault("clock", self.time.clock)
        return KubernetesJobBuilder(self.settings, self.store, api_client=self.kube.new_api_client(), **kwargs)

    def name(self, record) -> str:
        return J.job_name(record, self.repo, J.instance_id(self.settings))


@pytest.fixture
def setup(tmp_path, kube):
    return Setup(tmp_path, kube)


# --- success -----------------------------------------------------------------------------------------------------
def test_a_build_creates_one_job_and_returns_the_confirmed_digest(setup, kube, registry_api):
    serve(registry_api)
    kube.on_job_created = lambda job: succeed(kube, job["metadata"]["name"])
    record = setup.claim()
    result = setup.builder().build(record, setup.repo, setup.lines.append)

    assert result == BuildResult(image=f"{REGISTRY}/acme/web", tags=(f"{REGISTRY}/acme/web:{TAG}",), digest=DIGEST)
    (posted,) = kube.posted_jobs()
    name = setup.name(record)
    assert posted["metadata"]["name"] == name
    assert posted["metadata"]["namespace"] == NS
    assert posted["metadata"]["annotations"][J.BUILD_ID_ANNOTATION] == str(record.id)
    assert posted["metadata"]["annotations"][J.COMMIT_ANNOTATION] == SHA
    build = posted["spec"]["template"]["spec"]["containers"][0]
    assert f"type=image,name={REGISTRY}/acme/web:{TAG},push=true" in build["args"]
    assert f"label:org.opencontainers.image.revision={SHA}" in build["args"]
    # The digest was confirmed in the registry, and the Job's name is on record for a restart.
    (head,) = [c for c in registry_api.calls if c.request.method == "HEAD"]
    assert head.request.url == MANIFEST_URL
    assert setup.store.backend_ref(record.id) == name
    # Nothing is deleted after a success: ttlSecondsAfterFinished cleans up.
    assert kube.deletions == []


def test_the_pods_log_is_copied_into_the_build_log(setup, kube, registry_api):
    serve(registry_api)
    kube.on_job_created = lambda job: succeed(kube, job["metadata"]["name"], build_log="#1 step one\r\n#2 done",
                                              source_log="fetching\nready\n")
    record = setup.claim()
    setup.builder().build(record, setup.repo, setup.lines.append)
    pod = kube.pods(NS)[0]["metadata"]["name"]
    copied = setup.lines[setup.lines.index(f"--- source (pod {pod}) ---"):]
    assert copied == [f"--- source (pod {pod}) ---", "fetching", "ready",
                      f"--- build (pod {pod}) ---", "#1 step one", "#2 done"]
    assert setup.lines[0] == f"created Job {NS}/{setup.name(record)} (moby/buildkit:v0.33.1-rootless)"


def test_a_long_log_keeps_its_end(tmp_path, kube, registry_api):
    setup = Setup(tmp_path, kube, log_max_bytes=4096)
    serve(registry_api)
    lines = [f"line {i:05d} " + "x" * 90 for i in range(500)]
    kube.on_job_created = lambda job: succeed(kube, job["metadata"]["name"], build_log="\n".join(lines) + "\n")
    setup.builder().build(setup.claim(), setup.repo, setup.lines.append)
    kept = [line for line in setup.lines if line.startswith("line ")]
    assert kept == lines[-len(kept):]
    assert 30 <= len(kept) <= 41
    assert any(line.startswith("(the first ") and "bytes of the log are left out" in line for line in setup.lines)


# --- failures --------------------------------------------------------------------------------------------------------
def test_a_failed_build_step_is_an_image_build_failure_with_its_last_line(setup, kube, registry_api):
    kube.on_job_created = lambda job: fail(
        kube, job["metadata"]["name"], message="#5 RUN make\nERROR: failed to solve: exit code: 2\n",
        log="#5 RUN make\nmake: *** [all] Error 2\n")
    record = setup.claim()
    with pytest.raises(ImageBuildFailed, match=r"the image build failed in Job .* \(exit 1\): ERROR: failed to "
                                               r"solve: exit code: 2"):
        setup.builder().build(record, setup.repo, setup.lines.append)
    assert "make: *** [all] Error 2" in setup.lines
    assert kube.deletions == []  # kept for `kubectl logs` until its TTL
    assert len(registry_api.calls) == 0  # nothing to confirm


def test_a_failed_source_fetch_is_a_source_fetch_error(setup, kube, registry_api):
    kube.on_job_created = lambda job: fail(kube, job["metadata"]["name"], container="source", exit_code=2,
                                           message="fetching\ncommit 0123 is on no branch or tag of https://x\n")
    with pytest.raises(SourceFetchError, match=r"fetching the source failed .* \(exit 2\): commit 0123 is on no"):
        setup.builder().build(setup.claim(), setup.repo, setup.lines.append)


def test_a_job_past_its_deadline_is_a_timeout_and_is_deleted(setup, kube, registry_api):
    kube.on_job_created = lambda job: fail(kube, job["metadata"]["name"], reason="DeadlineExceeded",
                                           exit_code=137, message="")
    record = setup.claim()
    with pytest.raises(BuildTimeout, match="activeDeadlineSeconds"):
        setup.builder().build(record, setup.repo, setup.lines.append)
    assert kube.deletions == [(NS, setup.name(record), "Background")]


def test_the_poller_stops_a_job_that_outlives_the_time_limit(setup, kube, registry_api):
    kube.on_job_created = lambda job: running(kube, job["metadata"]["name"])
    record = setup.claim()
    name = setup.name(record)
    with pytest.raises(BuildTimeout, match="did not finish within 600s"):
        setup.builder().build(record, setup.repo, setup.lines.append)
    # Deleted with propagation Background: the pod is gone too, so it cannot push later.
    assert kube.deletions == [(NS, name, "Background")]
    assert kube.jobs(NS) == [] and kube.pods(NS) == []
    assert f"deleted Job {NS}/{name}: it ran past builds.timeout_seconds" in setup.lines
    # It was polled until the deadline, not longer.
    assert 600 <= setup.time.t - 1000.0 <= 605


def test_a_container_that_cannot_start_fails_at_once(setup, kube, registry_api):
    def cannot_start(job):
        kube.play_pod(job["metadata"]["name"], NS, phase="Pending", containers={
            "source": {"waiting": {"reason": "CreateContainerConfigError",
                                   "message": 'couldn\'t find key token in Secret cd-builds/source-token'}}})

    kube.on_job_created = cannot_start
    record = setup.claim()
    with pytest.raises(ImageBuildFailed, match="container source cannot start: CreateContainerConfigError"):
        setup.builder().build(record, setup.repo, setup.lines.append)
    assert kube.deletions == [(NS, setup.name(record), "Background")]
    assert setup.time.t == 1000.0  # no waiting for the deadline


def test_a_job_deleted_by_hand_fails_the_attempt(setup, kube, registry_api):
    kube.on_job_created = lambda job: running(kube, job["metadata"]["name"])
    builder = setup.builder(sleep=lambda _s: kube._jobs.clear())
    with pytest.raises(ImageBuildFailed, match="was deleted before it finished"):
        builder.build(setup.claim(), setup.repo, setup.lines.append)


# --- the digest, confirmed -------------------------------------------------------------------------------------------
def test_a_registry_serving_another_digest_fails_the_push(setup, kube, registry_api):
    serve(registry_api, digest="sha256:" + "cd" * 32)
    kube.on_job_created = lambda job: succeed(kube, job["metadata"]["name"])
    with pytest.raises(PushFailed, match=f"serves sha256:cdcd.* not the pushed {DIGEST}"):
        setup.builder().build(setup.claim(), setup.repo)


def test_a_tag_missing_from_the_registry_fails_the_push(setup, kube, registry_api):
    serve(registry_api, status=404)
    kube.on_job_created = lambda job: succeed(kube, job["metadata"]["name"])
    with pytest.raises(PushFailed, match="serves nothing"):
        setup.builder().build(setup.claim(), setup.repo)


def test_no_digest_in_the_termination_message_fails_the_push(setup, kube, registry_api):
    def without_metadata(job):
        name = job["metadata"]["name"]
        kube.play_pod(name, NS, phase="Succeeded", containers={"source": terminated(0), "build": terminated(0)})
        kube.complete_job(name, NS)

    kube.on_job_created = without_metadata
    with pytest.raises(PushFailed, match="reported no pushed digest"):
        setup.builder().build(setup.claim(), setup.repo)


# --- supersede -------------------------------------------------------------------------------------------------------
def test_a_superseded_build_deletes_its_job_and_ends_superseded(tmp_path, kube, registry_api):
    setup = Setup(tmp_path, kube, max_attempts=3)

    def newer_commit_lands(job):
        running(kube, job["metadata"]["name"])
        enqueue(setup.store, "acme/web", NEWER, ref="main", max_attempts=3)

    kube.on_job_created = newer_commit_lands
    worker = BuildWorker(setup.settings, setup.store, setup.builder(), Metrics())
    (done,) = worker.run_until_idle()
    assert done.id == setup.build_id
    assert done.status is BuildStatus.SUPERSEDED
    # The pod went with the Job (Background): with the API's default (orphan) it would have pushed.
    (job_name,) = [name for _ns, name, _policy in kube.deletions]
    assert kube.deletions == [(NS, job_name, "Background")]
    assert kube.pods(NS) == []
    assert len(registry_api.calls) == 0


def test_supersede_is_reported_as_such(setup, kube, registry_api):
    def newer_commit_lands(job):
        running(kube, job["metadata"]["name"])
        enqueue(setup.store, "acme/web", NEWER, ref="main")

    kube.on_job_created = newer_commit_lands
    with pytest.raises(BuildSuperseded, match="a newer build of main was planned"):
        setup.builder().build(setup.claim(), setup.repo, setup.lines.append)


# --- restarts --------------------------------------------------------------------------------------------------------
class Crash(BaseException):
    """The poller process dies: nothing after this runs, nothing is recorded."""


def crash(_seconds):
    raise Crash


def restarted(setup):
    """A new poller process on the same state file: interrupted builds queued again, same instance."""
    store = StateStore(setup.settings.state_path)
    worker = BuildWorker(setup.settings, store, KubernetesJobBuilder(
        setup.settings, store, api_client=setup.kube.new_api_client(), sleep=setup.time.sleep,
        clock=setup.time.clock), Metrics())
    worker.recover()
    return store, worker


def test_after_a_crash_the_running_job_is_adopted_not_started_twice(setup, kube, registry_api):
    serve(registry_api)
    kube.on_job_created = lambda job: running(kube, job["metadata"]["name"])
    record = setup.claim()
    with pytest.raises(Crash):
        setup.builder(sleep=crash).build(record, setup.repo)
    name = setup.name(record)
    assert [j["metadata"]["name"] for j in kube.jobs(NS)] == [name]

    store, worker = restarted(setup)
    # The Job finishes while the restarted poller follows it.
    original_sleep = setup.time.sleep
    worker.builder._sleep = lambda s: (succeed(kube, name), original_sleep(s))
    (done,) = worker.run_until_idle()
    assert done.status is BuildStatus.SUCCEEDED, done.error
    assert done.digest == DIGEST
    assert len(kube.posted_jobs()) == 1  # never two Jobs for one build
    assert kube.deletions == []


def test_after_a_crash_a_job_that_finished_meanwhile_is_adopted(setup, kube, registry_api):
    serve(registry_api)
    kube.on_job_created = lambda job: running(kube, job["metadata"]["name"])
    record = setup.claim()
    with pytest.raises(Crash):
        setup.builder(sleep=crash).build(record, setup.repo)
    succeed(kube, setup.name(record))  # while the poller was down

    _store, worker = restarted(setup)
    (done,) = worker.run_until_idle()
    assert done.status is BuildStatus.SUCCEEDED, done.error
    assert done.pushed_tags == (f"{REGISTRY}/acme/web:{TAG}",)
    assert len(kube.posted_jobs()) == 1


def test_a_job_gone_when_the_restarted_poller_looks_means_the_build_runs_again(setup, kube, registry_api):
    serve(registry_api)
    kube.on_job_created = lambda job: running(kube, job["metadata"]["name"])
    record = setup.claim()
    with pytest.raises(Crash):
        setup.builder(sleep=crash).build(record, setup.repo)
    name = setup.name(record)
    kube._delete_job((NS, name), "Background")  # ttlSecondsAfterFinished, or kubectl delete, while it was down
    assert setup.store.backend_ref(record.id) == name

    kube.on_job_created = lambda job: succeed(kube, job["metadata"]["name"])
    _store, worker = restarted(setup)
    (done,) = worker.run_until_idle()
    assert done.status is BuildStatus.SUCCEEDED, done.error
    assert [j["metadata"]["name"] for j in kube.posted_jobs()] == [name, name]


def test_a_job_superseded_while_the_poller_was_down_is_deleted_after_the_restart(tmp_path, kube, registry_api):
    setup = Setup(tmp_path, kube, max_attempts=3)
    kube.on_job_created = lambda job: running(kube, job["metadata"]["name"])
    record = setup.claim()
    with pytest.raises(Crash):
        setup.builder(sleep=crash).build(record, setup.repo)
    stale = setup.name(record)
    enqueue(setup.store, "acme/web", NEWER, ref="main", max_attempts=3)  # planned by the next poll, while down

    registry_api.add(responses.HEAD, f"http://{REGISTRY}/v2/acme/web/manifests/sha-{NEWER[:12]}",
                     headers={"Docker-Content-Digest": DIGEST})
    kube.on_job_created = lambda job: succeed(kube, job["metadata"]["name"])
    store, worker = restarted(setup)
    assert store.build(record.id).status is BuildStatus.SUPERSEDED
    (done,) = worker.run_until_idle()
    assert done.sha == NEWER and done.status is BuildStatus.SUCCEEDED, done.error
    # The stale Job went (with its pod) before it could push an image nobody asked for any more.
    assert kube.deletions == [(NS, stale, "Background")]
    assert [p["metadata"]["annotations"][J.COMMIT_ANNOTATION] for p in kube.posted_jobs()] == [SHA, NEWER]


def test_a_retry_replaces_the_failed_job_of_the_earlier_attempt(tmp_path, kube, registry_api):
    setup = Setup(tmp_path, kube, max_attempts=2)
    serve(registry_api)
    outcomes = iter([lambda n: fail(kube, n, message="ERROR: flaky network"), lambda n: succeed(kube, n)])
    kube.on_job_created = lambda job: next(outcomes)(job["metadata"]["name"])
    builder = setup.builder()
    first = setup.claim()
    with pytest.raises(ImageBuildFailed, match="flaky network"):
        builder.build(first, setup.repo)
    setup.store.fail_build(first.id, "flaky", 0)
    second = setup.claim()
    assert second.attempts == 2
    result = builder.build(second, setup.repo, setup.lines.append)
    assert result.digest == DIGEST
    name = setup.name(first)
    assert kube.deletions == [(NS, name, "Background")]
    posted = kube.posted_jobs()
    assert [p["metadata"]["annotations"][J.ATTEMPT_ANNOTATION] for p in posted] == ["1", "2"]
    assert f"removing Job {NS}/{name}, left failed by attempt 1" in setup.lines


def test_a_job_of_the_same_name_for_another_build_is_left_alone(setup, kube, registry_api):
    record = setup.claim()
    name = setup.name(record)
    kube.add_job({"metadata": {"name": name, "annotations": {J.BUILD_ID_ANNOTATION: "999"}},
                  "spec": {"template": {"spec": {"restartPolicy": "Never",
                                                 "containers": [{"name": "x", "image": "x"}]}}}}, NS)
    with pytest.raises(ImageBuildFailed, match="annotations name another build"):
        setup.builder().build(record, setup.repo)
    assert kube.posted_jobs() == [] and kube.deletions == []


def test_a_job_created_between_the_look_and_the_create_is_adopted(setup, kube, registry_api):
    serve(registry_api)
    record = setup.claim()
    # The Job exists (an abandoned attempt created it), but the first look misses it: the create answers 409.
    builder = setup.builder()
    manifest = J.job_for_build(record, setup.repo, setup.settings, f"{REGISTRY}/acme/web", [TAG], {},
                               instance=builder.instance)
    kube.add_job(manifest, NS)
    succeed(kube, manifest["metadata"]["name"])
    kube.fail_next(404, method="GET", path=f"/jobs/{manifest['metadata']['name']}")
    result = builder.build(record, setup.repo, setup.lines.append)
    assert result.digest == DIGEST
    assert len(kube.posted_jobs()) == 1  # the one create that answered 409
    assert len(kube.jobs(NS)) == 1


# --- API errors ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("status", "error", "match", "transient"), [
    (403, ClusterUnavailable, "refused to create jobs in namespace cd-builds \\(403\\).*build Role", False),
    (401, ClusterUnavailable, "rejected the poller's credentials", False),
    (500, ClusterUnavailable, "unavailable \\(HTTP 500\\)", True),
    (503, ClusterUnavailable, "unavailable \\(HTTP 503\\)", True),
    (422, ImageBuildFailed, "answered HTTP 422 to create jobs", None),
    (400, ImageBuildFailed, "answered HTTP 400 to create jobs", None),
])
def test_api_errors_on_create_are_build_errors(setup, kube, status, error, match, transient):
    kube.fail_next(status, method="POST", path="/jobs")
    with pytest.raises(error, match=match) as caught:
        setup.builder().build(setup.claim(), setup.repo)
    if transient is not None:
        assert caught.value.transient is transient


def test_a_passing_api_outage_while_following_does_not_fail_the_build(setup, kube, registry_api):
    serve(registry_api)
    kube.on_job_created = lambda job: running(kube, job["metadata"]["name"])
    record = setup.claim()
    name = setup.name(record)
    polls = []

    def sleep(seconds):
        polls.append(seconds)
        if len(polls) == 1:
            kube.fail_next(503, count=2, method="GET", path=f"/jobs/{name}")
        if len(polls) == 4:
            succeed(kube, name)
        setup.time.sleep(seconds)

    result = setup.builder(sleep=sleep).build(record, setup.repo)
    assert result.digest == DIGEST


def test_an_unreachable_api_is_cluster_unavailable(setup):
    from kubernetes import client as k8s

    settings = setup.settings
    # Nothing listens on the discard port.
    configuration = k8s.Configuration(host="http://127.0.0.1:9")
    configuration.retries = 0
    client = k8s.ApiClient(configuration)
    builder = KubernetesJobBuilder(settings, setup.store, api_client=client)
    with pytest.raises(ClusterUnavailable, match="cannot reach the Kubernetes API at http://127.0.0.1:9"):
        builder.build(setup.claim(), setup.repo)


# --- choosing the backend ---------------------------------------------------------------------------------------------
class RecordingBackend:
    def __init__(self):
        self.built: list[str] = []

    def build(self, record, repo, on_log=None):
        self.built.append(repo.name)
        return BuildResult(image=f"{REGISTRY}/{repo.image}", tags=(f"{REGISTRY}/{repo.image}:sha-x",),
                           digest="sha256:" + "ee" * 32)


def test_each_repository_builds_with_its_own_backend(tmp_path, kube, registry_api):
    settings = make_settings(tmp_path, [
        {"repo": "acme/web", "image": "acme/web", "branch": "main"},
        {"repo": "acme/api", "image": "acme/api", "branch": "main", "backend": "docker"},
    ], backend="kubernetes")
    store = StateStore(settings.state_path)
    serve(registry_api)
    kube.on_job_created = lambda job: succeed(kube, job["metadata"]["name"])
    docker = RecordingBackend()
    time_ = FakeTime()
    kubernetes = KubernetesJobBuilder(settings, store, api_client=kube.new_api_client(), sleep=time_.sleep,
                                      clock=time_.clock)
    worker = BuildWorker(settings, store, {"docker": docker, "kubernetes": kubernetes}, Metrics())
    enqueue(store, "acme/web", SHA, ref="main")
    enqueue(store, "acme/api", NEWER, ref="main")
    done = {b.repo: b for b in worker.run_until_idle()}
    assert done["acme/web"].status is BuildStatus.SUCCEEDED and done["acme/api"].status is BuildStatus.SUCCEEDED
    assert docker.built == ["acme/api"]
    assert [j["metadata"]["annotations"][J.REPOSITORY_ANNOTATION] for j in kube.posted_jobs()] == ["acme/web"]


@pytest.mark.parametrize(("global_backend", "repo_backends", "expected"), [
    ("docker", [None], {"docker": ImageBuilder}),
    ("kubernetes", [None], {"kubernetes": KubernetesJobBuilder}),
    ("docker", [None, "kubernetes"], {"docker": ImageBuilder, "kubernetes": KubernetesJobBuilder}),
    ("kubernetes", ["docker"], {"docker": ImageBuilder}),
])
def test_the_daemon_makes_the_backends_the_configuration_uses(tmp_path, global_backend, repo_backends, expected):
    repos = [{"repo": f"acme/r{i}", "image": f"acme/r{i}", **({"backend": b} if b else {})}
             for i, b in enumerate(repo_backends)]
    settings = make_settings(tmp_path, repos, backend=global_backend)
    backends = backends_for(settings, StateStore(settings.state_path))
    assert {name: type(b) for name, b in backends.items()} == expected
    for repo in settings.repositories:
        chosen = backend_for(backends, settings, repo)
        assert isinstance(chosen, expected[repo.backend or global_backend])


def test_builds_of_different_repositories_run_as_jobs_at_once(tmp_path, kube, registry_api):
    settings = make_settings(tmp_path, [{"repo": "acme/web", "image": "acme/web", "branch": "main"},
                                        {"repo": "acme/api", "image": "acme/api", "branch": "main"}],
                             concurrency=2)
    store = StateStore(settings.state_path)
    serve(registry_api)
    registry_api.add(responses.HEAD, f"http://{REGISTRY}/v2/acme/api/manifests/sha-{NEWER[:12]}",
                     headers={"Docker-Content-Digest": DIGEST})
    kube.on_job_created = lambda job: running(kube, job["metadata"]["name"])
    both_running = threading.Event()
    lock = threading.Lock()

    def sleep(seconds):
        # Both Jobs exist at the same time before either finishes: concurrency 2 means two Jobs at once.
        with lock:
            if len(kube.jobs(NS)) == 2 and not both_running.is_set():
                both_running.set()
                for job in kube.jobs(NS):
                    succeed(kube, job["metadata"]["name"])
        time.sleep(0.01)

    builder = KubernetesJobBuilder(settings, store, api_client=kube.new_api_client(), poll_seconds=0.01, sleep=sleep)
    worker = BuildWorker(settings, store, builder, Metrics())
    enqueue(store, "acme/web", SHA, ref="main")
    enqueue(store, "acme/api", NEWER, ref="main")
    worker.start()
    try:
        deadline = time.monotonic() + 60  # a safety net only
        while time.monotonic() < deadline:
            if all(b.status is BuildStatus.SUCCEEDED for b in store.builds()):
                break
            time.sleep(0.02)
    finally:
        worker.stop(timeout=30)
    assert both_running.is_set()
    assert sorted(b.status for b in store.builds()) == [BuildStatus.SUCCEEDED, BuildStatus.SUCCEEDED]


# --- the real local registry ----------------------------------------------------------------------------------------
def _push_image(host: str, name: str, tag: str, labels: dict[str, str]) -> str:
    """Push a one-layer OCI image to the registry over its HTTP API, as BuildKit would have; return its digest."""
    import gzip
    import io
    import tarfile

    layer_tar = io.BytesIO()
    with tarfile.open(fileobj=layer_tar, mode="w") as tar:
        data = b"pushed by the Job\n"
        info = tarfile.TarInfo("app/marker.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    layer = gzip.compress(layer_tar.getvalue(), mtime=0)
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Labels": labels},
                         "rootfs": {"type": "layers",
                                    "diff_ids": ["sha256:" + hashlib.sha256(layer_tar.getvalue()).hexdigest()]}
                         }).encode()
    base = f"http://{host}/v2/{name}"
    for blob in (layer, config):
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        start = requests.post(f"{base}/blobs/uploads/", timeout=30)
        start.raise_for_status()
        location = start.headers["Location"]
        location = location if location.startswith("http") else f"http://{host}{location}"
        sep = "&" if "?" in location else "?"
        requests.put(f"{location}{sep}digest={digest}", data=blob, timeout=30,
                     headers={"Content-Type": "application/octet-stream"}).raise_for_status()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": len(config),
                   "digest": "sha256:" + hashlib.sha256(config).hexdigest()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "size": len(layer),
                    "digest": "sha256:" + hashlib.sha256(layer).hexdigest()}],
    }).encode()
    put = requests.put(f"{base}/manifests/{tag}", data=manifest, timeout=30,
                       headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    put.raise_for_status()
    return put.headers["Docker-Content-Digest"]


@pytest.mark.engine
def test_the_digest_is_confirmed_in_the_real_registry(tmp_path, kube, registry):
    from tests.poller.build_helpers import unique_image

    image = unique_image("k8s-backend")
    settings = parse_settings({
        "state_path": str(tmp_path / "state.db"), "registry": {"host": registry.host},
        "builds": {"backend": "kubernetes", "retries": 0, "kubernetes": {"namespace": NS}},
        "repositories": [{"repo": "acme/web", "image": image, "branch": "main"}]}, env={})
    store = StateStore(settings.state_path)
    enqueue(store, "acme/web", SHA, ref="main")
    pushed = {}

    def the_job_pushes(job):
        # The test pushes the image the Job would have pushed, then plays the Job's success with its digest.
        pushed["digest"] = _push_image(registry.host, image, TAG, {"org.opencontainers.image.revision": SHA})
        succeed(kube, job["metadata"]["name"], pushed["digest"])

    kube.on_job_created = the_job_pushes
    time_ = FakeTime()
    builder = KubernetesJobBuilder(settings, store, api_client=kube.new_api_client(), sleep=time_.sleep,
                                   clock=time_.clock)
    (done,) = BuildWorker(settings, store, builder, Metrics()).run_until_idle()
    assert done.status is BuildStatus.SUCCEEDED, done.error
    assert done.digest == pushed["digest"] == registry.manifest(image, TAG)[0]

    # A Job that claims another digest than the registry serves is not believed.
    enqueue(store, "acme/web", NEWER, ref="main")
    other = f"sha-{NEWER[:12]}"
    _push_image(registry.host, image, other, {"org.opencontainers.image.revision": NEWER})
    kube.on_job_created = lambda job: succeed(kube, job["metadata"]["name"], "sha256:" + "0" * 64)
    (failed,) = BuildWorker(settings, store, builder, Metrics()).run_until_idle()
    assert failed.status is BuildStatus.FAILED
    assert "not the pushed sha256:0000" in failed.error
