"""`git ls-remote` detection against real local bare repositories with real commits and tags (and loopback HTTP)."""

from __future__ import annotations

import base64
import subprocess
import time
import uuid

import pytest

from polling_server.config import parse_settings
from polling_server.cycle import RepositoryPoller
from polling_server.errors import MalformedResponse, SourceError, SourceRejected, SourceUnavailable
from polling_server.git_process import run_git
from polling_server.metrics import Metrics
from polling_server.sources.git_remote import GitRemoteSource, LsRemoteParser, parse_ls_remote
from polling_server.state import StateStore
from tests.git_http import AuthGitServer, SilentServer, live_processes_mentioning
from tests.gitrepo import GitRepo, git


@pytest.fixture
def repo(tmp_path):
    r = GitRepo(tmp_path)
    r.commit({"Dockerfile": "FROM scratch\n"}, "first")
    return r


def make(tmp_path, url, git_settings=None, run=run_git, **repo_kw):
    settings = parse_settings({"state_path": str(tmp_path / "state.db"),
                               "git": {"ls_remote_timeout_seconds": 20, **(git_settings or {})},
                               "repositories": [{"url": url, "image": "team/app", "name": "app", **repo_kw}]}, env={})
    store = StateStore(settings.state_path)
    source = GitRemoteSource(settings.git, run=run)
    return settings, store, RepositoryPoller(settings, store, Metrics(), {"git": source})


def planned(store):
    return [(b.kind.value, b.ref, b.sha) for b in reversed(store.builds())]


def test_real_repository_commits_and_tags(tmp_path, repo):
    first = repo.head()
    repo.tag("v0.1.0", annotated=True)
    settings, store, poller = make(tmp_path, repo.url)
    poller.poll_all()  # baseline
    assert planned(store) == []
    assert store.repo_state("app").tags == {"v0.1.0": first}  # annotated tag peeled to its commit

    second = repo.commit({"a.txt": "2"}, "second")
    repo.tag("v1.0.0", annotated=True)
    repo.tag("latest-build")  # not semver: ignored
    third = repo.commit({"a.txt": "3"}, "third")
    repo.tag("1.1.0-rc.1")
    poller.poll_all()
    assert planned(store) == [("staging", "master", third), ("release", "v1.0.0", second),
                              ("release", "1.1.0-rc.1", third)]
    poller.poll_all()  # nothing new: nothing planned again
    assert len(planned(store)) == 3


def test_moved_tag_is_rebuilt_and_deleted_tag_plans_nothing(tmp_path, repo):
    first = repo.head()
    repo.tag("v1.0.0")
    settings, store, poller = make(tmp_path, repo.url)
    poller.poll_all()
    second = repo.commit({"b": "x"}, "fix")
    repo.tag("v1.0.0", sha=second, force=True)
    poller.poll_all()
    assert planned(store) == [("staging", "master", second), ("release", "v1.0.0", second)]
    repo.delete_tag("v1.0.0")
    poller.poll_all()
    assert len(planned(store)) == 2
    assert store.repo_state("app").tags == {}
    assert first != second


def test_force_push_backwards_builds_the_branch_head(tmp_path, repo):
    first = repo.head()
    settings, store, poller = make(tmp_path, repo.url)
    poller.poll_all()
    second = repo.commit({"c": "1"})
    poller.poll_all()
    repo.reset_hard(first)
    repo.push(force=True)
    poller.poll_all()
    assert planned(store) == [("staging", "master", second), ("staging", "master", first)]
    # The newer staging build supersedes nothing that already finished, but an older queued one is superseded.
    builds = store.builds()
    assert builds[0].sha == first and builds[1].status.value == "superseded"


def test_only_the_newest_of_several_pushes_is_built(tmp_path, repo, caplog):
    caplog.set_level("INFO")
    settings, store, poller = make(tmp_path, repo.url)
    poller.poll_all()
    repo.commit({"x": "1"})
    poller.poll_all()
    newest = repo.commit({"x": "2"})
    poller.poll_all()
    queued = [b for b in store.builds() if b.status.value == "queued"]
    assert [b.sha for b in queued] == [newest]
    superseded = [b for b in store.builds() if b.status.value == "superseded"]
    assert len(superseded) == 1 and superseded[0].superseded_by == queued[0].id
    logged = [r.fields for r in caplog.records if getattr(r, "event", "") == "build.superseded"]
    assert [(f["sha"], f["by"]) for f in logged] == [(superseded[0].sha, queued[0].id)]


def test_every_release_tag_is_built_even_several_at_once(tmp_path, repo):
    settings, store, poller = make(tmp_path, repo.url)
    poller.poll_all()
    for v in ("v1.0.0", "v1.0.1", "v1.1.0"):
        repo.commit({"v": v})
        repo.tag(v)
    poller.poll_all()
    releases = [b.ref for b in reversed(store.builds()) if b.kind.value == "release" and b.status.value == "queued"]
    assert releases == ["v1.0.0", "v1.0.1", "v1.1.0"]


