"""Benchmark 3: the Helm chart index: parse + diff of the real stakater index (1.2 MB) and of a synthetic 10x one,
and the cost of polling an unchanged index, against a baseline that runs pure-Python `yaml.safe_load` every poll.

Ours is the product's path: `parse_index` (libyaml's C loader, scalars as text) + `plan_charts`, and for polls the
real ChartWatcher (download, sha256 of the body, no parse when the hash was processed already) over HTTP from a
local server that, like ChartMuseum, sends no ETag.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests
import yaml

from benchmarks.common import Goal, Section, Table, fmt_ratio, fmt_s, ratio

INDEX = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "helm-index" / \
    "stakater_stakater-charts_docs_index.yaml"
_CHART_KEY = re.compile(r"^  ([^\s#][^:]*):\s*$")
_DIGEST = re.compile(r"^(\s+digest:\s*)([0-9a-f]+)\s*$")


def synthetic_index(text: str, copies: int) -> str:
    """`copies` times the charts of `text`: each copy renamed `<chart>-x<k>`, with digests of its own."""
    lines = text.splitlines()
    start = lines.index("entries:") + 1
    end = start
    while end < len(lines) and (lines[end].startswith(" ") or lines[end].startswith("-") or not lines[end]):
        end += 1
    blocks: list[tuple[str, list[str]]] = []
    for line in lines[start:end]:
        m = _CHART_KEY.match(line)
        if m:
            blocks.append((m.group(1), []))
        elif blocks:
            blocks[-1][1].append(line)
    out = lines[:start]
    for k in range(copies):
        for name, body in blocks:
            out.append(f"  {name if k == 0 else f'{name}-x{k}'}:")
            for line in body:
                m = _DIGEST.match(line)
                if m and k:
                    line = m.group(1) + hashlib.sha256(f"{m.group(2)}{k}".encode()).hexdigest()
                out.append(line)
    out += lines[end:]
    return "\n".join(out) + "\n"


def _with_one_more_version(text: str) -> str:
    """The same index with one new version of its first chart (what a chart push does)."""
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if _CHART_KEY.match(line))
    new = ["  - apiVersion: v2", '    created: "2026-01-01T00:00:00Z"', f"    digest: {'e' * 64}",
           "    name: bench", "    urls:", "    - https://example.invalid/bench-999.0.0.tgz", "    version: 999.0.0"]
    return "\n".join(lines[: first + 1] + new + lines[first + 1:]) + "\n"


class _IndexServer:
    """Serves /index.yaml with no validators (as ChartMuseum does); the body can be swapped."""

    def __init__(self, body: bytes):
        self.body = body
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                body = outer.body
                self.send_response(200)
                self.send_header("Content-Type", "application/x-yaml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base class signature
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _naive_diff(doc: dict, previous: dict) -> list:
    current = {(name, v["version"]): v["digest"] for name, versions in (doc.get("entries") or {}).items()
               for v in versions or []}
    return [k for k, d in current.items() if previous.get(k) != d] + [k for k in previous if k not in current]


def _best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def measure(name: str, text: str, repeat: int, unchanged_polls: int) -> dict:
    from polling_server.chart_watch import ChartWatcher
    from polling_server.config import parse_settings
    from polling_server.metrics import Metrics
    from polling_server.planning.model import ChartState
    from polling_server.planning.planner import plan_charts
    from polling_server.sources.chart_index import parse_index
    from polling_server.state import StateStore

    before = text.encode()
    after = _with_one_more_version(text).encode()
    prev_state = ChartState(True, parse_index(before))

    def ours_parse_diff() -> None:
        plan = plan_charts(parse_index(after), prev_state)
        assert len(plan.changes) == 1

    r: dict = {"size_mb": len(after) / 1e6, "versions": len(prev_state.versions) + 1}
    r["ours_parse_diff"] = _best(ours_parse_diff, repeat)

    server = _IndexServer(before)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            settings = parse_settings({
                "state_path": str(Path(tmp) / "state.db"),
                "chart_repository": {"url": server.url},
                "helm_api": {"url": "http://127.0.0.1:9", "token": "bench-token"},
            }, env={})
            store = StateStore(settings.state_path)
            watcher = ChartWatcher(settings, store, Metrics())
            watcher.poll()  # records the baseline

            def changed_poll() -> None:
                server.body = after if server.body == before else before
                assert watcher.poll() is not None

            r["ours_changed_poll"] = _best(changed_poll, repeat)
            server.body = before
            watcher.poll()

            def unchanged_poll() -> None:
                assert watcher.poll() is None

            r["ours_unchanged_poll"] = _best(unchanged_poll, unchanged_polls)
            store.close()

        # Baseline: every poll downloads, parses with pure-Python safe_load, and diffs.
        previous = {k: v for k, v in prev_state.versions.items()}
        session = requests.Session()
        t0 = time.perf_counter()
        body = session.get(f"{server.url}/index.yaml", timeout=60).content
        t1 = time.perf_counter()
        doc = yaml.safe_load(body)
        assert len(_naive_diff(doc, previous)) == 0
        t2 = time.perf_counter()
        r["baseline_download"] = t1 - t0
        r["baseline_parse_diff"] = t2 - t1
        r["baseline_poll"] = t2 - t0
    finally:
        server.close()
    return r


def run(copies: int = 10, repeat: int = 3, unchanged_polls: int = 10, text: str | None = None) -> Section:
    section = Section("charts", "3. Chart index: parse + diff, and the unchanged-index poll")
    real = text if text is not None else INDEX.read_text()
    inputs = [("real stakater index", real)]
    if copies > 1:
        inputs.append((f"synthetic {copies}x", synthetic_index(real, copies)))
    table = Table("Best of several runs; baseline = pure-Python yaml.safe_load + diff, every poll",
                  ["index", "size", "versions", "ours: parse + diff", "baseline: parse + diff", "ratio",
                   "ours: unchanged poll", "baseline: poll", "ratio", "ours: changed poll (HTTP, end to end)"])
    for label, body in inputs:
        m = measure(label, body, repeat if label.startswith("real") else max(1, repeat - 1), unchanged_polls)
        key = "real" if label.startswith("real") else f"x{copies}"
        for k, v in m.items():
            section.figures[f"{key}.{k}"] = v
        table.rows.append([
            label, f"{m['size_mb']:.1f} MB", str(m["versions"]), fmt_s(m["ours_parse_diff"]),
            fmt_s(m["baseline_parse_diff"]), fmt_ratio(ratio(m["baseline_parse_diff"], m["ours_parse_diff"])),
            fmt_s(m["ours_unchanged_poll"]), fmt_s(m["baseline_poll"]),
            fmt_ratio(ratio(m["baseline_poll"], m["ours_unchanged_poll"])), fmt_s(m["ours_changed_poll"]),
        ])
    section.tables.append(table)
    for label, _ in inputs:
        key = "real" if label.startswith("real") else f"x{copies}"
        f = section.figures
        pr = ratio(f[f"{key}.baseline_parse_diff"], f[f"{key}.ours_parse_diff"])
        ur = ratio(f[f"{key}.baseline_poll"], f[f"{key}.ours_unchanged_poll"])
        section.goals.append(Goal(f"{label}: parse + diff >= 10x faster than the baseline", pr >= 10,
                                  fmt_ratio(pr)))
        section.goals.append(Goal(f"{label}: unchanged-index poll >= 10x cheaper than the baseline", ur >= 10,
                                  fmt_ratio(ur)))
    section.notes.append(
        "The synthetic index repeats every chart of the real one under new names (`<chart>-x<k>`) with new "
        "digests. 'Changed poll' alternates between the index and the index plus one version, so each poll "
        "parses, plans and saves. The baseline's poll is timed once (its parse takes seconds); ours are the best "
        f"of {repeat} (parse, changed poll) and {unchanged_polls} (unchanged poll). The server sends no ETag, "
        "as ChartMuseum does, so ours downloads the whole index every poll and skips the parse by hash.")
    return section
