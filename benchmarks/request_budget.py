"""Benchmark: GitHub requests per 60 s window at the worst moment (start-up included), for N quiet repositories, in
simulated time: (a) per-repository feeds under the request budget, (b) organization feeds under the same budget,
(c) the old behaviour, every feed and ref read at once each interval with no budget.

(a) and (b) are the real RepositoryPoller, GitHubSource, GitHubBudget, OrgFeeds and StateStore, on one simulated
clock (the budget's `sleep` moves it), against FakeGitHub answering in-process with ETags and 304s. They poll on
one thread (`max_concurrent_polls: 1`) so that the clock moves deterministically: the budget is one token bucket
for every thread, so what reaches GitHub is bounded the same way with 16. The daemon's two jobs are driven as it
drives them: `poll_due` every 0.5 s tick and, for (b), the organization feeds every poll interval, with
`org_fed` handed over as `Daemon.poll_org_feeds` does. (c) is a model, not the product: at the start of each
interval every repository's feed, branch and tags are requested (conditionally) at the same instant.

Every answer is counted, 304s included: they are free for the hourly quota but not documented as free for the
per-minute secondary limit, which the budget is for.
"""

from __future__ import annotations

import bisect
import tempfile
from functools import partial
from pathlib import Path

from benchmarks.common import Goal, Section, Table, fmt_ratio, ratio
from benchmarks.github_fake import FakeGitHub, in_process_http, org_repo_names

START = 1_800_000_000.0
TICK_SECONDS = 0.5  # the daemon's tick (daemon.TICK_SECONDS)
POLL_INTERVAL = 60.0
RECONCILE_INTERVAL = 600.0  # the product's default
WINDOW = 60.0
GITHUB_LIMIT = 900  # points a minute, GitHub's documented secondary limit
FEED_ROUTES = frozenset({"repo_events", "org_events"})
REF_ROUTES = frozenset({"branch", "tags"})


class SimClock:
    """Simulated time: read by everything, moved by the driver's ticks and by the budget's waits."""

    def __init__(self, start: float):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        # A real sleep always lets some time pass; at 1.8e9 s a float cannot hold steps under ~0.2 µs, and a wait
        # that moved nothing would be asked for again forever.
        self.now += max(1e-6, seconds)


def _settings(tmp: str, names: list[str], org_feeds: bool, points_per_minute: float):
    from polling_server.config import parse_settings

    return parse_settings({
        "state_path": str(Path(tmp) / "state.db"),
        "poll_interval_seconds": POLL_INTERVAL,
        "reconcile_interval_seconds": RECONCILE_INTERVAL,
        "max_concurrent_polls": 1,
        "github": {"api_url": "https://api.github.com", "token": "bench-token", "max_retries": 0,
                   "org_feeds": org_feeds, "max_requests_per_minute": points_per_minute},
        "repositories": [{"repo": n, "image": n} for n in names],
    }, env={})


def _owners(names: list[str]) -> set[str]:
    return {n.split("/", 1)[0] for n in names}


