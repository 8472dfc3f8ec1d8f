"""The read-only status page and its JSON API, on the daemon's HTTP endpoint.

Pages: `/` (repositories, the build queue, recent builds, chart applies, holds, rollbacks and releases awaiting
approval) and `/builds/<id>` (one build and its log, followed live while it runs); `/partials/...` are the same
fragments, fetched by static/status.js to refresh a page without reloading it. JSON: `/api/overview`,
`/api/repositories`, `/api/builds`, `/api/builds/<id>`, `/api/builds/<id>/log?offset=N`, `/api/applies`. HTML and
JSON come from the same read functions (web/views.py); templates are autoescaped and logs are text, so a branch
named `<script>` is shown, never run; `Content-Security-Policy: default-src 'self'` forbids inline script anyway.

Access: with `http.read_token` set, every page and API answer needs it, as `Authorization: Bearer <token>` or as the
signed session cookie the login form (`POST /login`) sets: Flask's session, signed with a key derived from the
token (a new token ends every session), `HttpOnly`, `SameSite=Strict`, and `Secure` when the page is reached over
HTTPS (the request, `X-Forwarded-Proto: https`, or an https `http.public_url`). Tokens are compared in constant
time. The probes, `/metrics` and `/hooks/*` keep their own rules.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from datetime import datetime, timedelta

from flask import Blueprint, Flask, Response, jsonify, redirect, render_template, request, session
from flask.sessions import SecureCookieSessionInterface

from polling_server.config import Settings
from polling_server.errors import OperatorError, StateError
from polling_server.logs import log_event
from polling_server.planning.model import BuildStatus
from polling_server.state import StateStore
from polling_server.web import views

log = logging.getLogger(__name__)

CSP = "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
REFRESH_SECONDS = 3  # how often the page's script refreshes the tables (the log is followed every second)
SESSION_HOURS = 12
_OPEN_ENDPOINTS = {"status.static", "status.login_form", "status.login", "status.logout"}


class _StatusSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie session, whose cookie is `Secure` whenever the page is reached over HTTPS."""

    def __init__(self, public_https: bool):
        self.public_https = public_https

    def get_cookie_secure(self, app: Flask) -> bool:
        forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
        return self.public_https or request.is_secure or forwarded == "https"


def session_key(token: str) -> str:
    """The key that signs session cookies: derived from the read token, so changing the token ends every session."""
    return hmac.new(token.encode(), b"polling-server status page session", hashlib.sha256).hexdigest()


def install_status_page(app: Flask, store: StateStore, settings: Settings) -> None:
    """Serve the status page and its API from `app` (the daemon's endpoint), reading `store`."""
    token = str(settings.http.read_token) if settings.http.read_token else None
    if token:
        app.secret_key = session_key(token)
        app.config.update(SESSION_COOKIE_NAME="polling_server_session", SESSION_COOKIE_HTTPONLY=True,
                          SESSION_COOKIE_SAMESITE="Strict",
                          PERMANENT_SESSION_LIFETIME=timedelta(hours=SESSION_HOURS))
        app.session_interface = _StatusSessions((settings.http.public_url or "").startswith("https://"))
    app.register_blueprint(_blueprint(store, settings, token))

    @app.after_request
    def security_headers(response: Response) -> Response:
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response


