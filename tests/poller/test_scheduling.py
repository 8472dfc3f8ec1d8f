"""Each repository is polled at its own due time, so the configured interval is the interval; and the daemon's dry
run follows changes across its cycles in memory, writing nothing and acting on nothing."""

from __future__ import annotations

import hashlib
import logging
import threading
import time

from polling_server.config import parse_settings
from polling_server.cycle import RepositoryPoller
from polling_server.daemon import Daemon
from polling_server.metrics import Metrics
from polling_server.planning.model import Observation
from polling_server.sources.base import SourcePoll
from polling_server.sources.git_remote import GitRemoteSource
from polling_server.sources.github_budget import BACKGROUND, URGENT, GitHubBudget
from polling_server.state import StateStore
from tests.clocks import Clock
from tests.gitrepo import GitRepo

SHA = "c" * 40


class RecordingSource:
    """A repository source that sees nothing new; records when each repository was polled."""

    kind = "git"

    def __init__(self, clock, poll_interval=None, inner=None):
        self.clock = clock
        self.poll_interval = poll_interval
        self.inner = inner
        self.polls: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def poll(self, repo, cursors, state, reconcile):
        with self._lock:
            self.polls.setdefault(repo.name, []).append(self.clock())
        if self.inner is not None:
            return self.inner.poll(repo, cursors, state, reconcile)
        return SourcePoll(Observation(branch_checked=True, branch_head=SHA, tags={}),
                          poll_interval=self.poll_interval.get(repo.name) if self.poll_interval else None)


def _settings(tmp_path, names, interval):
    return parse_settings({
        "state_path": str(tmp_path / "state.db"), "poll_interval_seconds": interval,
        "http": {"enabled": False},
        "repositories": [{"url": f"/srv/{n}.git", "name": n, "image": f"team/{n}"} for n in names]}, env={})


def test_every_repository_is_polled_at_the_configured_interval(tmp_path):
    clock = Clock()
    names = [f"r{i}" for i in range(10)]
    settings = _settings(tmp_path, names + ["slow"], 60)
    # GitHub's X-Poll-Interval (60, the default) is honoured; a longer one (120) wins over the configuration.
    source = RecordingSource(clock, {**{n: 60 for n in names}, "slow": 120})
    poller = RepositoryPoller(settings, StateStore(settings.state_path, clock=clock), Metrics(), {"git": source},
                              clock=clock)
    start = clock.t
    try:
        for step in range(0, 491):  # 245 s in ticks of half a second
            clock.t = start + step * 0.5
            poller.poll_due(wait=True)
    finally:
        poller.close()
    for name in names:
        assert [t - start for t in source.polls[name]] == [0, 60, 120, 180, 240], name
    assert [t - start for t in source.polls["slow"]] == [0, 120, 240]


def test_a_repository_due_just_after_a_tick_waits_a_tick_not_a_cycle(tmp_path):
    clock = Clock()
    settings = _settings(tmp_path, ["a", "b"], 60)
    source = RecordingSource(clock)
    poller = RepositoryPoller(settings, StateStore(settings.state_path, clock=clock), Metrics(), {"git": source},
                              clock=clock)
    start = clock.t
    try:
        poller.poll_due(wait=True)
        clock.t = start + 0.3
        poller.poll_now("b")  # b polled again (a webhook); its next poll is due 60 s after this one
        poller.poll_due(wait=True)
        for offset in (60.0, 60.5, 61.0):
            clock.t = start + offset
            poller.poll_due(wait=True)
    finally:
        poller.close()
    assert [round(t - start, 1) for t in source.polls["a"]] == [0, 60]
    assert [round(t - start, 1) for t in source.polls["b"]] == [0, 0.3, 60.5]