def simulate_poller(names: list[str], minutes: float, org_feeds: bool, points_per_minute: float = 600.0) -> dict:
    """(a) or (b): the product's poller on a simulated clock; every request the fake answered, with its time."""
    from polling_server.cycle import RepositoryPoller
    from polling_server.metrics import Metrics
    from polling_server.sources.github import GitHubSource
    from polling_server.sources.github_budget import GitHubBudget
    from polling_server.sources.org_feed import OrgFeeds
    from polling_server.state import StateStore

    clock = SimClock(START)
    github = FakeGitHub(clock=clock, poll_interval=int(POLL_INTERVAL),
                        organizations=_owners(names) if org_feeds else set(), record=True)
    for n in names:
        github.add_repo(n)
    end = START + minutes * 60
    with tempfile.TemporaryDirectory() as tmp:
        settings = _settings(tmp, names, org_feeds, points_per_minute)
        gh = settings.github
        budget = GitHubBudget(gh.max_requests_per_minute, gh.max_concurrent_requests, clock=clock, sleep=clock.sleep)
        store = StateStore(settings.state_path, clock=clock)
        source = GitHubSource(gh, http=in_process_http(github), clock=clock, budget=budget)
        metrics = Metrics()
        poller = RepositoryPoller(settings, store, metrics, {"github": source}, clock=clock)
        feeds = OrgFeeds(settings, source, store, clock=clock) if org_feeds else None
        next_feeds = tick = START
        try:
            while clock.now < end:
                if feeds is not None and clock.now >= next_feeds:
                    # Daemon.poll_org_feeds: triggers become due now, the next tick polls them.
                    feeds.poll_all(poller.poll_now, poller.reconcile_now)
                    poller.org_fed = source.org_fed = feeds.fed_repositories()
                    next_feeds += settings.poll_interval_seconds
                poller.poll_due(wait=True)
                tick += TICK_SECONDS
                clock.now = max(clock.now, tick)
        finally:
            poller.close()
            store.close()
    log = github.log or []
    return {"log": [e for e in log if e[0] < end], "spent": budget.spent, "answered": len(log),
            # the gauge is set once the poller has accounted a GitHub poll against the budget
            "effective_interval": metrics.registry.get_sample_value("poller_github_effective_interval_seconds")
            or float("nan")}


