"""Build logs: every line the builder writes is kept with its build, masked of every configured secret, written in
batches, bounded (keeping the end), never failing a build when it cannot be written, completed when the build ends,
pruned with old builds, and printed (and followed) by `polling-server logs`."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading

import pytest

from polling_server.builds.build_log import BuildLog
from polling_server.builds.docker_engine import BuildResult
from polling_server.builds.worker import BuildWorker
from polling_server.cli import main
from polling_server.config import parse_settings
from polling_server.errors import ImageBuildFailed, OperatorError
from polling_server.metrics import Metrics
from polling_server.planning.model import BuildKind, BuildRequest, BuildStatus, RepoPlan, RepoState
from polling_server.state import StateStore, TagPosition
from tests.poller.build_helpers import enqueue

SHA = "89abcdef0123456789abcdef0123456789abcdef"
ENV = {"REG_PW": "reg-pass-4f1a9c", "GH_TOKEN": "ghp_token_8d2e7b", "READ": "read-token-c3d9e1"}


def _settings(tmp_path, **extra):
    data = {"state_path": str(tmp_path / "state.db"), "http": {"enabled": False},
            "builds": {"retries": 0, "retry_backoff_seconds": 0, "timeout_seconds": 60},
            "repositories": [{"name": "app", "url": "/nonexistent", "image": "team/app"}]}
    for key, value in extra.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return parse_settings(data, env=ENV)


class Talker:
    """A builder that writes `lines` through on_log, runs `during()` (if any), then succeeds or raises `error`."""

    def __init__(self, lines, error=None, during=None):
        self.lines, self.error, self.during = lines, error, during

    def build(self, record, repo, on_log=None):
        for line in self.lines:
            on_log(line)
        if self.during:
            self.during(on_log)
        if self.error:
            raise self.error
        return BuildResult("reg/team/app", (f"reg/team/app:sha-{record.sha[:12]}",), "sha256:" + "e" * 64)


# --- which values are secrets ---------------------------------------------------------------------------------
SECRET_CASES = [
    ("registry password", {"registry": {"host": "r", "username": "u", "password": "${REG_PW}"}}, ENV["REG_PW"]),
    ("github token", {"github": {"token": "${GH_TOKEN}"}}, ENV["GH_TOKEN"]),
    ("read token", {"http": {"enabled": False, "read_token": "${READ}"}}, ENV["READ"]),
    ("chart repository password", {"chart_repository": {"url": "http://c", "username": "u", "password": "chart-pw-77"},
                                   "helm_api": {"url": "http://h"}}, "chart-pw-77"),
    ("chart repository token", {"chart_repository": {"url": "http://c", "token": "chart-jwt-88"},
                                "helm_api": {"url": "http://h"}}, "chart-jwt-88"),
    ("helm-api token", {"helm_api": {"url": "http://h", "token": "helm-api-tok-99"}}, "helm-api-tok-99"),
    ("github webhook secret", {"webhooks": {"github_secret": "gh-hook-secret-1"}}, "gh-hook-secret-1"),
    ("gitlab webhook token", {"webhooks": {"gitlab_token": "gl-hook-token-2"}}, "gl-hook-token-2"),
    ("gitea webhook secret", {"webhooks": {"gitea_secret": "gt-hook-secret-3"}}, "gt-hook-secret-3"),
    ("charts webhook token", {"webhooks": {"charts_token": "charts-hook-tok-4"}}, "charts-hook-tok-4"),
    ("notification URL", {"notifications": [{"url": "https://hooks.slack.example/services/T0/B0/xoxsecret5"}]},
     "https://hooks.slack.example/services/T0/B0/xoxsecret5"),
    ("notification URL path", {"notifications": [{"url": "https://hooks.slack.example/services/T0/B0/xoxsecret6"}]},
     "/services/T0/B0/xoxsecret6"),
    ("notification signing secret", {"notifications": [{"url": "https://n.example/x", "format": "json",
                                                        "secret": "sign-secret-7"}]}, "sign-secret-7"),
    ("password in a remote URL", {"repositories": [{"name": "app", "url": "https://bot:url-pw%2Fx9@git.example/a.git",
                                                    "image": "team/app"}]}, "url-pw/x9"),
    ("password in a remote URL, as written", {"repositories": [{"name": "app", "image": "team/app",
                                                                "url": "https://bot:url-pw%2Fx9@git.example/a.git"}]},
     "url-pw%2Fx9"),
    ("token as a remote URL's user", {"repositories": [{"name": "app", "url": "https://glpat-tok10@git.example/a.git",
                                                        "image": "team/app"}]}, "glpat-tok10"),
]


@pytest.mark.parametrize(("what", "config", "secret"), SECRET_CASES, ids=[c[0] for c in SECRET_CASES])
def test_every_kind_of_secret_is_masked_in_the_build_log(tmp_path, what, config, secret):
    settings = _settings(tmp_path, **config)
    assert secret in settings.secret_values()
    store = StateStore(tmp_path / "state.db")
    build_id = enqueue(store, "app", SHA)
    log = BuildLog(store, build_id, settings.secret_values(), settings.builds.log_max_bytes)
    log.line(f"Step 2/3 : RUN curl -H 'Authorization: {secret}' https://example.invalid")
    log.close()
    text, _, _, _ = store.read_log(build_id)
    assert secret not in text
    assert "Authorization: ***'" in text


def test_the_secret_values_name_nothing_that_is_not_a_secret(tmp_path):
    settings = _settings(tmp_path, registry={"host": "registry.example:5000", "username": "ci-bot"})
    assert settings.secret_values() == ()


# --- batches and bounds ---------------------------------------------------------------------------------------
def test_lines_are_written_in_batches_not_one_write_each(tmp_path):
    store = StateStore(tmp_path / "s.db")
    build_id = enqueue(store, "app", SHA)
    log = BuildLog(store, build_id, (), 1 << 20, flush_seconds=3600, flush_bytes=1000)
    for i in range(5):
        log.line(f"line {i}")
    assert store.read_log(build_id)[0] == ""  # below the batch size, not yet written
    for i in range(5, 200):
        log.line(f"line {i}")  # past 1000 bytes: written at once, without waiting for the timer
    written = store.read_log(build_id)[0]
    assert written.startswith("line 0\nline 1\n") and len(written) >= 1000
    log.close()
    assert store.read_log(build_id)[0] == "".join(f"line {i}\n" for i in range(200))


def test_a_quiet_build_still_has_its_last_lines_written_by_the_timer(tmp_path):
    store = StateStore(tmp_path / "s.db")
    build_id = enqueue(store, "app", SHA)
    log = BuildLog(store, build_id, (), 1 << 20, flush_seconds=0.05)
    log.line("Step 1/2 : FROM base")
    try:
        done = threading.Event()
        for _ in range(200):  # a safety net of 10 s, not a timing assertion
            if store.read_log(build_id)[0]:
                done.set()
                break
            threading.Event().wait(0.05)
        assert done.is_set()
        assert store.read_log(build_id)[0] == "Step 1/2 : FROM base\n"
    finally:
        log.close()


def test_a_log_keeps_its_end_and_says_where_it_was_cut(tmp_path, capsys):
    settings = _settings(tmp_path, builds={"log_max_bytes": 4096})
    store = StateStore(settings.state_path)
    build_id = enqueue(store, "app", SHA)
    log = BuildLog(store, build_id, (), settings.builds.log_max_bytes, flush_bytes=500)
    for i in range(1000):
        log.line(f"output line {i:04d}")
    log.close()
    store.complete_log(build_id)
    text, total, complete, cut = store.read_log(build_id)
    assert cut and complete
    assert total == sum(len(f"output line {i:04d}\n") for i in range(1000))
    assert text.endswith("output line 0999\n") and "output line 0000" not in text
    assert len(text.encode()) <= 4096 + 500
    store.close()
    cfg = tmp_path / "poller.yaml"
    cfg.write_text(f"state_path: {settings.state_path}\nbuilds: {{log_max_bytes: 4096}}\nrepositories: []\n")
    assert main(["logs", str(build_id), "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("[... earlier output was cut here")
    assert out.endswith("output line 0999\n")


# --- the worker -----------------------------------------------------------------------------------------------
def test_the_worker_keeps_each_build_output_and_completes_it_when_the_build_ends(tmp_path):
    settings = _settings(tmp_path, registry={"host": "r", "username": "u", "password": "${REG_PW}"})
    store = StateStore(settings.state_path)
    build_id = enqueue(store, "app", SHA)
    builder = Talker(["Step 1/2 : FROM local/busybox-base:1", f"Login with {ENV['REG_PW']} ok",
                      "Step 2/2 : RUN echo hello", "hello"])
    (done,) = BuildWorker(settings, store, builder, Metrics()).run_until_idle()
    assert done.status is BuildStatus.SUCCEEDED
    text, _, complete, cut = store.read_log(build_id)
    lines = text.splitlines()
    assert complete and not cut
    assert lines[0].startswith("== ") and f"attempt 1 of 1: staging build of app master at {SHA}" in lines[0]
    assert lines[1:5] == ["Step 1/2 : FROM local/busybox-base:1", "Login with *** ok", "Step 2/2 : RUN echo hello",
                          "hello"]
    assert lines[5].endswith(f"pushed reg/team/app:sha-{SHA[:12]} (sha256:{'e' * 64})")
    assert ENV["REG_PW"] not in text


def test_a_failed_attempt_that_will_be_retried_leaves_the_log_open_and_the_retry_appends(tmp_path):
    settings = _settings(tmp_path, builds={"retries": 1})
    store = StateStore(settings.state_path)
    build_id = enqueue(store, "app", SHA, max_attempts=2)
    (first,) = BuildWorker(settings, store, Talker(["Step 1/1 : RUN false"], ImageBuildFailed("step 1 failed")),
                           Metrics()).run_until_idle()
    assert first.status is BuildStatus.QUEUED
    text, _, complete, _ = store.read_log(build_id)
    assert not complete and "attempt 1 failed: ImageBuildFailed: step 1 failed" in text
    (second,) = BuildWorker(settings, store, Talker(["Step 1/1 : RUN true"], ImageBuildFailed("again")),
                            Metrics()).run_until_idle()
    assert second.status is BuildStatus.FAILED
    text, _, complete, _ = store.read_log(build_id)
    assert complete
    assert text.index("attempt 1 failed") < text.index("attempt 2 of 2") < text.index("attempt 2 failed: "
                                                                                       "ImageBuildFailed: again")


def test_a_log_that_cannot_be_written_never_fails_the_build(tmp_path, caplog):
    settings = _settings(tmp_path)
    store = StateStore(settings.state_path, busy_timeout=0.2)
    build_id = enqueue(store, "app", SHA)
    blocker = sqlite3.connect(settings.state_path, isolation_level=None, timeout=5, check_same_thread=False)

    def while_the_database_is_locked(on_log):
        blocker.execute("BEGIN EXCLUSIVE")  # every write of the store now fails: "database is locked"
        for i in range(3000):
            on_log(f"lost line {i:04d} " + "x" * 40)  # past the batch size twice: two writes, both refused
        blocker.execute("ROLLBACK")
        on_log("after the database came back")

    caplog.set_level(logging.WARNING, logger="polling_server")
    (done,) = BuildWorker(settings, store, Talker(["first line"], during=while_the_database_is_locked),
                         Metrics()).run_until_idle()
    blocker.close()
    assert done.status is BuildStatus.SUCCEEDED and done.digest == "sha256:" + "e" * 64
    dropped = [r for r in caplog.records if getattr(r, "event", None) == "build.log_dropped"]
    assert len(dropped) == 1 and dropped[0].fields["build_id"] == build_id  # said once, not per batch
    text, _, complete, _ = store.read_log(build_id)
    assert complete
    assert "line(s) of output are missing here" in text
    assert "after the database came back" in text and text.rstrip().splitlines()[-1].endswith(f"({done.digest})")


# --- pruning --------------------------------------------------------------------------------------------------
def _finish(store: StateStore, build_id: int, ok: bool = True) -> None:
    claimed = store.claim_build()
    assert claimed.id == build_id
    if ok:
        store.finish_build(build_id, [f"reg/app:{build_id}"], f"sha256:{build_id:064d}")
    else:
        store.fail_build(build_id, "failed", None)
    store.append_log(build_id, f"log of {build_id}\n", 4096)


def _release(store: StateStore, tag: str, sha: str, gated: bool = False) -> int:
    request = BuildRequest("app", BuildKind.RELEASE, tag, sha, tag.lstrip("v"), gated=gated)
    (build_id,) = store.save_poll("app", RepoPlan((request,), RepoState(True, sha, {tag: sha}), ()))
    return build_id


def test_prune_drops_the_oldest_finished_builds_with_their_logs_and_keeps_what_is_referenced(tmp_path):
    store = StateStore(tmp_path / "s.db")
    staging = []
    for _ in range(3):
        staging.append(enqueue(store, "app", SHA))
        _finish(store, staging[-1])
    tagged, rolled_to, rolled_from = staging
    store.record_tag_position("app", "1", store.build(tagged), store.build(tagged).digest)
    previous = TagPosition("app", "staging", rolled_from, SHA, store.build(rolled_from).digest, None, 0.0)
    store.record_rollback("app", "staging", "alice", previous, store.build(rolled_to), store.build(rolled_to).digest)
    old_release = _release(store, "v1.0.0", SHA)
    _finish(store, old_release)
    new_release = _release(store, "v1.0.0", "f" * 40)  # the tag moved: rebuilt
    _finish(store, new_release)
    gated = _release(store, "v2.0.0", SHA, gated=True)
    failed = enqueue(store, "app", SHA)
    _finish(store, failed, ok=False)
    overtaken = enqueue(store, "app", SHA)
    newer = enqueue(store, "app", SHA)  # supersedes `overtaken` while it waits
    _finish(store, newer)
    recent = []
    for _ in range(12):
        recent.append(enqueue(store, "app", SHA))
        _finish(store, recent[-1])
    waiting = _release(store, "v1.1.0", SHA)
    other = [enqueue(store, "other", SHA) for _ in range(2)]

    assert store.prune_builds(keep=10) == 7
    left = {b.id for b in store.builds(limit=1000)}
    # The newest ten of the repository, whatever they are, stay.
    assert {waiting, *recent[-9:]} <= left
    # Older and finished, and named by nothing: gone, with their logs.
    gone = {old_release, failed, overtaken, newer, *recent[:3]}
    assert not gone & left
    for build_id in gone:
        with pytest.raises(OperatorError):
            store.read_log(build_id)
    db = sqlite3.connect(tmp_path / "s.db")
    assert db.execute("SELECT COUNT(*) FROM build_logs WHERE build_id IN (SELECT value FROM json_each(?))",
                      (json.dumps(sorted(gone)),)).fetchone()[0] == 0
    db.close()
    # Older, but a mutable tag serves it, a rollback names it, it is its tag's newest build, or it waits.
    assert {tagged, rolled_to, rolled_from, new_release, gated, *other} <= left
    assert store.build(gated).status is BuildStatus.AWAITING_APPROVAL
    assert store.read_log(tagged)[0] == f"log of {tagged}\n"
    assert store.prune_builds(keep=10) == 0  # nothing more to do


def test_the_daemon_prunes_after_once(tmp_path):
    from polling_server.daemon import Daemon

    settings = _settings(tmp_path, builds={"keep": 10}, repositories=[])
    store = StateStore(settings.state_path)
    ids = []
    for _ in range(14):
        ids.append(enqueue(store, "app", SHA))
        _finish(store, ids[-1])
    store.close()
    daemon = Daemon(settings, sources={"github": None, "git": None})
    try:
        daemon.run_once()
        assert sorted(b.id for b in daemon.store.builds(limit=100)) == ids[-10:]
    finally:
        daemon.stop()


# --- polling-server logs --------------------------------------------------------------------------------------
def _config(tmp_path, settings) -> str:
    cfg = tmp_path / "poller.yaml"
    cfg.write_text(f"state_path: {settings.state_path}\nhttp: {{enabled: false}}\nrepositories: []\n")
    return str(cfg)


def test_logs_prints_a_build_log_and_exits_2_for_an_unknown_build(tmp_path, capsys):
    settings = _settings(tmp_path)
    store = StateStore(settings.state_path)
    build_id = enqueue(store, "app", SHA)
    store.append_log(build_id, "Step 1/1 : FROM scratch\n<b>not html</b>\n", 4096)
    store.close()
    cfg = _config(tmp_path, settings)
    assert main(["logs", str(build_id), "--config", cfg]) == 0
    assert capsys.readouterr().out == "Step 1/1 : FROM scratch\n<b>not html</b>\n"
    assert main(["logs", "999", "--config", cfg]) == 2
    err = capsys.readouterr().err
    assert err == "polling-server: there is no build 999\n"


class _Stdout:
    """What the command prints, readable from another thread while it runs."""

    def __init__(self):
        self._parts: list[str] = []
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        with self._lock:
            self._parts.append(text)

    def flush(self) -> None:
        pass

    @property
    def text(self) -> str:
        with self._lock:
            return "".join(self._parts)


def test_logs_follow_streams_a_running_build_until_it_ends(tmp_path, monkeypatch):
    settings = _settings(tmp_path)
    store = StateStore(settings.state_path)
    build_id = enqueue(store, "app", SHA)
    store.claim_build()
    store.append_log(build_id, "line 1\n", 4096)
    cfg = _config(tmp_path, settings)
    out = _Stdout()
    monkeypatch.setattr("sys.stdout", out)
    seen_before_next: list[bool] = []

    def build_goes_on():
        # Each line only once the follower has printed the one before: it follows, it did not read once.
        for n in range(2, 5):
            for _ in range(400):  # a 20 s safety net, not a timing assertion
                if out.text.endswith(f"line {n - 1}\n"):
                    break
                threading.Event().wait(0.05)
            seen_before_next.append(out.text.endswith(f"line {n - 1}\n"))
            store.append_log(build_id, f"line {n}\n", 4096)
        store.finish_build(build_id, ["reg/app:x"], "sha256:" + "1" * 64)
        store.complete_log(build_id)

    writer = threading.Thread(target=build_goes_on)
    writer.start()
    code = main(["logs", str(build_id), "--follow", "--config", cfg])
    writer.join(30)
    store.close()
    assert code == 0
    assert seen_before_next == [True, True, True]
    assert out.text == "line 1\nline 2\nline 3\nline 4\n"
