"""The daemon's HTTP application: `/healthz` (liveness), `/readyz` (readiness), `/metrics`.

Liveness says only that the scheduler runs and polls: a full disk must not make the pod restart-loop. Readiness
also asks that the state be readable and writable. Errors are JSON, never a traceback.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask, Response, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import HTTPException

from polling_server.metrics import Metrics

Probe = Callable[[], tuple[bool, dict]]


def create_app(metrics: Metrics, health: Probe, ready: Probe) -> Flask:
    app = Flask("polling_server")

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

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        return jsonify({"error": e.name.lower()}), e.code

    @app.errorhandler(Exception)
    def internal_error(e: Exception):
        app.logger.exception("request failed")
        return jsonify({"error": "internal error"}), 500

    return app