def simulate_old(names: list[str], minutes: float) -> dict:
    """(c) the old behaviour, modelled: each interval, every feed and ref at the same instant, no budget."""
    clock = SimClock(START)
    github = FakeGitHub(clock=clock, poll_interval=int(POLL_INTERVAL), record=True)
    for n in names:
        github.add_repo(n)
    etags: dict[str, str] = {}
    paths = [p for n in names for p in (f"/repos/{n}/events?per_page=100", f"/repos/{n}/git/ref/heads/master",
                                        f"/repos/{n}/git/matching-refs/tags?per_page=100")]
    for k in range(int(minutes * 60 // POLL_INTERVAL)):
        clock.now = START + k * POLL_INTERVAL
        for path in paths:
            _, headers, _ = github.handle(path, {"If-None-Match": etags.get(path)})
            if headers.get("ETag"):
                etags[path] = headers["ETag"]
    log = github.log or []
    return {"log": log, "spent": len(log), "answered": len(log), "effective_interval": POLL_INTERVAL}


def worst_window(times: list[float], width: float = WINDOW) -> tuple[int, float]:
    """The most requests in any window [t, t + width), and where the first such window starts."""
    best, at = 0, START
    for i, t in enumerate(times):
        n = bisect.bisect_left(times, t + width, lo=i) - i
        if n > best:
            best, at = n, t
    return best, at


def figures(result: dict, repos: int, minutes: float, steady_from: float) -> dict[str, float]:
    log = result["log"]
    times = sorted(t for t, _, _ in log)
    worst, at = worst_window(times)
    startup_worst, _ = worst_window([t for t in times if t < START + 120])
    lo, hi = START + steady_from * 60, START + minutes * 60
    steady = [(t, route) for t, route, _ in log if lo <= t < hi]
    span = (hi - lo) / 60
    first_tags: dict[str, float] = {}
    for t, route, path in log:
        if route == "tags":
            first_tags.setdefault(path, t)
    feeds = sum(1 for _, r in steady if r in FEED_ROUTES)
    repo_feeds = sum(1 for _, r in steady if r == "repo_events")
    return {
        "worst_window": worst, "worst_at": at - START, "startup_worst_window": startup_worst,
        "steady_per_min": len(steady) / span, "steady_feeds_per_min": feeds / span,
        "steady_refs_per_min": sum(1 for _, r in steady if r in REF_ROUTES) / span,
        # every poll of a repository with its own feed reads that feed once
        "polled_every": span * 60 / (repo_feeds / repos) if repo_feeds else float("nan"),
        "first_pass_done": (max(first_tags.values()) - START) if len(first_tags) == repos else float("inf"),
        "requests": len(log), "unbudgeted": result["answered"] - result["spent"],
        "effective_interval": result["effective_interval"],
    }


def _figure(figs: dict[str, float], mode: str, repos: int, key: str) -> float:
    return figs[f"{mode}.{repos}.{key}"]


def run(sizes: tuple[int, ...] = (10, 100, 1000), orgs: int = 10, minutes: float = 20.0,
        steady_from: float = 10.0, points_per_minute: float = 600.0) -> Section:
    """`points_per_minute` is the budget (the product's default: 600); the smoke test lowers it so that a few
    repositories are enough to need it."""
    from polling_server.sources.github_budget import BURST_SECONDS

    section = Section("budget", "7. GitHub requests per 60 s window: per-repository feeds, organization feeds, "
                                "and the old unbudgeted poller (simulated time)")
    budget, burst = points_per_minute, points_per_minute / 60 * BURST_SECONDS
    ceiling = budget + burst
    f = section.figures
    f["ceiling"] = ceiling
    for n in sizes:
        names = org_repo_names(n, orgs)
        for mode, result in (("per_repo", simulate_poller(names, minutes, False, points_per_minute)),
                             ("org", simulate_poller(names, minutes, True, points_per_minute)),
                             ("old", simulate_old(names, minutes))):
            for k, v in figures(result, n, minutes, steady_from).items():
                f[f"{mode}.{n}.{k}"] = v

    worst = Table(f"Worst 60 s window of a {minutes:g}-minute run, start-up included (requests, 304s counted); "
                  f"budget {budget:g} points/min + burst {burst:g} = {ceiling:g}; GitHub's limit {GITHUB_LIMIT}",
                  ["repos", "(a) per-repo feeds + budget", "(b) org feeds + budget", "(c) old: all at once, no budget",
                   "(c) / (a)", "(c) / (b)"])
    steady = Table(f"Steady state (minutes {steady_from:g}-{minutes:g}), requests per minute; \"feeds\" excludes "
                   "the spread reconciliation (ref reads); the repositories are quiet",
                   ["repos", "(a) feeds", "(a) all", "(b) feeds", "(b) all", "(c) feeds", "(c) all",
                    "(a) / (b) feeds only", "(a) / (b) with reconciliation"])
    startup = Table("Start-up and pace",
                    ["repos", "(a) first pass over every repository done after",
                     "(a) each repository polled every (steady)", "(a) effective interval the poller reports",
                     "(b) first pass done after", "(b) worst 60 s window within the first 120 s",
                     "(a) requests outside the budget", "(b) requests outside the budget"])
    for n in sizes:
        a, b, c = (partial(_figure, f, m, n) for m in ("per_repo", "org", "old"))
        worst.rows.append([str(n), f"{a('worst_window'):g} (t={a('worst_at'):.0f} s)",
                           f"{b('worst_window'):g} (t={b('worst_at'):.0f} s)",
                           f"{c('worst_window'):g} (t={c('worst_at'):.0f} s)",
                           fmt_ratio(ratio(c("worst_window"), a("worst_window"))),
                           fmt_ratio(ratio(c("worst_window"), b("worst_window")))])
        steady.rows.append([str(n)] + [f"{x:.1f}" for x in (
            a("steady_feeds_per_min"), a("steady_per_min"), b("steady_feeds_per_min"), b("steady_per_min"),
            c("steady_feeds_per_min"), c("steady_per_min"))] + [
            fmt_ratio(ratio(a("steady_feeds_per_min"), b("steady_feeds_per_min"))),
            fmt_ratio(ratio(a("steady_per_min"), b("steady_per_min")))])
        startup.rows.append([str(n), f"{a('first_pass_done'):.0f} s", f"{a('polled_every'):.0f} s",
                             f"{a('effective_interval'):.0f} s", f"{b('first_pass_done'):.0f} s",
                             f"{b('startup_worst_window'):g}", f"{a('unbudgeted'):g}", f"{b('unbudgeted'):g}"])
        f[f"ratio.{n}.feeds"] = ratio(a("steady_feeds_per_min"), b("steady_feeds_per_min"))
        f[f"ratio.{n}.all"] = ratio(a("steady_per_min"), b("steady_per_min"))
    section.tables += [worst, steady, startup]

    for mode, label in (("per_repo", "(a) per-repo feeds + budget"), ("org", "(b) org feeds + budget")):
        values = {n: f[f"{mode}.{n}.worst_window"] for n in sizes}
        section.goals.append(Goal(
            f"{label}: never above {ceiling:g} requests in any 60 s window (start-up included; GitHub allows "
            f"{GITHUB_LIMIT})", all(v <= ceiling for v in values.values()),
            "worst window: " + ", ".join(f"{n} repos: {v:g}" for n, v in values.items())))
    for n in sizes:
        r = f[f"ratio.{n}.feeds"]
        a_feeds, b_feeds = f[f"per_repo.{n}.steady_feeds_per_min"], f[f"org.{n}.steady_feeds_per_min"]
        why = ""
        if r < 20:
            why = (f"{n} repositories in {orgs} organizations: (b) reads {b_feeds:.1f} organization feeds a minute "
                   f"where (a) reads {a_feeds:.1f} repository feeds, so the ratio cannot exceed repositories / "
                   f"organizations = {n / orgs:g}; org feeds pay off from about {20 * orgs} repositories in "
                   f"{orgs} organizations")
            if f[f"per_repo.{n}.polled_every"] > POLL_INTERVAL * 1.1:
                why += (f"; and (a) is held to the budget (each repository polled every "
                        f"{f[f'per_repo.{n}.polled_every']:.0f} s instead of {POLL_INTERVAL:g} s)")
        section.goals.append(Goal(
            f"{n} repositories: org feeds >= 20x fewer requests than per-repo feeds (steady state, "
            "reconciliation excluded)", r >= 20,
            f"{fmt_ratio(r)} ({a_feeds:.1f} vs {b_feeds:.1f} a minute; with reconciliation "
            f"{fmt_ratio(f[f'ratio.{n}.all'])})", why=why))
    big = max(sizes)
    slow = [n for n in sizes if f[f"org.{n}.steady_feeds_per_min"] < orgs * 0.99]
    if slow:
        section.notes.append(
            "(b) read its organization feeds fewer than once a minute at "
            + ", ".join(f"{n} repositories ({f[f'org.{n}.steady_feeds_per_min']:.1f} for {orgs} feeds)" for n in slow)
            + ". OrgFeeds skips a feed whose X-Poll-Interval (60 s, measured from the previous read) has not fully "
              "passed, and the job that reads them runs every poll interval, also 60 s: a run that starts a little "
              "late (here behind a tick's polls waiting for the budget; in the daemon, any scheduling jitter) makes "
              "the next run, on time, skip, and that feed is read 120 s after the previous one.")
    section.notes.append(
        f"Simulated time ({minutes:g} minutes per run, {TICK_SECONDS:g} s ticks), {orgs} organizations "
        f"(repositories dealt round-robin), quiet repositories (no pushes: every ref read is reconciliation), "
        f"poll interval {POLL_INTERVAL:g} s, reconcile interval {RECONCILE_INTERVAL:g} s, budget "
        f"{budget:g} points a minute (burst {BURST_SECONDS:g} s' worth). (a) and (b) are the product's poller, source, "
        "budget, organization feeds and SQLite state on a simulated clock, against FakeGitHub in-process (every "
        "answer recorded with its time). (c) is a model of the poller before the budget: each interval, every "
        "repository's feed, branch and tags at once (conditional, so mostly 304s). \"Requests outside the budget\" "
        "= answers the fake gave minus points the budget handed out (0: every request went through it). "
        f"At {big} repositories, (a) wants {f[f'old.{big}.steady_feeds_per_min']:.0f} feed reads a minute plus "
        "reconciliation, more than the budget gives: it stays within the budget by polling each repository less "
        "often (\"polled every\"), which the poller reports as its effective interval "
        "(`poller_github_effective_interval_seconds`, `poll.budget_short`).")
    return section
