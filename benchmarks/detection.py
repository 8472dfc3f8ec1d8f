"""Benchmark 2: detection latency, from a branch head changing on GitHub to `build.planned`, in simulated time.

The real RepositoryPoller, GitHubSource (through the product's HttpClient and requests) and StateStore are driven
by a fake clock: one cycle every 60 s of simulated time, against FakeGitHub answering in-process. Pushes happen at
random times; each push's event shows up in the feed after a random delay, or never (lost), following the model
below. Latency = simulated time of the cycle that planned a build of that commit (or of a later one that
superseded it) minus the time of the push. The baseline is the same poller with reconciliation switched off (it
trusts the events feed alone), run on the same pushes.

Webhooks + polling: the same poller and pushes, plus a webhook per push that arrives about a second after it
(`WEBHOOK_DELAY`) or never (`WEBHOOK_LOSS`); an arriving webhook does what the receiver does, `poll_now(repo)`,
and that repository is polled at that moment of simulated time (as the daemon's `trigger_repository` does).
"""

from __future__ import annotations

import random
import tempfile
from dataclasses import replace
from pathlib import Path

from benchmarks.common import Goal, Section, Table, fmt_ratio, fmt_s, percentile, ratio
from benchmarks.github_fake import FakeGitHub, _sha, in_process_http, repo_names

POLL_INTERVAL = 60.0
RECONCILE_INTERVAL = 600.0  # the product's default
NO_RECONCILE = 7 * 24 * 3600.0  # the longest reconcile interval the configuration takes: never, within a run here
# Event fate: (probability, min delay s, max delay s); None = the event is lost. GitHub documents 30 s to 6 h.
EVENT_MODEL: list[tuple[float, tuple[float, float] | None]] = [
    (0.50, (30.0, 60.0)),
    (0.20, (60.0, 300.0)),
    (0.10, (300.0, 3600.0)),
    (0.05, (3600.0, 6 * 3600.0)),
    (0.15, None),
]


def _fate(rng: random.Random) -> tuple[str, float | None]:
    x, acc = rng.random(), 0.0
    for p, span in EVENT_MODEL:
        acc += p
        if x < acc:
            if span is None:
                return "lost", None
            delay = rng.uniform(*span)
            return ("prompt" if delay <= 60 else "late"), delay
    return "lost", None


WEBHOOK_DELAY = (0.5, 1.5)  # seconds from the push to the delivery (GitHub sends within about a second)
WEBHOOK_LOSS = 0.10  # deliveries that never arrive (receiver down, network): polling must still find the push


def _webhooks(pushes: list[tuple[str, float, str, float | None]], seed: int,
              loss: float) -> list[tuple[float, str, str]]:
    """(arrival time, repository, sha) of each delivered webhook, drawn apart from the pushes so that every mode
    sees the same pushes and events."""
    rng = random.Random(seed * 7919 + 1)
    hooks = []
    for name, at, sha, _ in sorted(pushes, key=lambda p: p[1]):
        if rng.random() >= loss:
            hooks.append((at + rng.uniform(*WEBHOOK_DELAY), name, sha))
    return sorted(hooks)


class _Clock:
    def __init__(self, start: float):
        self.now = start

    def __call__(self) -> float:
        return self.now


