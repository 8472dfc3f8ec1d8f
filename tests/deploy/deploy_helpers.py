"""Shared helpers for the deployment tests: locating the real helm CLI and rendering charts.

`helm_bin()` is the one place the tests (and the benchmarks' smoke tests) find helm: HELM_BIN, as scripts/test
exports it from scripts/get-helm, or else scripts/get-helm itself, which fetches helm once into .work/tools/bin.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
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


GET_HELM = REPO_ROOT / "scripts" / "get-helm"


@functools.cache
def _located_helm() -> tuple[str | None, str]:
    """(path, why not): HELM_BIN when set, else what scripts/get-helm prints (it is idempotent)."""
    path = os.environ.get("HELM_BIN")
    if not path:
        try:
            # get-helm prints the binary's path on stdout; its progress goes to stderr.
            result = subprocess.run([str(GET_HELM)], capture_output=True, text=True, check=False, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            return None, f"scripts/get-helm could not run: {e}"
        if result.returncode != 0:
            return None, f"scripts/get-helm failed: {result.stderr.strip()[-500:]}"
        path = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    if not (path and Path(path).is_file() and os.access(path, os.X_OK)):
        return None, f"no helm CLI at {path!r} (HELM_BIN, or what scripts/get-helm printed)"
    return path, ""


def helm_bin() -> str:
    """The helm CLI every test uses; skips (fails in CI) when there is none."""
    path, why = _located_helm()
    if path is None:
        unavailable(why)
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


def render_notes(chart: str, *values_files: Path, release: str | None = None, namespace: str = "cd-system") -> str:
    """The chart's NOTES.txt as `helm install` would print it, rendered without a cluster.

    `helm template` skips NOTES.txt, and `helm install --dry-run` still asks a cluster for its version. So the
    chart is copied, its NOTES.txt wrapped in a named template, and rendered into a ConfigMap by the same engine.
    """
    with tempfile.TemporaryDirectory(prefix="notes-") as tmp:
        copy = Path(tmp) / chart
        shutil.copytree(CHARTS_DIR / chart, copy)
        notes = (copy / "templates" / "NOTES.txt").read_text()
        (copy / "templates" / "NOTES.txt").unlink()
        (copy / "templates" / "_zz_notes_probe.tpl").write_text(
            '{{- define "zz.notes.probe" -}}\n' + notes + "\n{{- end }}\n"
        )
        (copy / "templates" / "zz-notes-probe.yaml").write_text(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: zz-notes-probe\n"
            'data:\n  notes: {{ include "zz.notes.probe" . | quote }}\n'
        )
        args = ["template", release or chart, str(copy), "--namespace", namespace]
        for f in values_files:
            args += ["--values", str(f)]
        result = run_helm(*args)
    assert result.returncode == 0, f"rendering {chart}'s NOTES.txt failed:\n{result.stderr}"
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    (probe,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "zz-notes-probe"]
    return probe["data"]["notes"]
