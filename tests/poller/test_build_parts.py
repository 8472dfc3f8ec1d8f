"""The build path's parts without an engine: git fetches and their credentials, GitHub tarballs, the registry
client's auth challenges, tag planning, and the worker's retries, watchdog and resilience."""

from __future__ import annotations

import base64
import io
import logging
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import docker.errors
import pytest
import responses
from responses import matchers

from polling_server import git_process
from polling_server.builds.docker_engine import BuildResult, ImageBuilder, primary_tags
from polling_server.builds.registry import RegistryClient, RegistryError
from polling_server.builds.source_fetch import SourceFetcher
from polling_server.builds.worker import BuildWorker, retry_delay
from polling_server.errors import EngineUnavailable, ImageBuildFailed, SourceFetchError
from polling_server.git_process import run_git
from polling_server.http import HttpClient
from polling_server.metrics import Metrics
from polling_server.planning.model import BuildStatus
from polling_server.state import StateStore
from tests.gitrepo import GitRepo
from tests.poller.build_helpers import enqueue, github_tarball, make_settings


class _Reg:
    host = "127.0.0.1:1"
    username = None
    password = None


SHA = "89abcdef0123456789abcdef0123456789abcdef"


def _settings(tmp_path, repos=None, **kw):
    repos = repos or [{"name": "app", "url": "/nonexistent", "image": "team/app"}]
    return make_settings(tmp_path, _Reg(), repos, **kw)


def _git_repo(tmp_path) -> GitRepo:
    root = tmp_path / "git"
    root.mkdir()
    return GitRepo(root)


# --- git -------------------------------------------------------------------------------------------------------
class _RecordingRunner:
    def __init__(self):
        self.calls: list[tuple[list[str], dict]] = []

    def __call__(self, argv, **kwargs):
        self.calls.append((list(argv), dict(kwargs["env"])))
        return run_git(argv, **kwargs)


@pytest.mark.parametrize("url, secret", [
    ("https://deploy:pw-in-url-4711@127.0.0.1:9/team/app.git", "pw-in-url-4711"),
    ("https://github.com/team/app.git", "ghp-token-0815"),
])
def test_git_credentials_travel_in_the_environment_only(tmp_path, url, secret, caplog):
    settings = _settings(tmp_path, [{"name": "app", "url": url, "image": "team/app"}],
                         github={"token": "ghp-token-0815"})
    runner = _RecordingRunner()
    if "github.com" in url:
        # Never reach the real GitHub: fetches fail at once, keeping the argv and environment git would get.
        real = runner

        def runner(argv, **kwargs):
            if "fetch" not in argv:
                return real(argv, **kwargs)
            real.calls.append((list(argv), dict(kwargs["env"])))
            return subprocess.CompletedProcess(argv, 128, "", f"fatal: could not read from {url}")
        runner.calls = real.calls
    fetcher = SourceFetcher(settings, HttpClient(), run=runner)
    with caplog.at_level(logging.DEBUG), pytest.raises(SourceFetchError) as err:
        with fetcher.checkout(settings.repository("app"), SHA, deadline=time.monotonic() + 30):
            pass
    fetches = [(argv, env) for argv, env in runner.calls if "fetch" in argv]
    assert fetches, runner.calls
    for argv, _env in runner.calls:
        assert not any(secret in a for a in argv), argv
        assert argv[0] == "git"
    argv, env = fetches[0]
    assert argv[-2:] == [url.replace("deploy:pw-in-url-4711@", ""), SHA]
    assert env["GIT_CONFIG_KEY_0"].startswith("http.https://") and env["GIT_CONFIG_KEY_0"].endswith("/.extraHeader")
    header = env["GIT_CONFIG_VALUE_0"]
    assert header.startswith("Authorization: Basic ")
    assert secret in base64.b64decode(header.split()[-1]).decode()
    assert env["GIT_TERMINAL_PROMPT"] == "0"
    assert secret not in str(err.value)
    assert header.split()[-1] not in str(err.value)
    assert not [r for r in caplog.records if secret in r.getMessage()]
    assert list((tmp_path / "work").iterdir()) == []


