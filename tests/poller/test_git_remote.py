"""`git ls-remote` detection against real local bare repositories with real commits and tags."""

from __future__ import annotations

import pytest

from polling_server.config import parse_settings
from polling_server.cycle import RepositoryPoller
from polling_server.errors import SourceRejected
from polling_server.metrics import Metrics
from polling_server.sources.git_remote import GitRemoteSource, parse_ls_remote
from polling_server.state import StateStore
from tests.gitrepo import GitRepo, git


@pytest.fixture
def repo(tmp_path):
    r = GitRepo(tmp_path)
    r.commit({"Dockerfile": "FROM scratch\n"}, "first")
    return r


def make(tmp_path, url, **repo_kw):
    settings = parse_settings({"state_path": str(tmp_path / "state.db"),
                               "repositories": [{"url": url, "image": "team/app", "name": "app", **repo_kw}]}, env={})
    store = StateStore(settings.state_path)
    return settings, store, RepositoryPoller(settings, store, Metrics(), {"git": GitRemoteSource(timeout_seconds=20)})


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
    out = git("ls-remote", str(repo.remote), cwd=tmp_path)
    obs = parse_ls_remote(out, "master")
    assert obs.branch_head == repo.head()
    obs = parse_ls_remote(out, "main")
    assert obs.branch_checked and obs.branch_head is None