def simulate(repos: int, hours: float, mean_push_interval: float, seed: int, reconcile: bool,
             webhooks: bool = False, webhook_loss: float = WEBHOOK_LOSS) -> dict:
    from polling_server.config import parse_settings
    from polling_server.cycle import RepositoryPoller
    from polling_server.metrics import Metrics
    from polling_server.sources.github import GitHubSource
    from polling_server.state import StateStore

    rng = random.Random(seed)
    start = 1_800_000_000.0
    clock = _Clock(start)
    github = FakeGitHub(clock=clock, poll_interval=int(POLL_INTERVAL))
    names = repo_names(repos)
    for n in names:
        github.add_repo(n)
    end = start + hours * 3600
    margin = min(6 * 3600.0, hours * 3600 / 2)
    pushes, meta = [], {}  # meta: sha -> (repo, push time, fate)
    for n in names:
        t = start + POLL_INTERVAL + rng.expovariate(1 / mean_push_interval)
        k = 0
        while t < end - margin:  # leave time for the slowest events to arrive within the run
            fate, delay = _fate(rng)
            sha = _sha(n, "push", k)
            pushes.append((n, t, sha, delay))
            meta[sha] = (n, t, fate)
            k += 1
            t += max(1.0, rng.expovariate(1 / mean_push_interval))
    github.schedule_pushes(pushes)
    by_repo: dict[str, list[tuple[float, str]]] = {}
    for n, t, sha, _ in sorted(pushes, key=lambda p: p[1]):
        by_repo.setdefault(n, []).append((t, sha))

    with tempfile.TemporaryDirectory() as tmp:
        settings = parse_settings({
            "state_path": str(Path(tmp) / "state.db"),
            "poll_interval_seconds": POLL_INTERVAL,
            "reconcile_interval_seconds": RECONCILE_INTERVAL if reconcile else NO_RECONCILE,
            "github": {"api_url": "https://api.github.com", "token": "bench-token", "max_retries": 0},
            "repositories": [{"repo": n, "image": n} for n in names],
        }, env={})
        settings = replace(settings, max_concurrent_polls=4)
        store = StateStore(settings.state_path, clock=clock)
        source = GitHubSource(settings.github, http=in_process_http(github), clock=clock)
        poller = RepositoryPoller(settings, store, Metrics(), {"github": source}, clock=clock)
        detected: dict[str, float] = {}  # sha -> latency
        superseded = 0
        cycles = 0
        hooks = _webhooks(pushes, seed, webhook_loss) if webhooks else []
        hooked = {sha for _, _, sha in hooks}
        repo_by_name = {r.name: r for r in settings.repositories}

        def record(planned) -> None:
            nonlocal superseded
            for build in planned:
                repo, _, _ = meta[build.sha]
                # This push and every earlier undetected one of the same repository are now covered.
                for t, sha in by_repo[repo]:
                    if t > clock.now or sha in detected:
                        continue
                    detected[sha] = clock.now - t
                    superseded += sha != build.sha

        next_cycle, i = clock.now, 0
        while next_cycle <= end:
            while i < len(hooks) and hooks[i][0] < next_cycle:
                clock.now, name, _ = hooks[i]
                i += 1
                poller.poll_now(name)
                outcome = poller.poll_one(repo_by_name[name])
                if outcome is not None:
                    record(outcome[0].builds)
            clock.now = next_cycle
            report = poller.poll_all()
            cycles += 1
            record(report.planned)
            next_cycle += POLL_INTERVAL
        store.close()
    latencies = {fate: [detected[s] for s, (_, _, f) in meta.items() if f == fate and s in detected]
                 for fate in ("prompt", "late", "lost")}
    missed = {fate: sum(1 for s, (_, _, f) in meta.items() if f == fate and s not in detected)
              for fate in ("prompt", "late", "lost")}
    by_hook = {fate: [detected[s] for s in meta if (s in hooked) == (fate == "delivered") and s in detected]
               for fate in ("delivered", "lost")}
    missed_by_hook = {fate: sum(1 for s in meta if (s in hooked) == (fate == "delivered") and s not in detected)
                      for fate in ("delivered", "lost")}
    return {"pushes": len(meta), "cycles": cycles, "latencies": latencies, "missed": missed,
            "superseded": superseded, "counted_requests": github.counted, "not_modified": github.not_modified,
            "webhooks": len(hooks), "by_hook": by_hook, "missed_by_hook": missed_by_hook}


def _row(label: str, values: list[float], missed: int) -> list[str]:
    return [label, str(len(values) + missed), fmt_s(percentile(values, 50)), fmt_s(percentile(values, 90)),
            fmt_s(percentile(values, 99)), fmt_s(max(values) if values else float("nan")), str(missed)]