def test_git_fetch_checks_out_the_exact_commit_not_the_head(tmp_path):
    repo = _git_repo(tmp_path)
    first = repo.commit({"file.txt": "one\n"})
    repo.commit({"file.txt": "two\n"})
    settings = _settings(tmp_path, [{"name": "app", "url": repo.url, "image": "team/app"}])
    fetcher = SourceFetcher(settings, HttpClient())
    with fetcher.checkout(settings.repository("app"), first) as root:
        assert (root / "file.txt").read_text() == "one\n"
        assert not (root / ".git").exists()
        kept = root
    assert not kept.exists()


def test_git_falls_back_to_a_full_fetch_when_sha_wants_are_refused(tmp_path, monkeypatch):
    repo = _git_repo(tmp_path)
    first = repo.commit({"file.txt": "one\n"})
    repo.commit({"file.txt": "two\n"})
    # Protocol v0 refuses a want of a commit that is not a ref tip, as many servers do.
    monkeypatch.setitem(git_process.GIT_ENV, "GIT_CONFIG_PARAMETERS", "'protocol.version'='0'")
    settings = _settings(tmp_path, [{"name": "app", "url": repo.url, "image": "team/app"}])
    runner = _RecordingRunner()
    with SourceFetcher(settings, HttpClient(), run=runner).checkout(settings.repository("app"), first) as root:
        assert (root / "file.txt").read_text() == "one\n"
    fetches = [argv for argv, _ in runner.calls if "fetch" in argv]
    assert len(fetches) == 2 and "--depth" in fetches[0] and "--depth" not in fetches[1]


def test_unknown_commit_is_a_source_fetch_error(tmp_path):
    repo = _git_repo(tmp_path)
    repo.commit({"file.txt": "one\n"})
    settings = _settings(tmp_path, [{"name": "app", "url": repo.url, "image": "team/app"}])
    with pytest.raises(SourceFetchError, match="commit 89abcdef0123 is on no branch or tag"):
        with SourceFetcher(settings, HttpClient()).checkout(settings.repository("app"), SHA):
            pass
    with pytest.raises(SourceFetchError, match="not a full commit SHA"):
        with SourceFetcher(settings, HttpClient()).checkout(settings.repository("app"), "--upload-pack=evil"):
            pass


# --- GitHub tarballs ---------------------------------------------------------------------------------------
def _github_settings(tmp_path):
    return _settings(tmp_path, [{"repo": "acme/app", "image": "acme/app"}], github={"token": "tok-abc-123"})


@responses.activate
def test_tarball_is_fetched_with_the_token_and_stripped(tmp_path):
    settings = _github_settings(tmp_path)
    responses.get(f"https://api.github.com/repos/acme/app/tarball/{SHA}",
                  body=github_tarball("acme-app-89abcde", {"a.txt": "A", "dir/b.txt": "B"}, commit=SHA),
                  match=[matchers.header_matcher({"Authorization": "Bearer tok-abc-123"})])
    with SourceFetcher(settings, HttpClient()).checkout(settings.repository("acme/app"), SHA) as root:
        assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == ["a.txt", "dir", "dir/b.txt"]
        assert (root / "dir/b.txt").read_text() == "B"


@responses.activate
@pytest.mark.parametrize("status", [401, 403, 404])
def test_tarball_refusals_are_source_fetch_errors(tmp_path, status):
    settings = _github_settings(tmp_path)
    responses.get(f"https://api.github.com/repos/acme/app/tarball/{SHA}", status=status)
    with pytest.raises(SourceFetchError, match=f"HTTP {status}") as err:
        with SourceFetcher(settings, HttpClient()).checkout(settings.repository("acme/app"), SHA):
            pass
    assert "tok-abc-123" not in str(err.value)