def test_initial_build(tmp_path, repo):
    settings, store, poller = make(tmp_path, repo.url, initial_build=True)
    poller.poll_all()
    poller.poll_all()
    assert planned(store) == [("staging", "master", repo.head())]


def test_unreachable_remote_is_a_clear_error(tmp_path):
    settings, store, poller = make(tmp_path, str(tmp_path / "missing.git"))
    report = poller.poll_all()
    assert "git ls-remote" in report.failed["app"] and "missing.git" in report.failed["app"]
    with pytest.raises(SourceRejected):
        GitRemoteSource().poll(settings.repositories[0], store, store.repo_state("app"), True)


def test_url_credentials_never_reach_errors(tmp_path):
    settings, store, poller = make(tmp_path, "http://user:s3cret@127.0.0.1:9/repo.git")
    report = poller.poll_all()
    assert "s3cret" not in report.failed["app"]


def test_branch_with_a_similar_name_is_not_mistaken(tmp_path, repo):
    git("push", "-q", "origin", "HEAD:refs/heads/feature/master", cwd=repo.work)
    out = git("ls-remote", str(repo.remote), cwd=tmp_path).encode()
    obs, _ = parse_ls_remote(out, "master")
    assert obs.branch_head == repo.head()
    obs, _ = parse_ls_remote(out, "main")
    assert obs.branch_checked and obs.branch_head is None


# --- hardening: refs that cannot be taken, bounds, credentials, hung remotes ------------------------------------
ZERO = "0" * 40


def canned_ls_remote(output: bytes):
    """A runner that prints `output` as ls-remote would, recording the argv and environment it was given."""
    calls = []

    def run(argv, *, env, timeout, on_stdout=None, cwd=None):
        calls.append((list(argv), dict(env)))
        on_stdout(output)
        return subprocess.CompletedProcess(argv, 0, "", "")
    run.calls = calls
    return run


def skipped_lines(caplog):
    return [r.getMessage() for r in caplog.records if getattr(r, "event", "") == "poll.skipped"]


def test_a_tag_name_that_is_not_utf8_is_skipped_and_the_rest_polled(tmp_path, repo, caplog):
    settings, store, poller = make(tmp_path, repo.url)
    poller.poll_all()
    second = repo.commit({"a.txt": "2"})
    repo.tag("v1.1.0")
    subprocess.run([b"git", b"update-ref", b"refs/tags/v2.0.0-\xff\xfe", second.encode()], cwd=repo.remote,
                   check=True, capture_output=True)
    caplog.set_level("INFO")
    report = poller.poll_all()
    assert report.failed == {}
    assert planned(store) == [("staging", "master", second), ("release", "v1.1.0", second)]
    assert store.repo_state("app").tags == {"v1.1.0": second}
    (line,) = skipped_lines(caplog)
    assert "not valid UTF-8" in line and "v2.0.0-\\xff\\xfe" in line
    poller.poll_all()  # every later poll goes on the same way
    assert len(planned(store)) == 2


def test_all_zero_object_ids_are_skipped_and_change_nothing_stored(tmp_path, caplog):
    head, tag_commit, new_commit = "a" * 40, "b" * 40, "c" * 40
    first = canned_ls_remote(f"{head}\trefs/heads/master\n{tag_commit}\trefs/tags/v1.0.0\n".encode())
    settings, store, poller = make(tmp_path, "https://git.example.com/team/app.git", run=first)
    poller.poll_all()
    assert store.repo_state("app").tags == {"v1.0.0": tag_commit}
    zeros = canned_ls_remote(f"{ZERO}\trefs/heads/master\n{ZERO}\trefs/tags/v1.0.0\n{ZERO}\trefs/tags/v2.0.0\n"
                             f"{new_commit}\trefs/tags/v1.1.0\n{'d' * 40}\trefs/tags/v3.0.0\n"
                             f"{ZERO}\trefs/tags/v3.0.0^{{}}\n".encode())
    poller.sources["git"] = GitRemoteSource(settings.git, run=zeros)
    caplog.set_level("INFO")
    report = poller.poll_all()
    assert report.failed == {}
    assert planned(store) == [("release", "v1.1.0", new_commit)]
    state = store.repo_state("app")
    assert state.branch_head == head  # the branch line was skipped: the stored head stands
    assert state.tags == {"v1.0.0": tag_commit, "v1.1.0": new_commit}  # v1.0.0 kept, v2/v3 never taken
    lines = skipped_lines(caplog)
    assert len(lines) == 4 and all("all-zero object id" in line for line in lines)
    assert any("'v3.0.0'" in line for line in lines)


