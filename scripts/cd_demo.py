"""The local end-to-end scenario behind `scripts/demo`: a merge, a tag and a chart push, carried through the
real poller, the real Docker engine and registry, and the Helm API in offline mode (no cluster here).

It makes a workspace (a sample application in a real git repository, a Helm repository directory served by a
plain static file server), starts `helm-api` (offline: it reads the CronJob from the rendered helmsman-cronjob
chart and records the Job it would create) and `polling-server` as real processes with a generated
configuration, then makes a commit, a semver tag and a new chart version, following the poller's JSON log as it
detects, builds, pushes and requests the apply. Every outcome is read back from the registry and the Helm API,
not from the log, and summed up in a table. `scripts/demo` sets up the engine; tests/e2e runs the same scenario.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
STEP_TIMEOUT = 300.0


class DemoError(Exception):
    """A step did not happen; the message says what to look at."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _git(*args: str, cwd: Path) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "Demo", "GIT_AUTHOR_EMAIL": "demo@example.invalid",
           "GIT_COMMITTER_NAME": "Demo", "GIT_COMMITTER_EMAIL": "demo@example.invalid", "GIT_CONFIG_NOSYSTEM": "1"}
    done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise DemoError(f"git {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


@dataclass
class Pushed:
    what: str
    ref: str
    sha: str
    tags: list[str]
    digest: str
    seconds: float
    build_id: int | None = None


@dataclass
class DemoResult:
    image: str
    registry: str
    staging: Pushed | None = None
    release: Pushed | None = None
    chart: str | None = None
    apply: dict = field(default_factory=dict)
    job_file: Path | None = None
    status_url: str | None = None  # the poller's status page


class Demo:
    def __init__(self, workdir: Path, registry: str, helm_bin: str, out=print, python: str = sys.executable):
        self.work = workdir
        self.registry = registry
        self.helm = helm_bin
        self.out = out
        self.python = python
        self.procs: list[subprocess.Popen] = []
        self.events: queue.Queue[dict] = queue.Queue()
        self.seen: list[dict] = []
        self.backlog: list[dict] = []
        self.token = secrets.token_urlsafe(24)
        self.image = "demo/sample-app"
        self.started = time.monotonic()
        self.log_file = None

    # --- plumbing -----------------------------------------------------------------------------------------
    def step(self, text: str) -> None:
        self.out(f"[{time.monotonic() - self.started:6.1f}s] {text}")

    def _start(self, name: str, argv: list[str], env: dict, follow: bool = False) -> subprocess.Popen:
        log_path = self.work / f"{name}.log"
        logf = open(log_path, "w")  # noqa: SIM115 - closed when the process is stopped
        p = subprocess.Popen(argv, cwd=self.work, env={**os.environ, **env}, stdout=logf if not follow else
                             subprocess.DEVNULL, stderr=subprocess.PIPE if follow else logf, text=True,
                             start_new_session=True)
        p.log_file, p.log_path, p.demo_name = logf, log_path, name
        self.procs.append(p)
        if follow:
            threading.Thread(target=self._follow, args=(p, logf), daemon=True).start()
        return p

    def _follow(self, p: subprocess.Popen, logf) -> None:
        for line in p.stderr:
            logf.write(line)
            logf.flush()
            if line.startswith("{"):
                try:
                    self.events.put(json.loads(line))
                except ValueError:
                    continue

    def _wait_http(self, url: str, what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(url, timeout=2).status_code < 500:
                    return
            except requests.RequestException:
                pass
            for p in self.procs:
                if p.poll() is not None:
                    raise DemoError(f"{p.demo_name} exited with {p.returncode}: see {p.log_path}")
            time.sleep(0.2)
        raise DemoError(f"{what} did not answer at {url} within {timeout:.0f}s")

    def wait_event(self, what: str, match, timeout: float = STEP_TIMEOUT, fail=None) -> dict:
        """Wait for a poller log event for which match(e) is true; show elapsed time meanwhile.

        Events that match nothing yet are kept, so a later step still finds an event that came early."""
        for e in list(self.backlog):
            if fail and fail(e) or match(e):
                self.backlog.remove(e)
                return self._matched(what, e, fail)
        deadline = time.monotonic() + timeout
        t0 = time.monotonic()
        spinner = "|/-\\"
        tty = sys.stdout.isatty()
        i = 0
        while time.monotonic() < deadline:
            try:
                e = self.events.get(timeout=0.25)
            except queue.Empty:
                poller = next(p for p in self.procs if p.demo_name == "polling-server")
                if poller.poll() is not None:
                    raise DemoError(f"polling-server exited with {poller.returncode}: see {poller.log_path}") from None
                if tty:
                    sys.stdout.write(f"\r  {spinner[i % 4]} {what} ({time.monotonic() - t0:.0f}s)")
                    sys.stdout.flush()
                    i += 1
                continue
            self.seen.append(e)
            if fail and fail(e) or match(e):
                if tty:
                    sys.stdout.write("\r" + " " * 70 + "\r")
                return self._matched(what, e, fail)
            self.backlog.append(e)
        raise DemoError(f"{what}: nothing after {timeout:.0f}s. Look at {self.work / 'polling-server.log'}")

    def _matched(self, what: str, e: dict, fail) -> dict:
        if fail and fail(e):
            raise DemoError(f"{what}: the poller logged {e.get('event')}: {e.get('reason') or e.get('message')}"
                            f" (full log: {self.work / 'polling-server.log'})")
        return e

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            p.log_file.close()
        self.procs.clear()

    # --- the workspace ------------------------------------------------------------------------------------
    def prepare(self) -> None:
        if self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        self.step(f"workspace {self.work}")
        # A sample application in a real git repository ("the GitHub repository").
        self.remote = self.work / "sample-app.git"
        self.app = self.work / "sample-app"
        _git("init", "-q", "--bare", "--initial-branch=main", str(self.remote), cwd=self.work)
        _git("init", "-q", "--initial-branch=main", str(self.app), cwd=self.work)
        _git("remote", "add", "origin", str(self.remote), cwd=self.app)
        (self.app / "Dockerfile").write_text(
            "# Builds without pulling anything: FROM scratch, files only.\n"
            "FROM scratch\nCOPY index.html VERSION /site/\nLABEL demo=sample-app\n")
        (self.app / "index.html").write_text("<h1>sample app</h1>\n")
        (self.app / "VERSION").write_text("dev\n")
        _git("add", "-A", cwd=self.app)
        _git("commit", "-q", "-m", "initial commit", cwd=self.app)
        _git("push", "-q", "origin", "HEAD:refs/heads/main", cwd=self.app)
        self.step(f"sample application: git repository {self.remote} (branch main)")

        # A Helm repository: the project's own charts, packaged and indexed, served over HTTP on loopback.
        self.charts_src = self.work / "charts-src"
        shutil.copytree(ROOT / "charts", self.charts_src)
        self.chart_repo = self.work / "chart-repo"
        self.chart_repo.mkdir()
        for chart in sorted(p for p in self.charts_src.iterdir() if (p / "Chart.yaml").exists()):
            self._helm("package", "-d", str(self.chart_repo), str(chart))
        self.chart_port = _free_port()
        self.chart_url = f"http://127.0.0.1:{self.chart_port}"
        self._helm("repo", "index", str(self.chart_repo), "--url", self.chart_url)
        self._start("chart-server", [self.python, "-m", "http.server", "--bind", "127.0.0.1",
                                     "--directory", str(self.chart_repo), str(self.chart_port)], {})
        self._wait_http(f"{self.chart_url}/index.yaml", "the chart repository")
        self.step(f"Helm repository {self.chart_url}/index.yaml "
                  f"({len(list(self.chart_repo.glob('*.tgz')))} charts)")

        # The CronJob the Helm API copies, rendered from this repository's helmsman-cronjob chart.
        rendered = self._helm("template", "helmsman-cronjob", str(ROOT / "charts" / "helmsman-cronjob"),
                              "--namespace", "cd-system")
        self.cronjob_file = self.work / "helmsman-cronjob.yaml"
        self.cronjob_file.write_text(rendered)

    def _helm(self, *args: str) -> str:
        done = subprocess.run([self.helm, *args], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise DemoError(f"helm {args[0]} failed: {done.stderr.strip()}")
        return done.stdout

    def start_services(self) -> None:
        self.jobs_dir = self.work / "jobs"
        self.api_port = _free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self._start("helm-api", [self.python, "-m", "helm_api", "--host", "127.0.0.1", "--port", str(self.api_port),
                                 "--offline-cronjob", str(self.cronjob_file)],
                    {"HELM_API_TOKEN": self.token, "HELM_API_OFFLINE_JOBS_DIR": str(self.jobs_dir),
                     "HELM_API_NAMESPACE": "cd-system"})
        self._wait_http(f"{self.api_url}/healthz", "helm-api")
        self.step(f"helm-api (offline: Jobs are recorded, not created) at {self.api_url}")

        self.poller_port = _free_port()
        self.status_url = f"http://127.0.0.1:{self.poller_port}/"
        config = {
            "state_path": "poller-state.db",
            "poll_interval_seconds": 1,
            "reconcile_interval_seconds": 5,
            "log_format": "json",
            "http": {"host": "127.0.0.1", "port": self.poller_port},
            "registry": {"host": self.registry},
            "builds": {"retries": 0, "timeout_seconds": 600},
            "chart_repository": {"url": self.chart_url, "poll_interval_seconds": 1},
            "helm_api": {"url": self.api_url, "token": "${DEMO_HELM_API_TOKEN}", "retry_backoff_seconds": 1},
            "repositories": [{"url": str(self.remote), "name": "sample-app", "branch": "main",
                              "image": self.image, "floating_tags": True}],
        }
        self.config_file = self.work / "poller.yaml"
        self.config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        self._start("polling-server", [self.python, "-m", "polling_server", "--config", str(self.config_file)],
                    {"DEMO_HELM_API_TOKEN": self.token}, follow=True)
        self.step(f"polling-server with {self.config_file} (state in {self.work / 'poller-state.db'})")
        self.step(f"status page: {self.status_url} (builds, their logs, applies; it refreshes by itself)")
        self.wait_event("baseline of the repository", lambda e: e.get("event") == "baseline.recorded")
        self.wait_event("baseline of the charts", lambda e: e.get("event") == "charts.baseline_recorded")
        self.step("baselines recorded: nothing is built for what already existed")

    # --- the scenario -------------------------------------------------------------------------------------
    def _build(self, what: str, ref: str, sha: str) -> Pushed:
        t0 = time.monotonic()
        def ours(e: dict) -> bool:
            return e.get("sha") == sha and e.get("ref") == ref

        self.wait_event(f"{what}: detection", lambda e: e.get("event") == "build.planned" and ours(e))
        self.step(f"  detected, build planned for {ref} @ {sha[:12]}")
        e = self.wait_event(f"{what}: build and push", lambda e: e.get("event") == "build.succeeded" and ours(e),
                            fail=lambda e: e.get("event") == "build.failed" and ours(e))
        tags = [t.rsplit(":", 1)[-1] for t in e.get("tags", [])]
        pushed = Pushed(what, ref, sha, tags, e.get("digest", ""), time.monotonic() - t0, e.get("build_id"))
        self._verify_registry(pushed)
        self.step(f"  pushed {self.registry}/{self.image}:{{{','.join(tags)}}} {pushed.digest[:19]}... "
                  f"(read back from the registry) in {pushed.seconds:.1f}s")
        return pushed

    def _verify_registry(self, pushed: Pushed) -> None:
        base = f"http://{self.registry}/v2/{self.image}"
        listed = requests.get(f"{base}/tags/list", timeout=10).json().get("tags") or []
        missing = [t for t in pushed.tags if t not in listed]
        if missing:
            raise DemoError(f"the registry does not list {missing} for {self.image}")
        accept = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"
        for tag in pushed.tags:
            r = requests.head(f"{base}/manifests/{tag}", headers={"Accept": accept}, timeout=10)
            held = r.headers.get("Docker-Content-Digest")
            if held != pushed.digest:
                raise DemoError(f"{self.image}:{tag} in the registry is {held}, the poller said {pushed.digest}")

    def merge(self) -> Pushed:
        (self.app / "index.html").write_text("<h1>sample app</h1><p>merged feature</p>\n")
        _git("commit", "-q", "-am", "Merge pull request #1: a feature", cwd=self.app)
        _git("push", "-q", "origin", "HEAD:refs/heads/main", cwd=self.app)
        sha = _git("rev-parse", "HEAD", cwd=self.app)
        self.step(f"merge: pushed {sha[:12]} to main")
        return self._build("merge -> staging image", "main", sha)

    def tag(self, version: str = "v1.0.0") -> Pushed:
        """Tag the commit that is on staging now: the release image is built from exactly that commit."""
        _git("tag", "-a", "-m", f"release {version}", version, cwd=self.app)
        _git("push", "-q", "origin", f"refs/tags/{version}", cwd=self.app)
        sha = _git("rev-parse", "HEAD", cwd=self.app)
        self.step(f"tag: pushed annotated tag {version} on {sha[:12]}")
        return self._build(f"tag {version} -> release image", version, sha)

    def chart_push(self) -> tuple[str, dict]:
        chart_dir = self.charts_src / "helm-api"
        meta = yaml.safe_load((chart_dir / "Chart.yaml").read_text())
        major, minor, patch = (int(x) for x in re.match(r"(\d+)\.(\d+)\.(\d+)", str(meta["version"])).groups())
        meta["version"] = f"{major}.{minor}.{patch + 1}"
        (chart_dir / "Chart.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
        self._helm("package", "-d", str(self.chart_repo), str(chart_dir))
        self._helm("repo", "index", str(self.chart_repo), "--url", self.chart_url)
        chart = f"helm-api-{meta['version']}"
        self.step(f"chart push: {chart}.tgz added to the Helm repository")
        self.wait_event("chart change detection", lambda e: e.get("event") == "chart.changed")
        self.step("  detected, apply requested")
        e = self.wait_event("the apply request", lambda e: e.get("event") == "apply.requested",
                            fail=lambda e: e.get("event") == "apply.failed" and e.get("level") == "error")
        job = e.get("job")
        r = requests.get(f"{self.api_url}/apply/{job}", headers={"Authorization": f"Bearer {self.token}"},
                         timeout=10)
        if r.status_code != 200:
            raise DemoError(f"helm-api does not know Job {job}: HTTP {r.status_code} {r.text[:200]}")
        self.step(f"  helm-api: Job {job} (NOT created: offline mode) would run helmsman --apply")
        return chart, r.json()

    def run(self) -> DemoResult:
        result = DemoResult(self.image, self.registry)
        self.prepare()
        self.start_services()
        result.status_url = self.status_url
        result.staging = self.merge()
        result.release = self.tag()
        result.chart, result.apply = self.chart_push()
        jobs = sorted(self.jobs_dir.glob("*.yaml")) if self.jobs_dir.exists() else []
        result.job_file = jobs[-1] if jobs else None
        return result

    def summary(self, r: DemoResult) -> str:
        rows = [("what happened", "detected", "result")]
        for p in (r.staging, r.release):
            if p:
                rows.append((p.what, f"{p.ref} @ {p.sha[:12]}",
                             f"{r.registry}/{r.image}:{','.join(p.tags)} {p.digest[:19]}..."))
        if r.chart:
            rows.append(("chart push -> helmsman apply", r.chart,
                         f"Job {r.apply.get('job')} would run helmsman (offline: not created)"))
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        if r.job_file:
            lines.append(f"\nThe Job helm-api would create: {r.job_file}")
        if r.status_url:
            lines.append(f"\nStatus page: {r.status_url}")
            lines += [f"  {p.what}: build #{p.build_id} and its log at {r.status_url}builds/{p.build_id}"
                      for p in (r.staging, r.release) if p and p.build_id]
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--once", action="store_true", help="exit after the scenario instead of running until Ctrl-C")
    p.add_argument("--workdir", default=str(ROOT / ".work" / "demo"))
    args = p.parse_args(argv)
    registry = os.environ.get("CD_REGISTRY")
    helm = os.environ.get("HELM_BIN")
    if not registry or not os.environ.get("DOCKER_HOST") or not helm:
        print("run this through scripts/demo: it starts the Docker engine and the registry and fetches helm",
              file=sys.stderr)
        return 2
    demo = Demo(Path(args.workdir), registry, helm)
    try:
        result = demo.run()
        print("\n" + demo.summary(result) + "\n")
        if not args.once:
            demo.step("the daemons keep running: commit or tag in "
                      f"{demo.app} and push, or add a chart to {demo.chart_repo}. Ctrl-C stops everything.")
            while True:
                e = demo.events.get()
                demo.step(" ".join(f"{k}={v}" for k, v in e.items() if k not in ("ts", "logger")))
    except DemoError as e:
        print(f"\ndemo failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping")
    finally:
        demo.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