def _tar(members: list[tarfile.TarInfo], commit: str | None = SHA) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT,
                      pax_headers={"comment": commit} if commit else {}) as tar:
        for m in members:
            tar.addfile(m, io.BytesIO(b"x" * m.size) if m.isfile() else None)
    return buf.getvalue()


def _member(name: str, **kw) -> tarfile.TarInfo:
    m = tarfile.TarInfo(name)
    m.size = 1
    for k, v in kw.items():
        setattr(m, k, v)
    return m


@responses.activate
@pytest.mark.parametrize("body, problem", [
    (_tar([_member("top/../../escape")]), "cannot be unpacked"),
    (_tar([_member("top/link", type=tarfile.SYMTYPE, linkname="/etc/passwd", size=0)]), "cannot be unpacked"),
    (_tar([_member("top/a"), _member("other/b")]), "more than one top-level"),
    (github_tarball("top", {"a": "a"}, commit="f" * 40), "holds commit ffffffffffff"),
    (github_tarball(f"acme-app-{SHA[:7]}", {"a": "a"}, commit=None), "carries no commit id"),
])
def test_unsafe_or_wrong_tarballs_are_refused(tmp_path, body, problem):
    settings = _github_settings(tmp_path)
    responses.get(f"https://api.github.com/repos/acme/app/tarball/{SHA}", body=body)
    with pytest.raises(SourceFetchError, match=problem):
        with SourceFetcher(settings, HttpClient()).checkout(settings.repository("acme/app"), SHA):
            pass
    assert not (tmp_path / "escape").exists()
    assert list((tmp_path / "work").iterdir()) == []


# --- registry client ---------------------------------------------------------------------------------------
MANIFEST = {"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"digest": "sha256:" + "c" * 64}}
CONFIG = {"config": {"Labels": {"org.opencontainers.image.version": "1.4.2"}}}


@responses.activate
def test_registry_answers_a_bearer_challenge_with_a_token():
    base = "https://reg.example.com/v2/team/app"
    challenge = 'Bearer realm="https://auth.example.com/token",service="reg.example.com",' \
                'scope="repository:team/app:pull"'
    bearer = {"Authorization": "Bearer tkn-1"}
    responses.get(f"{base}/manifests/1", status=401, headers={"WWW-Authenticate": challenge})
    responses.get("https://auth.example.com/token", json={"token": "tkn-1"}, match=[
        matchers.query_param_matcher({"service": "reg.example.com", "scope": "repository:team/app:pull"}),
        matchers.header_matcher({"Authorization": "Basic " + base64.b64encode(b"bot:pw").decode()})])
    responses.get(f"{base}/manifests/1", json=MANIFEST, match=[matchers.header_matcher(bearer)])
    responses.get(f"{base}/blobs/sha256:{'c' * 64}", json=CONFIG, match=[matchers.header_matcher(bearer)])
    responses.head(f"{base}/manifests/1.4", status=404, match=[matchers.header_matcher(bearer)])
    client = RegistryClient("reg.example.com", "bot", "pw")
    assert client.image_version("team/app", "1") == "1.4.2"
    assert client.manifest_digest("team/app", "1.4") is None  # the cached token is sent at once


@responses.activate
def test_registry_basic_challenge_and_index_manifests():
    base = "http://localhost:5000/v2/team/app"
    basic = {"Authorization": "Basic " + base64.b64encode(b"bot:pw").decode()}
    index = {"mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        {"digest": "sha256:" + "a" * 64, "platform": {"os": "linux", "architecture": "arm64"}},
        {"digest": "sha256:" + "b" * 64, "platform": {"os": "linux", "architecture": "amd64"}}]}
    responses.get(f"{base}/manifests/1", status=401, headers={"WWW-Authenticate": 'Basic realm="r"'})
    responses.get(f"{base}/manifests/1", json=index, match=[matchers.header_matcher(basic)])
    responses.get(f"{base}/manifests/sha256:{'b' * 64}", json=MANIFEST, match=[matchers.header_matcher(basic)])
    responses.get(f"{base}/blobs/sha256:{'c' * 64}", json=CONFIG)
    responses.head(f"{base}/manifests/2", headers={"Docker-Content-Digest": "sha256:" + "d" * 64})
    client = RegistryClient("localhost:5000", "bot", "pw")
    assert client.image_version("team/app", "1") == "1.4.2"
    assert client.manifest_digest("team/app", "2") == "sha256:" + "d" * 64


