"""What every benchmark reports (a Section of tables and goal verdicts), and small measuring helpers."""

from __future__ import annotations

import math
import os
import platform
import resource
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass
class Goal:
    """A goal from the issue and whether this run met it, with the figure that decides."""

    text: str
    met: bool
    evidence: str
    why: str = ""  # when not met: why, from this run's figures


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)


@dataclass
class Section:
    """One benchmark's result: tables for BENCHMARKS.md, goals, notes, and raw figures (for the smoke test)."""

    key: str
    title: str
    tables: list[Table] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) by linear interpolation; nan for no values."""
    if not values:
        return math.nan
    data = sorted(values)
    k = (len(data) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    if math.isinf(data[hi]):  # never-detected items count as infinite: no interpolation towards them
        return data[hi] if k > lo else data[lo]
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def ratio(baseline: float, ours: float) -> float:
    """How many times `ours` beats `baseline` (baseline / ours); inf when ours is 0."""
    if ours == 0:
        return math.inf if baseline > 0 else 1.0
    return baseline / ours


def fmt_ratio(value: float) -> str:
    if math.isinf(value):
        return "∞"
    if math.isnan(value):
        return "n/a"
    return f"{value:.1f}x" if value < 100 else f"{value:.0f}x"


def fmt_s(seconds: float) -> str:
    """Seconds, shown in ms under one second."""
    if math.isnan(seconds):
        return "n/a"
    if math.isinf(seconds):
        return "never"
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass
class Timing:
    wall: float
    cpu: float


def timed(fn: Callable[[], object]) -> tuple[object, Timing]:
    """Run fn, measuring wall time and this process's CPU time (every thread of it)."""
    w0, c0 = time.perf_counter(), time.process_time()
    result = fn()
    return result, Timing(time.perf_counter() - w0, time.process_time() - c0)


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        mem = f", {pages * size / 2**30:.1f} GiB RAM"
    except (ValueError, OSError):
        pass
    return (f"{cpu}, {os.cpu_count()} cores{mem}; {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}")


def docker_version() -> str | None:
    try:
        out = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None
