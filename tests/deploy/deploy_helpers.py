"""Shared helpers for the deployment tests: locating the real helm CLI and rendering charts."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHARTS_DIR = REPO_ROOT / "charts"
DSS_DIR = REPO_ROOT / "dss"
VALUES_DIR = Path(__file__).resolve().parent / "values"
CHART_NAMES = ("polling-server", "helm-api", "helmsman-cronjob")
IN_CI = os.environ.get("CI") == "true"


def unavailable(reason: str) -> None:
    """Skip on a developer machine; fail in CI, where these checks must really run."""
    if IN_CI:
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


def helm_bin() -> str:
    path = os.environ.get("HELM_BIN") or str(REPO_ROOT / ".work" / "tools" / "bin" / "helm")
    if not (Path(path).is_file() and os.access(path, os.X_OK)):
        unavailable(f"no helm CLI at {path} (run scripts/get-helm, or set HELM_BIN)")
    return path


def run_helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm_bin(), *args], capture_output=True, text=True, check=False, timeout=120)


def render(chart: str, *values_files: Path, release: str | None = None, namespace: str = "cd-system") -> list[dict]:
    """`helm template` a chart from charts/ and return its non-empty documents."""
    args = ["template", release or chart, str(CHARTS_DIR / chart), "--namespace", namespace]
    for f in values_files:
        args += ["--values", str(f)]
    result = run_helm(*args)
    assert result.returncode == 0, f"helm template {chart} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def find(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]