@responses.activate
def test_registry_refusal_is_an_error_without_secrets():
    responses.get("https://reg.example.com/v2/team/app/manifests/1", status=401,
                  headers={"WWW-Authenticate": 'Basic realm="r"'})
    with pytest.raises(RegistryError, match="HTTP 401") as err:
        RegistryClient("reg.example.com", "bot", "secret-pw").image_version("team/app", "1")
    assert "secret-pw" not in str(err.value)


# --- tags and builder errors -------------------------------------------------------------------------------
@pytest.mark.parametrize("tag, version, expected", [
    (None, None, [f"sha-{SHA[:12]}"]),  # staging is moved by the tag mover, never pushed by a build
    ("v1.2.3", "1.2.3", ["1.2.3"]),
    ("1.2.3", "1.2.3", ["1.2.3"]),
    ("v2.0.0-rc.1+build.5", "2.0.0-rc.1+build.5", ["2.0.0-rc.1-build.5"]),
])
def test_primary_tags(tmp_path, tag, version, expected):
    store = StateStore(tmp_path / "s.db")
    record = store.build(enqueue(store, "app", SHA, tag=tag))
    assert primary_tags(record) == expected


def test_unreachable_engine_error_names_the_host_and_hides_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:1")
    settings = _settings(tmp_path, github={"token": "tok-abc-123"})

    def factory(**_):
        raise docker.errors.DockerException("connection refused while sending tok-abc-123")

    store = StateStore(tmp_path / "s.db")
    record = store.build(enqueue(store, "app", SHA))
    with pytest.raises(EngineUnavailable) as err:
        ImageBuilder(settings, docker_factory=factory).build(record, settings.repository("app"))
    assert "DOCKER_HOST=tcp://127.0.0.1:1" in str(err.value)
    assert "tok-abc-123" not in str(err.value) and "***" in str(err.value)


# --- the worker ------------------------------------------------------------------------------------------
class _FakeBuilder:
    """Runs `behaviour(record)` per build: returns a BuildResult or raises."""

    def __init__(self, behaviour):
        self.behaviour = behaviour
        self.calls: list[int] = []

    def build(self, record, repo, on_log=None):
        self.calls.append(record.id)
        if on_log:
            on_log("Step 1/1 : fake")
        return self.behaviour(record)


def _ok(record):
    return BuildResult("reg/app", (f"reg/app:sha-{record.sha[:12]}",), "sha256:" + "e" * 64)


def test_retry_delay_is_exponential_and_capped():
    assert [retry_delay(30, n) for n in (1, 2, 3)] == [30, 60, 120]
    assert retry_delay(30, 50) == 3600


def test_watchdog_records_a_timeout_and_ignores_a_late_success(tmp_path):
    settings = _settings(tmp_path, timeout_seconds=0.3, retries=0)
    store = StateStore(tmp_path / "s.db")
    build_id = enqueue(store, "app", SHA)
    released = threading.Event()

    def stuck(record):
        released.wait(20)
        return _ok(record)

    worker = BuildWorker(settings, store, _FakeBuilder(stuck), Metrics())
    began = time.monotonic()
    (done,) = worker.run_until_idle()
    assert time.monotonic() - began < 5
    assert done.status is BuildStatus.FAILED and done.error.startswith("BuildTimeout")
    released.set()
    time.sleep(0.3)
    assert store.build(build_id).status is BuildStatus.FAILED
    assert store.build(build_id).digest is None


