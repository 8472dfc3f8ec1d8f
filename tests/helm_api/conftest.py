"""Fixtures for the helm_api tests: the Kubernetes API fake, a helmsman CronJob in it, and app factories."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from werkzeug.serving import make_server

try:  # tests/ is a plain directory today; keep working if it becomes a package
    from tests.kube_fake import KubeFake
except ImportError:
    from kube_fake import KubeFake

from helm_api_testing import OFFLINE_MANIFEST, base_config, free_port, helm_api_command, helmsman_cronjob

from helm_api.app import create_app


@pytest.fixture
def kube() -> Iterator[KubeFake]:
    with KubeFake() as fake:
        yield fake


@pytest.fixture
def cronjob(kube: KubeFake) -> dict[str, Any]:
    """The helmsman CronJob as stored in the fake (with uid)."""
    return kube.add_cronjob(helmsman_cronjob())


@pytest.fixture
def make_app(kube: KubeFake) -> Iterator[Callable[..., Any]]:
    """Build apps on the fake (reconciler and schedule threads off unless asked); stops them afterwards."""
    apps: list[Any] = []

    def factory(start_reconciler: bool = False, api_client: Any = None, **config: str) -> Any:
        app = create_app(
            base_config(**config),
            api_client=api_client or kube.new_api_client(),
            start_reconciler=start_reconciler,
        )
        apps.append(app)
        return app

    yield factory
    for app in apps:
        state = app.extensions["helm_api"]
        if state.schedule is not None:
            state.schedule.stop()
        state.reconciler.stop()
        state.backend.close()


@pytest.fixture
def app(make_app: Callable[..., Any], cronjob: dict[str, Any]) -> Any:
    return make_app()


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()




@pytest.fixture
def serve() -> Iterator[Callable[[Any], str]]:
    """Serve an app with a real threaded werkzeug server; returns its base URL."""
    servers: list[Any] = []

    def start(app: Any) -> str:
        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def offline_manifest(tmp_path: Any) -> Any:
    path = tmp_path / "rendered.yaml"
    path.write_text(OFFLINE_MANIFEST)
    return path


@dataclass
class RunningServer:
    """A helm-api process started by the ``run_helm_api`` fixture."""

    url: str
    port: int
    process: subprocess.Popen
    stderr_path: Path

    def stop(self) -> str:
        """SIGTERM to its process group, wait for the exit, return what it wrote on stderr."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=20)
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")


@pytest.fixture
def run_helm_api(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    """Start ``helm-api --host 127.0.0.1 --port <free>`` (extra flags after) as its own process group, or run
    ``shell`` (a bash command line, with ``{port}`` in it) instead; wait until /healthz answers. Stopped after."""
    started: list[RunningServer] = []

    def start(
        *args: str, env: dict[str, str], cwd: Path | None = None, shell: str | None = None
    ) -> RunningServer:
        port = free_port()
        if shell is None:
            command = [*helm_api_command(), "--host", "127.0.0.1", "--port", str(port), *args]
        else:
            command = ["bash", "-c", shell.format(port=port)]
        stderr_path = tmp_path / f"helm-api-{len(started)}.stderr"
        with stderr_path.open("wb") as stderr:
            # stderr goes to a file, so a chatty server can never block on a full pipe.
            process = subprocess.Popen(
                command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True
            )
        server = RunningServer(f"http://127.0.0.1:{port}", port, process, stderr_path)
        started.append(server)
        deadline = time.monotonic() + 60  # a safety net for a slow machine, not a measurement
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"helm-api exited with {process.returncode}:\n{server.stop()}")
            try:
                if requests.get(f"{server.url}/healthz", timeout=2).status_code == 200:
                    return server
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"helm-api did not answer /healthz:\n{server.stop()}")

    yield start
    for server in started:
        server.stop()
