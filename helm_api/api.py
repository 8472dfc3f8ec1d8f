"""The HTTP interface: the blueprint's routes, bearer-token auth, and the one JSON error handler."""

from __future__ import annotations

import functools
import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from helm_api import jobs as J
from helm_api.backend import JobBackend
from helm_api.config import Settings
from helm_api.errors import BadRequestError, HelmApiError, NotReadyError, UnauthorizedError
from helm_api.logs import event_fields
from helm_api.metrics import CONTENT_TYPE_LATEST, ApplyMetrics
from helm_api.reconciler import Reconciler
from helm_api.schedule import ApplySchedule
from helm_api.service import ApplyService

log = logging.getLogger(__name__)

EXTENSION = "helm_api"
MAX_REASON_LENGTH = 1024
MAX_REQUEST_ID_LENGTH = 200
DEFAULT_LIST_LIMIT = 20
MAX_LIST_LIMIT = 200

bp = Blueprint("helm_api", __name__)


@dataclass
class HelmApiState:
    """What one app holds, in ``app.extensions["helm_api"]``."""

    settings: Settings
    backend: JobBackend
    metrics: ApplyMetrics
    service: ApplyService
    reconciler: Reconciler
    schedule: ApplySchedule | None = None


def state() -> HelmApiState:
    return current_app.extensions[EXTENSION]


def require_token(view: Callable[..., Any]) -> Callable[..., Any]:
    """401 unless the request carries ``Authorization: Bearer <token>`` (skipped when anonymous is allowed)."""

    @functools.wraps(view)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        settings = state().settings
        if settings.token is None:
            if settings.allow_anonymous:
                return view(*args, **kwargs)
            raise UnauthorizedError("authentication is not configured")
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode("utf-8"), settings.token.encode("utf-8")
        ):
            raise UnauthorizedError("missing or wrong bearer token (Authorization: Bearer <token>)")
        return view(*args, **kwargs)

    return wrapped


def _read_apply_body() -> tuple[str, str | None]:
    if not request.get_data():
        return "", None
    try:
        body = request.get_json(force=True, silent=True)
    except RecursionError as e:
        # The json module refuses very deep nesting with RecursionError, which `silent` does not cover.
        raise BadRequestError("the request body is nested too deeply") from e
    if body is None:
        raise BadRequestError("the request body is not JSON")
    if not isinstance(body, dict):
        raise BadRequestError("the request body must be a JSON object")
    reason = body.get("reason", "")
    if reason is None:
        reason = ""
    if not isinstance(reason, str):
        raise BadRequestError("reason must be a string")
    if len(reason) > MAX_REASON_LENGTH:
        raise BadRequestError(f"reason is too long (at most {MAX_REASON_LENGTH} characters)")
    request_id = body.get("request_id")
    if request_id is not None:
        if not isinstance(request_id, str) or not request_id.strip():
            raise BadRequestError("request_id must be a non-empty string")
        if len(request_id) > MAX_REQUEST_ID_LENGTH:
            raise BadRequestError(f"request_id is too long (at most {MAX_REQUEST_ID_LENGTH} characters)")
        if request_id.startswith(J.SCHEDULE_REQUEST_PREFIX):
            # A client holding a slot's id would stand in for that slot, without the schedule's flag.
            raise BadRequestError(f"request_id may not start with {J.SCHEDULE_REQUEST_PREFIX!r} (the schedule's)")
    return reason, request_id


def _requested_by() -> str:
    agent = request.headers.get("User-Agent", "")
    who = request.remote_addr or "unknown"
    return f"{who} ({agent})"[:200] if agent else who


@bp.post("/apply")
@require_token
def post_apply() -> tuple[Response, int]:
    reason, request_id = _read_apply_body()
    answer = state().service.apply(
        reason=reason, request_id=request_id, requested_by=_requested_by(), origin="apply"
    )
    return jsonify(answer), 200 if answer["duplicate"] else 202


@bp.get("/apply")
@require_token
def list_applies() -> Response:
    raw = request.args.get("limit", str(DEFAULT_LIST_LIMIT))
    try:
        limit = int(raw)
    except ValueError as e:
        raise BadRequestError(f"limit must be an integer, got {raw!r}") from e
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise BadRequestError(f"limit must be between 1 and {MAX_LIST_LIMIT}")
    s = state()
    return jsonify(
        {
            "namespace": s.backend.namespace,
            "cronjob": s.backend.cronjob_name,
            "offline": s.backend.offline,
            "jobs": s.service.list_applies(limit),
        }
    )


@bp.get("/apply/<name>")
@require_token
def get_apply(name: str) -> Response:
    return jsonify(state().service.get_apply(name))


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    backend = state().backend
    checks = {"apiserver": "not checked", "cronjob": "not checked"}
    try:
        backend.check_api()
        checks["apiserver"] = "ok"
    except HelmApiError as e:
        checks["apiserver"] = e.message
        raise NotReadyError(f"not ready: {e.message}", ready=False, failed="apiserver", checks=checks) from e
    try:
        backend.read_cronjob()
        checks["cronjob"] = "ok"
    except HelmApiError as e:
        checks["cronjob"] = e.message
        raise NotReadyError(f"not ready: {e.message}", ready=False, failed="cronjob", checks=checks) from e
    return jsonify({"ready": True, "namespace": backend.namespace, "cronjob": backend.cronjob_name, "checks": checks})


@bp.get("/metrics")
def metrics() -> Response:
    return Response(state().metrics.exposition(), mimetype=CONTENT_TYPE_LATEST)


def handle_error(error: Exception) -> tuple[Response, int] | Response:
    """The one error handler: every error becomes JSON ``{"error": ...}``; never a traceback."""
    if isinstance(error, HelmApiError):
        if error.status >= 500:
            log.warning(
                "request failed: %s %s: %s",
                request.method,
                request.path,
                error.message,
                extra=event_fields("request.failed", method=request.method, path=request.path, status=error.status),
            )
        response = jsonify(error.to_dict())
        response.status_code = error.status
        if error.status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        if "retry_after_seconds" in error.details:
            response.headers["Retry-After"] = str(error.details["retry_after_seconds"])
        return response
    if isinstance(error, HTTPException):
        response = jsonify({"error": error.description or error.name})
        response.status_code = error.code or 500
        return response
    log.exception(
        "unexpected error on %s %s",
        request.method,
        request.path,
        extra=event_fields("request.error", method=request.method, path=request.path),
    )
    return jsonify({"error": "internal error"}), 500


def register(app: Flask, helm_state: HelmApiState) -> None:
    app.extensions[EXTENSION] = helm_state
    app.register_blueprint(bp)
    app.register_error_handler(Exception, handle_error)