def run(repos: int = 40, hours: float = 10.0, mean_push_interval: float = 3600.0, seed: int = 7,
        webhook_loss: float = WEBHOOK_LOSS) -> Section:
    section = Section("detection", "2. Detection latency (simulated time)")
    ours = simulate(repos, hours, mean_push_interval, seed, reconcile=True)
    base = simulate(repos, hours, mean_push_interval, seed, reconcile=False)
    hooked = simulate(repos, hours, mean_push_interval, seed, reconcile=True, webhooks=True,
                      webhook_loss=webhook_loss)
    cols = ["event of the push", "pushes", "p50", "p90", "p99", "max", "never detected"]
    for label, res in (("ours (events + reconcile every 600 s)", ours), ("baseline (events feed only)", base)):
        t = Table(f"{label}: push → build.planned, simulated seconds", cols)
        all_lat = [x for v in res["latencies"].values() for x in v]
        for fate in ("prompt", "late", "lost"):
            t.rows.append(_row(fate, res["latencies"][fate], res["missed"][fate]))
        t.rows.append(_row("all", all_lat, sum(res["missed"].values())))
        section.tables.append(t)
    o_all = [x for v in ours["latencies"].values() for x in v]
    b_all = [x for v in base["latencies"].values() for x in v]
    o_missed, b_missed = sum(ours["missed"].values()), sum(base["missed"].values())
    # A push never detected has infinite latency: the baseline's percentiles count it as such.
    b_with_inf = b_all + [float("inf")] * b_missed
    o_with_inf = o_all + [float("inf")] * o_missed
    cmp = Table("Side by side (never-detected pushes count as infinite latency)",
                ["figure", "ours", "baseline", "baseline / ours"])
    for p in (50, 90, 99):
        o, b = percentile(o_with_inf, p), percentile(b_with_inf, p)
        cmp.rows.append([f"p{p}", fmt_s(o), fmt_s(b), fmt_ratio(ratio(b, o))])
    cmp.rows.append(["pushes never detected", str(o_missed), str(b_missed), ""])
    cmp.rows.append(["rate-limited requests (whole run)", str(ours["counted_requests"]),
                     str(base["counted_requests"]), fmt_ratio(ratio(base["counted_requests"],
                                                                    ours["counted_requests"]))])
    section.tables.append(cmp)
    bound = RECONCILE_INTERVAL + 2 * POLL_INTERVAL
    worst = max(o_all) if o_all else float("nan")
    section.goals.append(Goal("every push detected, lost or late events included (reconciliation)",
                              o_missed == 0 and ours["pushes"] > 0, f"{o_missed} of {ours['pushes']} missed"))
    section.goals.append(Goal(f"worst latency within one reconcile interval + 2 polls ({bound:g} s)",
                              worst <= bound, fmt_s(worst)))
    _webhook_tables(section, ours, hooked, webhook_loss)
    section.notes.append(
        f"Simulated, not wall-clock: {repos} repositories, {hours:g} h of simulated time, one poll cycle every "
        f"{POLL_INTERVAL:g} s (X-Poll-Interval {POLL_INTERVAL:g}), pushes at exponential intervals (mean "
        f"{mean_push_interval / 3600:g} h per repository), seed {seed}. The real RepositoryPoller, GitHubSource, "
        "HttpClient (requests, with its transport swapped for an in-process FakeGitHub) and SQLite StateStore run "
        "on a fake clock. Event model: 50% of events appear after 30-60 s ('prompt'), 20% after 1-5 min, 10% after "
        "5-60 min, 5% after 1-6 h ('late'), 15% never ('lost'). Latency is counted from the push to the start of "
        "the cycle that planned it (or a later push of the same branch that superseded it: "
        f"{ours['superseded']} such in ours).")
    section.figures.update({
        "ours.pushes": ours["pushes"], "ours.missed": o_missed, "ours.p50": percentile(o_all, 50),
        "ours.p99": percentile(o_all, 99), "ours.max": worst, "baseline.missed": b_missed,
        "baseline.p50": percentile(b_all, 50), "baseline.p99_detected": percentile(b_all, 99),
    })
    return section