def test_unexpected_errors_are_recorded_and_the_worker_goes_on(tmp_path, caplog):
    settings = _settings(tmp_path, [{"name": "a", "url": "/x", "image": "t/a"},
                                    {"name": "b", "url": "/y", "image": "t/b"}], retries=0)
    store = StateStore(tmp_path / "s.db")
    a = enqueue(store, "a", SHA)
    b = enqueue(store, "b", SHA)
    gone = enqueue(store, "removed-from-config", SHA)

    def behaviour(record):
        if record.repo == "a":
            raise ZeroDivisionError("bug")
        return _ok(record)

    metrics = Metrics()
    worker = BuildWorker(settings, store, _FakeBuilder(behaviour), metrics)
    with caplog.at_level(logging.INFO):
        done = {r.id: r for r in worker.run_until_idle()}
    assert done[a].status is BuildStatus.FAILED and "internal error: ZeroDivisionError" in done[a].error
    assert done[b].status is BuildStatus.SUCCEEDED and done[b].pushed_tags == (f"reg/app:sha-{SHA[:12]}",)
    assert done[gone].status is BuildStatus.FAILED and "no longer configured" in done[gone].error
    assert metrics.builds.labels("succeeded")._value.get() == 1
    assert metrics.builds.labels("failed")._value.get() == 2
    assert metrics.build_queue._value.get() == 0
    assert any("b@" + SHA[:12] + " | Step 1/1" in r.getMessage() for r in caplog.records)
    succeeded = [r for r in caplog.records if getattr(r, "event", None) == "build.succeeded"]
    assert succeeded[0].fields["digest"] == "sha256:" + "e" * 64 and succeeded[0].fields["ref"] == "master"


def test_build_errors_are_retried_with_backoff_but_not_within_one_call(tmp_path):
    settings = _settings(tmp_path, retries=2, retry_backoff_seconds=0)
    store = StateStore(tmp_path / "s.db")
    build_id = enqueue(store, "app", SHA, max_attempts=3)

    def failing(record):
        raise ImageBuildFailed("step 2 failed")

    builder = _FakeBuilder(failing)
    worker = BuildWorker(settings, store, builder, Metrics())
    # A zero backoff makes the retry due at once; run_until_idle still leaves it for the next call.
    assert [(r.status, r.attempts) for r in worker.run_until_idle()] == [(BuildStatus.QUEUED, 1)]
    assert [(r.status, r.attempts) for r in worker.run_until_idle()] == [(BuildStatus.QUEUED, 2)]
    assert [(r.status, r.attempts) for r in worker.run_until_idle()] == [(BuildStatus.FAILED, 3)]
    assert worker.run_until_idle() == []
    assert builder.calls == [build_id] * 3
    assert store.build(build_id).error == "ImageBuildFailed: step 2 failed"


def test_worker_threads_run_queued_builds_and_stop(tmp_path):
    settings = _settings(tmp_path, [{"name": f"r{i}", "url": f"/r{i}", "image": f"t/r{i}"} for i in range(4)],
                         concurrency=2)
    store = StateStore(tmp_path / "s.db")
    ids = [enqueue(store, f"r{i}", SHA) for i in range(4)]
    running = []
    lock = threading.Lock()

    def slow(record):
        with lock:
            running.append(record.id)
        time.sleep(0.2)
        return _ok(record)

    worker = BuildWorker(settings, store, _FakeBuilder(slow), Metrics())
    worker.start()
    deadline = time.monotonic() + 10
    while any(store.build(i).status is not BuildStatus.SUCCEEDED for i in ids):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    worker.stop(timeout=5)
    assert sorted(running) == ids
    assert worker._threads == []


def test_workdir_is_created_and_left_empty(tmp_path):
    repo = _git_repo(tmp_path)
    sha = repo.commit({"f": "1"})
    settings = _settings(tmp_path, [{"name": "app", "url": repo.url, "image": "t/a"}],
                         workdir=str(tmp_path / "deep" / "work"))
    with SourceFetcher(settings, HttpClient()).checkout(settings.repository("app"), sha) as root:
        assert Path(tmp_path / "deep" / "work") in root.parents
    assert list((tmp_path / "deep" / "work").iterdir()) == []
