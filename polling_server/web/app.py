"""The daemon's HTTP application: `/healthz` (liveness), `/readyz` (readiness), `/metrics`, the webhook hooks
(`/hooks/...`, web/receiver.py) and the read-only status page with its JSON API (`/`, `/builds/...`, `/api/...`,
web/status.py). `create_hooks_app` serves the hooks alone, for a listener that faces the internet
while the rest stays inside the cluster.

Liveness says only that the scheduler runs and polls: a full disk must not make the pod restart-loop. Readiness
also asks that the state be readable and writable. Errors are JSON, never a traceback.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Blueprint, Flask, Response, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import HTTPException

from polling_server.config import Settings
from polling_server.metrics import Metrics
from polling_server.state import StateStore
from polling_server.web.receiver import MAX_BODY_BYTES, HookAnswer, WebhookReceiver
from polling_server.web.status import install_status_page

Probe = Callable[[], tuple[bool, dict]]


def _hooks(receiver: WebhookReceiver) -> Blueprint:
    bp = Blueprint("hooks", __name__)

    def reply(answer: HookAnswer):
        return jsonify(answer.body), answer.status

    def body() -> bytes:
        return request.get_data(cache=False, parse_form_data=False)

    @bp.post("/hooks/github")
    def github():
        return reply(receiver.github(body(), request.headers))

    @bp.post("/hooks/gitlab")
    def gitlab():
        return reply(receiver.gitlab(body(), request.headers))

    @bp.post("/hooks/gitea")
    def gitea():
        return reply(receiver.gitea(body(), request.headers))

    @bp.post("/hooks/charts")
    def charts():
        return reply(receiver.charts(request.headers))

    return bp


def _base_app() -> Flask:
    app = Flask("polling_server")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        return jsonify({"error": e.name.lower()}), e.code

    @app.errorhandler(Exception)
    def internal_error(e: Exception):
        app.logger.exception("request failed")
        return jsonify({"error": "internal error"}), 500

    return app


def create_hooks_app(receiver: WebhookReceiver) -> Flask:
    app = _base_app()
    app.register_blueprint(_hooks(receiver))
    return app


def create_app(metrics: Metrics, health: Probe, ready: Probe, receiver: WebhookReceiver | None = None, *,
               store: StateStore | None = None, settings: Settings | None = None) -> Flask:
    """The daemon's endpoint; with `store` and `settings`, also the status page and its API (web/status.py)."""
    app = _base_app()
    if receiver is not None:
        app.register_blueprint(_hooks(receiver))
    if store is not None and settings is not None:
        install_status_page(app, store, settings)

    @app.get("/healthz")
    def healthz():
        ok, details = health()
        return jsonify({"ok": ok, **details}), 200 if ok else 503

    @app.get("/readyz")
    def readyz():
        ok, details = ready()
        return jsonify({"ok": ok, **details}), 200 if ok else 503

    @app.get("/metrics")
    def metrics_page():
        return Response(generate_latest(metrics.registry), mimetype=CONTENT_TYPE_LATEST)

    return app