def _webhook_tables(section: Section, polling: dict, hooked: dict, loss: float) -> None:
    """Webhooks + polling against polling alone (events + reconcile), on the same pushes and events."""
    h_all = [x for v in hooked["latencies"].values() for x in v]
    p_all = [x for v in polling["latencies"].values() for x in v]
    h_missed, p_missed = sum(hooked["missed"].values()), sum(polling["missed"].values())
    h_inf, p_inf = h_all + [float("inf")] * h_missed, p_all + [float("inf")] * p_missed
    cols = ["webhook of the push", "pushes", "p50", "p90", "p99", "max", "never detected"]
    t = Table(f"webhooks + polling ({loss:.0%} of webhooks lost, the others {WEBHOOK_DELAY[0]:g}-"
              f"{WEBHOOK_DELAY[1]:g} s after the push): push → build.planned, simulated seconds", cols)
    for fate in ("delivered", "lost"):
        t.rows.append(_row(fate, hooked["by_hook"][fate], hooked["missed_by_hook"][fate]))
    t.rows.append(_row("all", h_all, h_missed))
    section.tables.append(t)
    cmp = Table("Webhooks + polling vs polling alone (events + reconcile), same pushes and events; never-detected "
                "pushes count as infinite latency", ["figure", "webhooks + polling", "polling alone",
                                                     "polling alone / webhooks + polling"])
    for p in (50, 90, 99):
        h, o = percentile(h_inf, p), percentile(p_inf, p)
        cmp.rows.append([f"p{p}", fmt_s(h), fmt_s(o), fmt_ratio(ratio(o, h))])
    cmp.rows.append(["max", fmt_s(max(h_inf, default=float("nan"))), fmt_s(max(p_inf, default=float("nan"))), ""])
    cmp.rows.append(["pushes never detected", str(h_missed), str(p_missed), ""])
    cmp.rows.append(["rate-limited requests (whole run)", str(hooked["counted_requests"]),
                     str(polling["counted_requests"]), ""])
    section.tables.append(cmp)
    delivered = hooked["by_hook"]["delivered"]
    worst_delivered = max(delivered) if delivered else float("nan")
    section.goals.append(Goal(f"webhooks + polling: every push detected, with {loss:.0%} of webhooks and the "
                              "events model's lost and late events", h_missed == 0 and hooked["pushes"] > 0,
                              f"{h_missed} of {hooked['pushes']} missed"))
    section.goals.append(Goal(f"a push whose webhook arrives is planned when it arrives (<= {WEBHOOK_DELAY[1]:g} s)",
                              worst_delivered <= WEBHOOK_DELAY[1] + 1e-6, f"worst {fmt_s(worst_delivered)} over "
                              f"{len(delivered)} pushes"))
    section.notes.append(
        f"Webhooks + polling: the same poller on the same pushes and events, plus one webhook per push, arriving "
        f"{WEBHOOK_DELAY[0]:g}-{WEBHOOK_DELAY[1]:g} s after it or, for {loss:.0%} of pushes, never. An arriving "
        "webhook does what the receiver does (`poll_now`), and the repository is polled at that moment, reading its "
        "refs; a push whose webhook is lost is left to the events feed and reconciliation, as in polling alone.")
    section.figures.update({
        "webhooks.pushes": hooked["pushes"], "webhooks.delivered": hooked["webhooks"], "webhooks.missed": h_missed,
        "webhooks.p50": percentile(h_all, 50), "webhooks.p99": percentile(h_all, 99),
        "webhooks.max": max(h_all, default=float("nan")), "webhooks.max_delivered": worst_delivered,
        "webhooks.polling_alone_p50": percentile(p_all, 50),
    })
