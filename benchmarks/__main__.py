"""Run the benchmarks and write BENCHMARKS.md: `python -m benchmarks [--quick] [--only NAME ...]`.

`benchmarks/run` is the one command: it also provides the Docker engine and registry the build benchmark needs.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.common import Section, docker_version, machine_description

ROOT = Path(__file__).resolve().parents[1]


def _suites(quick: bool) -> dict[str, Callable[[], Section]]:
    from benchmarks import (
        builds,
        chart_index,
        detection,
        helm_api_load,
        k8s_builds,
        poll_cycle,
        request_budget,
        webhooks,
    )

    if quick:
        return {
            "poll": lambda: poll_cycle.run(sizes=(10, 50), cycles=2, baseline_cycles=1),
            "detection": lambda: detection.run(repos=5, hours=3, mean_push_interval=1800),
            "charts": lambda: chart_index.run(copies=1, repeat=1, unchanged_polls=3),
            "helm_api": lambda: helm_api_load.run(sequential=20, burst=50),
            "builds": lambda: builds.run(rounds=1),
            "k8s_builds": lambda: k8s_builds.run(builds=3, lengths=(120.0,)),
            "budget": lambda: request_budget.run(sizes=(10, 100), minutes=12, steady_from=10),
            "webhooks": lambda: webhooks.run(webhooks.QUICK_SCENARIOS),
        }
    return {
        "poll": lambda: poll_cycle.run(),
        "detection": lambda: detection.run(),
        "charts": lambda: chart_index.run(),
        "helm_api": lambda: helm_api_load.run(),
        "builds": lambda: builds.run(),
        "k8s_builds": lambda: k8s_builds.run(),
        "budget": lambda: request_budget.run(),
        "webhooks": lambda: webhooks.run(),
    }


def run_all(names: list[str] | None = None, quick: bool = False) -> list[Section]:
    sections = []
    for name, fn in _suites(quick).items():
        if names and name not in names:
            continue
        print(f"== {name}", file=sys.stderr, flush=True)
        t = time.perf_counter()
        try:
            section = fn()
        except Exception as e:  # a failing benchmark is reported, and the others still run
            traceback.print_exc()
            section = Section(name, name, error=f"{type(e).__name__}: {e}")
        section.seconds = time.perf_counter() - t
        print(f"   {section.seconds:.1f} s", file=sys.stderr, flush=True)
        sections.append(section)
    return sections


def render(sections: list[Section], command: str, started: datetime, total: float) -> str:
    out = ["# Benchmarks", "",
           "How the poller's and the helm API's costs grow, each measured side by side with a naive baseline in "
           "the same run; ratios are baseline / ours (higher is better for ours). Written by `benchmarks/run`; "
           "do not edit by hand.", "",
           f"- Command: `{command}`",
           f"- Date: {started.strftime('%Y-%m-%d %H:%M UTC')}",
           f"- Machine: {machine_description()}"]
    engine = docker_version()
    if engine:
        out.append(f"- Docker engine: {engine}")
    out += [f"- Total run time: {total:.0f} s", ""]
    goals = [(s, g) for s in sections for g in s.goals]
    out += ["## Goals", "", "| benchmark | goal | met | figure |", "|---|---|---|---|"]
    for s, g in goals:
        out.append(f"| {s.key} | {g.text} | {'yes' if g.met else '**NO**'} | {g.evidence} |")
    for s in sections:
        if s.error:
            out.append(f"| {s.key} | (benchmark did not finish) | **NO** | {s.error} |")
    out.append("")
    unmet = [(s, g) for s, g in goals if not g.met and g.why]
    if unmet:
        out += ["Goals not met, and why:", ""]
        out += [f"- {s.key}, {g.text}: {g.why}" for s, g in unmet]
        out.append("")
    for s in sections:
        out += [f"## {s.title}", ""]
        if s.error:
            out += [f"**Did not finish:** `{s.error}`", ""]
            continue
        for t in s.tables:
            out += [f"**{t.title}**", "", "| " + " | ".join(t.columns) + " |",
                    "|" + "---|" * len(t.columns)]
            out += ["| " + " | ".join(row) + " |" for row in t.rows]
            out.append("")
        for note in s.notes:
            out += [note, ""]
        out += [f"_Took {s.seconds:.0f} s._", ""]
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/run", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small sizes (a minute or so); figures are not the goals'")
    p.add_argument("--only", nargs="+",
                   choices=["poll", "detection", "charts", "helm_api", "builds", "k8s_builds", "budget", "webhooks"],
                   help="run only these benchmarks")
    p.add_argument("--output", default=str(ROOT / "BENCHMARKS.md"), help="where to write the report")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("polling_server").setLevel(logging.ERROR)  # benchmark polls log warnings by design
    started = datetime.now(UTC)
    t = time.perf_counter()
    sections = run_all(args.only, args.quick)
    total = time.perf_counter() - t
    command = "benchmarks/run" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    Path(args.output).write_text(render(sections, command, started, total))
    print(f"wrote {args.output} ({total:.0f} s)", file=sys.stderr)
    failed = [s.key for s in sections if s.error]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