def test_on_the_wall_clock_the_interval_holds(tmp_path):
    repos = []
    for i in range(3):
        root = tmp_path / f"g{i}"
        root.mkdir()
        repo = GitRepo(root)
        repo.commit({"f": str(i)})
        repos.append(repo)
    settings = parse_settings({
        "state_path": str(tmp_path / "state.db"), "poll_interval_seconds": 2, "http": {"enabled": False},
        "repositories": [{"url": r.url, "name": f"g{i}", "image": f"team/g{i}"} for i, r in enumerate(repos)]},
        env={})
    source = RecordingSource(time.time, inner=GitRemoteSource())
    daemon = Daemon(settings, sources={"git": source}, tag_mover=None)
    daemon.start()
    try:
        time.sleep(10.3)
    finally:
        daemon.stop()
    for name, times in source.polls.items():
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert len(times) >= 4, (name, times)
        assert min(gaps) >= 1.95, (name, gaps)  # never faster than configured
        assert sum(gaps) / len(gaps) < 2.9, (name, gaps)  # and not a cycle late


def _events(caplog, event):
    return [r.fields for r in caplog.records if getattr(r, "event", None) == event]


class NoBuilder:
    def build(self, *args, **kwargs):
        raise AssertionError("a dry run must not build")


def test_the_daemon_in_dry_run_follows_changes_across_cycles_and_writes_nothing(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    root = tmp_path / "g"
    root.mkdir()
    repo = GitRepo(root)
    first = repo.commit({"f": "1"})
    settings = parse_settings({
        "state_path": str(tmp_path / "state.db"), "poll_interval_seconds": 0.3, "http": {"enabled": False},
        "repositories": [{"url": repo.url, "name": "app", "image": "team/app"}]}, env={})
    state = tmp_path / "state.db"
    # One real cycle records the baseline on disk.
    real = Daemon(settings, builder=NoBuilder(), tag_mover=None)
    real.run_once()
    real.stop()
    before = hashlib.sha256(state.read_bytes()).hexdigest()

    daemon = Daemon(settings, dry_run=True, builder=NoBuilder())
    assert daemon.tag_mover is None and daemon.apply_sender is None
    daemon.start()
    try:
        time.sleep(1.0)
        assert not _events(caplog, "baseline.recorded")[1:], "the dry run must not re-record the baseline"
        second = repo.commit({"f": "2"})
        deadline = time.monotonic() + 20
        while not [e for e in _events(caplog, "build.planned") if e["sha"] == second]:
            assert time.monotonic() < deadline, "the dry run never reported the merge"
            time.sleep(0.1)
        time.sleep(1.5)  # several more cycles: the change is remembered, not reported again
        assert len([e for e in _events(caplog, "build.planned") if e["sha"] == second]) == 1
        assert daemon.store.builds()[0].sha == second  # kept in memory...
    finally:
        daemon.stop()
    assert hashlib.sha256(state.read_bytes()).hexdigest() == before  # ...never on disk
    on_disk = StateStore(state)
    assert on_disk.builds() == [] and on_disk.repo_state("app").branch_head == first


class GatedSource(RecordingSource):
    """Scheduled polls block until the test opens the gate (as polls do when the request budget has fallen
    behind); a poll of a repository in `free` goes through at once."""

    def __init__(self, clock, free=()):
        super().__init__(clock)
        self.gate = threading.Event()
        self.free = set(free)
        self.started = threading.Semaphore(0)

    def poll(self, repo, cursors, state, reconcile):
        result = super().poll(repo, cursors, state, reconcile)
        self.started.release()
        if repo.name not in self.free:
            assert self.gate.wait(20), "the gate was never opened"
        return result


def _gated_poller(tmp_path, names, workers, free=()):
    settings = parse_settings({
        "state_path": str(tmp_path / "state.db"), "poll_interval_seconds": 60, "max_concurrent_polls": workers,
        "http": {"enabled": False},
        "repositories": [{"url": f"/srv/{n}.git", "name": n, "image": f"team/{n}"} for n in names]}, env={})
    source = GatedSource(time.time, free)
    poller = RepositoryPoller(settings, StateStore(settings.state_path), Metrics(), {"git": source})
    return poller, source


def _wait_for(predicate, what):
    deadline = time.monotonic() + 10
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_a_triggered_poll_never_waits_behind_scheduled_polls_that_have_fallen_behind(tmp_path):
    names = [f"r{i}" for i in range(6)]
    poller, source = _gated_poller(tmp_path, names, workers=2, free={"r5"})
    try:
        poller.poll_due()  # six due, two workers: two start and block, four stay due (none queued)
        for _ in range(2):
            assert source.started.acquire(timeout=10)
        assert sorted(source.polls) == ["r0", "r1"]
        assert [r.name for r in poller.due_repositories(time.time())] == ["r2", "r3", "r4", "r5"]
        poller.poll_now("r5")  # a webhook for a repository whose scheduled poll has not started
        assert [r.name for r in poller.due_repositories(time.time())][0] == "r5"  # triggers go first
        poller.poll_due()
        _wait_for(lambda: "r5" in source.polls and "r5" not in poller._in_flight, "the triggered poll waited")
        assert sorted(source.polls) == ["r0", "r1", "r5"]  # both workers still blocked: it had its own lane
    finally:
        source.gate.set()
        poller.close()


def test_a_finished_scheduled_poll_starts_the_next_due_one_without_waiting_for_a_tick(tmp_path):
    names = [f"r{i}" for i in range(5)]
    poller, source = _gated_poller(tmp_path, names, workers=1)
    try:
        poller.poll_due()  # one tick only
        assert source.started.acquire(timeout=10)
        source.gate.set()
        _wait_for(lambda: len(source.polls) == 5 and not poller._in_flight, "the due polls stopped at a tick")
        assert all(len(times) == 1 for times in source.polls.values())  # each once: not due again for 60 s
        assert poller.due_repositories(time.time()) == []
    finally:
        poller.close()


def test_the_longest_overdue_repository_is_polled_first(tmp_path):
    clock = Clock()
    settings = _settings(tmp_path, ["a", "b", "c"], 60)
    source = RecordingSource(clock)
    poller = RepositoryPoller(settings, StateStore(settings.state_path, clock=clock), Metrics(), {"git": source},
                              clock=clock)
    try:
        poller.poll_due(wait=True)  # all three at t0; next due at t0 + 60
        clock.t += 1
        poller.poll_now("c")
        poller.poll_due(wait=True)  # c next due at t0 + 61
        clock.t += 1
        poller.reconcile_now("b")  # due now
        clock.t += 100
        assert [r.name for r in poller.due_repositories(clock.t)] == ["b", "a", "c"]
    finally:
        poller.close()


class BudgetedSource(RecordingSource):
    """Each poll is one reconcile read through a real request budget that starts empty (time passes only while
    someone waits for it)."""

    def __init__(self, clock):
        super().__init__(clock)
        self.now = [0.0]
        self.gate = threading.Event()
        self.served: list[str] = []
        self.budget = GitHubBudget(600, clock=lambda: self.now[0], sleep=self._sleep)
        assert self.budget.reserve(100, 0.0, URGENT) == 0

    def _sleep(self, seconds):
        assert self.gate.wait(20), "the gate was never opened"
        self.now[0] += seconds

    def poll(self, repo, cursors, state, reconcile):
        result = super().poll(repo, cursors, state, reconcile)
        with self.budget.prioritized(BACKGROUND), self.budget.request():
            self.served.append(repo.name)
        return result


def test_a_trigger_for_a_repository_being_polled_hurries_that_poll_and_follows_it(tmp_path):
    settings = parse_settings({
        "state_path": str(tmp_path / "state.db"), "poll_interval_seconds": 60, "max_concurrent_polls": 2,
        "http": {"enabled": False},
        "repositories": [{"url": f"/srv/{n}.git", "name": n, "image": f"team/{n}"} for n in ("slow", "b")]},
        env={})
    source = BudgetedSource(time.time)
    poller = RepositoryPoller(settings, StateStore(settings.state_path), Metrics(), {"git": source})
    try:
        poller.poll_due()  # both polls start and wait in line for background points
        _wait_for(lambda: len(source.budget._line) == 2, "the polls never waited for the budget")
        poller.poll_now("b")  # a webhook for b while its reconcile waits behind slow's
        assert source.budget._line[0][0] == URGENT
        source.gate.set()
        _wait_for(lambda: source.served.count("b") == 2 and not poller._in_flight, "b was not polled again")
        assert source.served[0] == "b"  # hurried past slow's, which came first
        assert len(source.polls["b"]) == 2 and not source.budget._hurried  # then polled again: the trigger's own
    finally:
        source.gate.set()
        poller.close()
