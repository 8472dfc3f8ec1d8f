"""The GitHub request budget: never above it in any 60 s window, start-up and `--once` over 1,000 repositories
included; concurrency bounded; reconciliation leaves room for event-led reads; a secondary limit slows it down.
Everything on an injected clock: the minutes pass in the test without sleeping."""

from __future__ import annotations

import bisect
import json
import re
import threading
import time

import pytest
import responses

from polling_server.config import parse_settings
from polling_server.cycle import RepositoryPoller
from polling_server.errors import RateLimited
from polling_server.metrics import Metrics
from polling_server.sources.github import GitHubSource
from polling_server.sources.github_budget import BACKGROUND, NORMAL, URGENT, GitHubBudget, points_for
from polling_server.state import StateStore
from tests.clocks import FakeTime

SHA = "d" * 40


def worst_window(times: list[float], window: float = 60.0) -> int:
    times = sorted(times)
    return max((bisect.bisect_left(times, t + window) - i for i, t in enumerate(times)), default=0)


def test_points_and_the_burst():
    assert points_for("GET") == 1 and points_for("post") == 5 and points_for("HEAD") == 1
    budget = GitHubBudget(600, clock=lambda: 0.0)
    assert budget.capacity == 100  # ten seconds' worth
    assert all(budget.reserve(1, 0.0, URGENT) == 0 for _ in range(100))
    assert budget.reserve(1, 0.0, URGENT) == pytest.approx(0.1)  # one point every 0.1 s after the burst
    assert budget.reserve(1, 0.1, URGENT) == 0


def test_no_window_of_60_seconds_exceeds_the_budget_under_any_load():
    fake = FakeTime()
    budget = GitHubBudget(600, clock=fake.clock, sleep=fake.sleep)
    sent = []
    for i in range(3000):
        with budget.request("POST" if i % 50 == 0 else "GET"):
            sent.extend([fake.t] * (5 if i % 50 == 0 else 1))
    assert worst_window(sent) <= 600 + budget.capacity < 900


def test_reconciliation_leaves_a_reserve_for_event_led_reads():
    budget = GitHubBudget(600, clock=lambda: 0.0)
    taken = 0
    while budget.reserve(1, 0.0, BACKGROUND) == 0:
        taken += 1
    assert taken == 75  # a quarter of the burst is kept
    assert budget.reserve(1, 0.0, NORMAL) == 0  # ... for these


def test_event_led_reads_leave_a_reserve_for_webhook_triggers():
    budget = GitHubBudget(600, clock=lambda: 0.0)
    taken = 0
    while budget.reserve(1, 0.0, NORMAL) == 0:
        taken += 1
    assert taken == 90  # a tenth of the burst is kept ...
    assert budget.reserve(1, 0.0, BACKGROUND) > 0
    urgent = 0
    while budget.reserve(1, 0.0, URGENT) == 0:
        urgent += 1
    assert urgent == 10  # ... for triggers alone, which may empty the bucket


def test_a_secondary_limit_halves_the_rate_for_a_while():
    budget = GitHubBudget(600, clock=lambda: 0.0)
    assert budget.rate(0.0) == 10
    budget.penalize(0.0)
    assert budget.rate(1.0) == 5 and budget.reserve(1, 0.0) > 0
    assert budget.rate(601.0) == 10


def test_concurrent_requests_are_bounded():
    budget = GitHubBudget(900, max_concurrent=3)
    inside, peak, lock = [0], [0], threading.Lock()
    gate = threading.Event()

    def one():
        with budget.request():
            with lock:
                inside[0] += 1
                peak[0] = max(peak[0], inside[0])
            gate.wait(0.05)
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=one) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert peak[0] == 3