def _blueprint(store: StateStore, settings: Settings, token: str | None) -> Blueprint:
    bp = Blueprint("status", __name__, template_folder="templates", static_folder="static",
                   static_url_path="/assets")

    def authorized() -> bool:
        if token is None:
            return True
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            return hmac.compare_digest(header[len("Bearer "):].strip().encode(), token.encode())
        return session.get("reader") is True

    @bp.before_request
    def require_token():
        if request.endpoint in _OPEN_ENDPOINTS or authorized():
            return None
        if request.path.startswith(("/api/", "/partials/")):
            answer = jsonify({"error": "unauthorized: send Authorization: Bearer <http.read_token>, or log in"})
            return answer, 401, {"WWW-Authenticate": 'Bearer realm="polling-server"'}
        return _login_page(request.full_path.rstrip("?"), None, 401)

    @bp.after_request
    def no_store(response: Response) -> Response:
        if request.endpoint != "status.static":
            response.headers["Cache-Control"] = "no-store"  # the state changes; and it may be behind a token
        return response

    @bp.errorhandler(StateError)
    def state_unreadable(e: StateError):
        log_event(log, "status.state_unreadable", "warning", str(e))
        return jsonify({"error": "the state database cannot be read right now"}), 503

    def page(template: str, **context) -> str:
        now = time.time()
        return render_template(template, now=now, now_iso=views.rfc3339(now), refresh=REFRESH_SECONDS,
                               signed_in=token is not None and session.get("reader") is True, **context)

    # --- pages -----------------------------------------------------------------------------------------------
    @bp.get("/")
    def overview_page():
        return page("status/overview.html", o=views.overview(store, settings))

    @bp.get("/partials/overview")
    def overview_partial():
        return page("status/_overview.html", o=views.overview(store, settings))

    @bp.get("/builds/<int:build_id>")
    def build_page(build_id: int):
        b = views.build(store, settings, build_id)
        if b is None:
            return page("status/missing.html", what=f"build {build_id}"), 404
        chunk = views.log_chunk(store, build_id, 0, settings.secret_values())
        return page("status/build.html", b=b, log=chunk,
                    cut_marker=views.CUT_MARKER.format(max_bytes=settings.builds.log_max_bytes))

    @bp.get("/partials/builds/<int:build_id>")
    def build_partial(build_id: int):
        b = views.build(store, settings, build_id)
        if b is None:
            return jsonify({"error": f"there is no build {build_id}"}), 404
        return page("status/_build.html", b=b)

    @bp.get("/builds/<int:build_id>/log.txt")
    def build_log_text(build_id: int):
        chunk = _chunk_or_404(build_id, 0)
        if isinstance(chunk, tuple):
            return chunk
        marker = views.CUT_MARKER.format(max_bytes=settings.builds.log_max_bytes) if chunk["cut"] else ""
        return Response(marker + chunk["text"], mimetype="text/plain")

    # --- login -----------------------------------------------------------------------------------------------
    @bp.get("/login")
    def login_form():
        return _login_page(request.args.get("next", "/"), None, 200)

    @bp.post("/login")
    def login():
        given = request.form.get("token", "")
        target = _safe_next(request.form.get("next", "/"))
        if token is None:
            return redirect(target, 303)
        if not hmac.compare_digest(given.encode(), token.encode()):
            log_event(log, "status.login_failed", "warning", "a login to the status page gave a wrong token",
                      remote=request.remote_addr)
            return _login_page(target, "That is not the read token.", 401)
        session.clear()
        session["reader"] = True
        session.permanent = True
        return redirect(target, 303)

    @bp.post("/logout")
    def logout():
        session.clear()
        return redirect("/login", 303)

    def _login_page(target: str, problem: str | None, status: int):
        return page("status/login.html", next=_safe_next(target), problem=problem), status

    # --- JSON ------------------------------------------------------------------------------------------------
    @bp.get("/api/overview")
    def api_overview():
        return jsonify(views.overview(store, settings))

    @bp.get("/api/repositories")
    def api_repositories():
        return jsonify({"repositories": views.repositories(store, settings)})

    @bp.get("/api/builds")
    def api_builds():
        limit = _int_arg("limit", 50, 1)
        if isinstance(limit, tuple):
            return limit
        status = request.args.get("status") or None
        if status is not None and status not in {s.value for s in BuildStatus}:
            return _bad(f"status must be one of {', '.join(s.value for s in BuildStatus)}")
        return jsonify({"builds": views.builds(store, settings, request.args.get("repo") or None,
                                               BuildStatus(status) if status else None, limit),
                        "limit": min(limit, views.MAX_LIMIT)})

    @bp.get("/api/builds/<int:build_id>")
    def api_build(build_id: int):
        b = views.build(store, settings, build_id)
        if b is None:
            return jsonify({"error": f"there is no build {build_id}"}), 404
        return jsonify(b)

    @bp.get("/api/builds/<int:build_id>/log")
    def api_build_log(build_id: int):
        offset = _int_arg("offset", 0, 0)
        if isinstance(offset, tuple):
            return offset
        chunk = _chunk_or_404(build_id, offset)
        return chunk if isinstance(chunk, tuple) else jsonify(chunk)

    @bp.get("/api/applies")
    def api_applies():
        limit = _int_arg("limit", 20, 1)
        if isinstance(limit, tuple):
            return limit
        return jsonify({"applies": views.applies(store, settings, limit), "limit": min(limit, views.MAX_LIMIT)})

    def _chunk_or_404(build_id: int, offset: int):
        try:
            return views.log_chunk(store, build_id, offset, settings.secret_values())
        except OperatorError:
            return jsonify({"error": f"there is no build {build_id}"}), 404

    # --- template helpers --------------------------------------------------------------------------------
    bp.add_app_template_filter(ago, "ago")
    bp.add_app_template_filter(duration, "duration")
    bp.add_app_template_filter(absolute, "absolute")
    return bp


def _int_arg(name: str, default: int, minimum: int):
    raw = request.args.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        return _bad(f"{name} must be a whole number")
    if value < minimum:
        return _bad(f"{name} must be {minimum} or more")
    return value


def _bad(message: str):
    return jsonify({"error": message}), 400


def _safe_next(target: str) -> str:
    """Only a path of this site: never another host (`//evil`, `/\\evil`, `https://...`)."""
    if not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    return target


def _epoch(iso: str | None) -> float | None:
    return None if not iso else datetime.fromisoformat(iso).timestamp()


def ago(iso: str | None, now: float) -> str:
    """`12 s ago`, `5 min ago`, `in 30 s`: the same words static/status.js writes when it refreshes."""
    ts = _epoch(iso)
    if ts is None:
        return ""
    delta = now - ts
    future = delta < 0
    s = abs(delta)
    if s < 5:
        return "just now"
    if s < 60:
        text = f"{int(s)} s"
    elif s < 3600:
        text = f"{int(s // 60)} min"
    elif s < 86400:
        text = f"{int(s // 3600)} h"
    else:
        text = f"{int(s // 86400)} d"
    return f"in {text}" if future else f"{text} ago"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"


def absolute(iso: str | None) -> str:
    """`2026-03-01 14:02:11 UTC`."""
    return "" if not iso else iso.replace("T", " ").replace("Z", " UTC")
