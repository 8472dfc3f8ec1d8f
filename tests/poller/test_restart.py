"""Crash safety: a crash at any step of a poll loses no planned build and never repeats a finished one."""

from __future__ import annotations

import pytest

from polling_server.config import parse_settings
from polling_server.cycle import RepositoryPoller
from polling_server.metrics import Metrics
from polling_server.planning.model import BuildStatus
from polling_server.sources.git_remote import GitRemoteSource
from polling_server.state import StateStore
from tests.gitrepo import GitRepo


class Crash(Exception):
    pass


class CrashingStore(StateStore):
    """A store whose next save_poll dies before (or after) its transaction, like a killed process."""

    crash = None  # "before" | "after" | None

    def save_poll(self, *a, **kw):
        if self.crash == "before":
            raise Crash
        ids = super().save_poll(*a, **kw)
        if self.crash == "after":
            raise Crash
        return ids


def start(tmp_path, url):
    settings = parse_settings({"state_path": str(tmp_path / "state.db"),
                               "repositories": [{"url": url, "image": "team/app", "name": "app"}]}, env={})
    store = CrashingStore(settings.state_path)
    return store, RepositoryPoller(settings, store, Metrics(), {"git": GitRemoteSource()})


@pytest.mark.parametrize("when", ["before", "after"])
def test_crash_around_the_save_neither_loses_nor_repeats(tmp_path, when):
    repo = GitRepo(tmp_path)
    repo.commit({"a": "1"})
    store, poller = start(tmp_path, repo.url)
    poller.poll_all()  # baseline
    new = repo.commit({"a": "2"})
    repo.tag("v2.0.0")
    store.crash = when
    with pytest.raises(Crash):
        poller.poll_one(poller.settings.repositories[0])
    store.close()

    # "Restart": a new process with a new store on the same file.
    store, poller = start(tmp_path, repo.url)
    poller.poll_all()
    poller.poll_all()
    builds = [(b.kind.value, b.ref, b.sha) for b in reversed(store.builds())]
    assert builds == [("staging", "master", new), ("release", "v2.0.0", new)]


def test_changes_made_while_the_daemon_was_down_are_planned(tmp_path):
    """The baseline is recorded once: a restart compares against the stored state, it does not re-baseline."""
    repo = GitRepo(tmp_path)
    repo.commit({"a": "1"})
    store, poller = start(tmp_path, repo.url)
    poller.poll_all()
    store.close()
    down = repo.commit({"a": "2"})
    store, poller = start(tmp_path, repo.url)
    poller.poll_all()
    assert [(b.ref, b.sha) for b in store.builds()] == [("master", down)]


def test_interrupted_build_is_queued_again_and_finished_one_is_kept(tmp_path):
    store = StateStore(tmp_path / "s.db")
    from polling_server.planning.model import BuildKind, BuildRequest, RepoPlan, RepoState

    plan = RepoPlan((BuildRequest("app", BuildKind.RELEASE, "v1.0.0", "a" * 40, "1.0.0"),
                     BuildRequest("other", BuildKind.RELEASE, "v1.0.0", "b" * 40, "1.0.0")), RepoState(True), ())
    store.save_poll("app", plan, max_attempts=3)
    done = store.claim_build()
    store.finish_build(done.id, ["r/app:1.0.0"], "sha256:" + "0" * 64)
    running = store.claim_build()
    store.close()
    store = StateStore(tmp_path / "s.db")
    interrupted = store.requeue_interrupted()
    assert [b.id for b in interrupted] == [running.id]
    again = store.claim_build()
    assert again.id == running.id and again.attempts == 1
    assert store.claim_build() is None  # the finished one is never handed out again
    assert store.build(done.id).status == BuildStatus.SUCCEEDED


def test_dry_run_saves_nothing(tmp_path):
    repo = GitRepo(tmp_path)
    repo.commit({"a": "1"})
    store, poller = start(tmp_path, repo.url)
    poller.poll_all()
    repo.commit({"a": "2"})
    # A dry run polls on an in-memory copy of the state (what the daemon gives it): the file is untouched.
    copy = StateStore.in_memory_copy(store.path)
    dry = RepositoryPoller(poller.settings, copy, Metrics(), poller.sources)
    assert len(dry.poll_all().planned) == 1
    assert len(dry.poll_all().planned) == 0  # it remembers its own plan across cycles
    assert store.builds() == []
    assert len(poller.poll_all().planned) == 1  # the real run still sees the change