def test_more_refs_than_the_bound_fail_the_poll_and_keep_the_state(tmp_path, repo):
    repo.tag("v1.0.0")
    settings, store, poller = make(tmp_path, repo.url)
    poller.poll_all()
    before = store.repo_state("app")
    repo.commit({"b": "1"})
    for i in range(6):
        repo.tag(f"v1.1.{i}")
    _, _, bounded = make(tmp_path, repo.url, git_settings={"max_refs": 5})
    report = bounded.poll_all()
    assert "more than git.max_refs (5) refs" in report.failed["app"]
    assert store.repo_state("app") == before
    assert planned(store) == []
    poller.poll_all()  # within the default bound the same repository polls as usual
    assert len(planned(store)) == 7


def test_endless_ls_remote_output_is_cut_off_at_the_bound(tmp_path):
    marker = f"refs/tags/endless-{uuid.uuid4().hex}"

    def endless(argv, **kwargs):  # a "remote" that never stops listing refs
        return run_git(["yes", f"{'a' * 40}\t{marker}"], **kwargs)

    settings, store, _ = make(tmp_path, "https://git.example.com/team/app.git", git_settings={
        "max_refs": 1000, "ls_remote_timeout_seconds": 120})
    source = GitRemoteSource(settings.git, run=endless)
    with pytest.raises(SourceError, match=r"more than git.max_refs \(1000\) refs"):
        source.poll(settings.repositories[0], store, store.repo_state("app"), True)
    assert _wait_gone(marker) == []


def _wait_gone(text: str, safety_net: float = 15.0) -> list:
    """Processes mentioning `text` once they had the chance to die (SIGKILL lands asynchronously)."""
    stop = time.monotonic() + safety_net
    while (left := live_processes_mentioning(text)) and time.monotonic() < stop:
        time.sleep(0.05)
    return left


class RecordingRun:
    def __init__(self):
        self.calls: list[tuple[list[str], dict]] = []

    def __call__(self, argv, **kwargs):
        self.calls.append((list(argv), dict(kwargs["env"])))
        return run_git(argv, **kwargs)


def test_url_password_travels_in_a_header_not_in_argv(tmp_path, repo):
    first = repo.head()
    repo.tag("v1.0.0")
    with AuthGitServer(repo.remote.parent, "deploy", "pw-4711-secret") as server:
        runner = RecordingRun()
        settings, store, poller = make(tmp_path, server.url("remote.git", "deploy:pw-4711-secret"), run=runner)
        report = poller.poll_all()
        assert report.failed == {}
        assert store.repo_state("app").tags == {"v1.0.0": first}
        assert store.repo_state("app").branch_head == first
        assert server.expected in server.authorizations
    ((argv, env),) = runner.calls
    assert argv[:3] == ["git", "ls-remote", "--end-of-options"]
    assert argv[3] == server.url("remote.git")
    assert not any("pw-4711-secret" in a for a in argv)
    assert env["GIT_CONFIG_KEY_0"] == f"http.http://127.0.0.1:{server.port}/.extraHeader"
    assert base64.b64decode(env["GIT_CONFIG_VALUE_0"].removeprefix("Authorization: Basic ")) == \
        b"deploy:pw-4711-secret"


def test_a_wrong_url_password_is_refused_without_showing_it(tmp_path, repo):
    with AuthGitServer(repo.remote.parent, "deploy", "right-password") as server:
        settings, store, poller = make(tmp_path, server.url("remote.git", "deploy:wrong-password"))
        report = poller.poll_all()
    assert "git ls-remote" in report.failed["app"] and "wrong-password" not in report.failed["app"]
    assert store.repo_state("app").baseline is False


def test_a_remote_that_never_answers_leaves_no_git_helper_behind(tmp_path):
    with SilentServer() as server:
        settings, store, _ = make(tmp_path, server.url(), git_settings={"ls_remote_timeout_seconds": 1})
        source = GitRemoteSource(settings.git)
        with pytest.raises(SourceUnavailable, match="no answer within 1s"):
            source.poll(settings.repositories[0], store, store.repo_state("app"), True)
        assert server.accepted >= 1  # git's HTTP helper did connect: there was a helper to clean up
        assert _wait_gone(f"127.0.0.1:{server.port}") == []


def test_output_is_parsed_across_chunk_boundaries_and_without_a_final_newline():
    head, tag = "1" * 40, "2" * 40
    output = f"{head}\trefs/heads/master\n{tag}\trefs/tags/v1.0.0".encode()
    parser = LsRemoteParser("master", max_refs=2)
    for i in range(0, len(output), 7):
        parser.feed(output[i:i + 7])
    observation, skipped = parser.result()
    assert (observation.branch_head, dict(observation.tags), skipped) == (head, {"v1.0.0": tag}, ())
    with pytest.raises(MalformedResponse, match="unexpected git ls-remote line"):
        parse_ls_remote(b"not-a-sha\trefs/tags/v1\n", "master")
