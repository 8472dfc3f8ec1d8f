"""Fixtures for the helm_api tests: the Kubernetes API fake, a helmsman CronJob in it, and app factories."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from werkzeug.serving import make_server

try:  # tests/ is a plain directory today; keep working if it becomes a package
    from tests.kube_fake import KubeFake
except ImportError:
    from kube_fake import KubeFake

from helm_api_testing import OFFLINE_MANIFEST, base_config, helmsman_cronjob

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
    """Build apps on the fake (reconciler thread off unless asked); stops their threads afterwards."""
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
        app.extensions["helm_api"].reconciler.stop()
        app.extensions["helm_api"].backend.close()


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