def test_once_over_1000_repositories_stays_within_the_budget(tmp_path):
    """The first pass reads events, branch and tags of every repository: 3,000 GETs, spread by the budget."""
    fake = FakeTime()
    names = [f"acme/app{i}" for i in range(1000)]
    settings = parse_settings({
        "state_path": str(tmp_path / "s.db"), "max_concurrent_polls": 1,
        "github": {"token": "ghp_budget_test", "max_requests_per_minute": 600},
        "repositories": [{"repo": n, "image": n} for n in names]}, env={})
    budget = GitHubBudget(600, 10, clock=fake.clock, sleep=fake.sleep)
    source = GitHubSource(settings.github, budget=budget, clock=fake.clock)
    poller = RepositoryPoller(settings, StateStore(settings.state_path), Metrics(), {"github": source},
                              clock=fake.clock)
    sent: list[float] = []
    branch = json.dumps({"object": {"sha": SHA, "type": "commit"}})

    def answer(request):
        sent.append(fake.t)
        return 200, {}, branch if "/git/ref/heads/" in request.url else "[]"

    start = fake.t
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.add_callback(responses.GET, re.compile(r"https://api\.github\.com/repos/acme/app\d+/.*"),
                          callback=answer)
        report = poller.poll_all()
    assert report.polled == 1000 and not report.failed
    assert len(sent) == 3000
    assert worst_window(sent) <= 700  # 600 a minute plus the burst, never GitHub's 900
    assert fake.t - start >= (3000 - budget.capacity) / 10 - 1  # it took as long as the budget needs
    assert poller.metrics.effective_interval._value.get() >= 290  # and it says so


def test_a_secondary_limit_answer_pauses_and_shrinks_the_budget(tmp_path):
    settings = parse_settings({"state_path": str(tmp_path / "s.db"), "github": {"token": "ghp_x"},
                               "repositories": [{"repo": "acme/app", "image": "acme/app"}]}, env={})
    budget = GitHubBudget(600, clock=lambda: 0.0)
    source = GitHubSource(settings.github, budget=budget, clock=lambda: 100.0)
    with responses.RequestsMock() as rsps:
        rsps.add(responses.GET, "https://api.github.com/repos/acme/app/events?per_page=100", status=403,
                 headers={"retry-after": "30"},
                 json={"message": "You have exceeded a secondary rate limit. Please wait a few minutes."})
        with pytest.raises(RateLimited) as e:
            source.poll(settings.repositories[0], StateStore(settings.state_path), StateStore(
                settings.state_path).repo_state("acme/app"), reconcile=False)
    assert e.value.resume_at == 130.0
    assert budget.rate(1.0) == 5


def test_waiting_requests_are_served_by_priority_then_in_the_order_they_came():
    """A POST (5 points) waiting first is not starved by the GETs after it; a webhook trigger goes before all."""
    now = [0.0]
    gate = threading.Event()

    def sleep(seconds):  # every wait blocks until the whole line has formed, then time passes
        assert gate.wait(10)
        now[0] += seconds

    budget = GitHubBudget(600, clock=lambda: now[0], sleep=sleep)
    assert budget.reserve(100, 0.0, URGENT) == 0  # the bucket is empty
    order, threads = [], []

    def one(name, method, priority):
        with budget.prioritized(priority), budget.request(method):
            order.append(name)

    for name, method, priority in [("post", "POST", NORMAL), ("g1", "GET", NORMAL), ("g2", "GET", NORMAL),
                                   ("background", "GET", BACKGROUND), ("g3", "GET", NORMAL),
                                   ("trigger", "GET", URGENT)]:
        threads.append(threading.Thread(target=one, args=(name, method, priority)))
        threads[-1].start()
        deadline = time.monotonic() + 10
        while len(budget._line) < len(threads):
            assert time.monotonic() < deadline, f"{name} never got in line"
            time.sleep(0.005)
    gate.set()
    for t in threads:
        t.join(10)
    assert order == ["trigger", "post", "g1", "g2", "g3", "background"]


def test_a_hurried_thread_goes_first_with_the_requests_it_is_already_waiting_for():
    now = [0.0]
    gate = threading.Event()

    def sleep(seconds):
        assert gate.wait(10)
        now[0] += seconds

    budget = GitHubBudget(600, clock=lambda: now[0], sleep=sleep)
    assert budget.reserve(100, 0.0, URGENT) == 0
    order, threads, idents = [], [], {}

    def one(name):
        idents[name] = threading.get_ident()
        with budget.prioritized(BACKGROUND), budget.request():
            order.append(name)

    for name in ("first", "hurried"):
        threads.append(threading.Thread(target=one, args=(name,)))
        threads[-1].start()
        while len(budget._line) < len(threads):
            time.sleep(0.005)
    budget.hurry(idents["hurried"])
    assert budget._line[0][0] == URGENT and budget._line[0][2] == idents["hurried"]
    gate.set()
    for t in threads:
        t.join(10)
    assert order == ["hurried", "first"]
    budget.unhurry(idents["hurried"])
    assert not budget._hurried
