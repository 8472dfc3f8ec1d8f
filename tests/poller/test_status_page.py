"""The status page and its JSON API, through the daemon's real Flask application: what each answer says, who may
read it (the read token, as a bearer header or a session cookie), that every value is escaped and no secret is ever
in an answer, and that its static files ship with the package. The page in a real browser: test_status_browser.py.
"""

from __future__ import annotations

import re
import tomllib
from html import unescape
from pathlib import Path

import pytest

from polling_server.config import parse_settings
from polling_server.metrics import Metrics
from polling_server.planning.model import (
    BuildKind,
    BuildRequest,
    ChartChange,
    ChartPlan,
    ChartState,
    RepoPlan,
    RepoState,
)
from polling_server.state import StateStore
from polling_server.web.app import create_app
from tests.poller.build_helpers import enqueue

ROOT = Path(__file__).resolve().parents[2]
SHA = "0123456789abcdef0123456789abcdef01234567"
EVIL_BRANCH = "x<svg/onload=alert(1)>"
TOKEN = "read-token-5b7c9d2e"
SECRETS = {"REG_PW": "reg-pw-61e2f0", "GH": "ghp_3a4b5c6d", "HELM": "helm-tok-7e8f9a", "HOOK": "hook-secret-0b1c",
           "SLACK": "https://hooks.slack.example/services/T1/B2/slacksecret3", "READ": TOKEN}


def _settings(tmp_path, *, token: str | None = None, public_url: str | None = None):
    http = {"host": "127.0.0.1", "port": 0}
    if token:
        http["read_token"] = token
    if public_url:
        http["public_url"] = public_url
    return parse_settings({
        "state_path": str(tmp_path / "state.db"), "http": http,
        "registry": {"host": "registry.example:5000", "username": "ci", "password": "${REG_PW}"},
        "github": {"token": "${GH}"},
        "helm_api": {"url": "http://helm-api.example", "token": "${HELM}"},
        "chart_repository": {"url": "http://charts.example"},
        "webhooks": {"github_secret": "${HOOK}"},
        "notifications": [{"name": "team", "url": "${SLACK}"}],
        "builds": {"log_max_bytes": 4096},
        "repositories": [
            {"name": "app", "url": f"https://bot:{SECRETS['REG_PW']}@git.example/team/app.git", "image": "team/app",
             "branch": EVIL_BRANCH},
            {"repo": "acme/web", "image": "acme/web", "branch": "main", "approve_major": True},
        ],
    }, env=SECRETS)


@pytest.fixture
def store(tmp_path):
    s = StateStore(tmp_path / "state.db")
    yield s
    s.close()


def _client(settings, store):
    app = create_app(Metrics(), lambda: (True, {}), lambda: (True, {}), store=store, settings=settings)
    return app.test_client()


def _succeeded(store, repo="app", ref=EVIL_BRANCH, sha=SHA) -> int:
    build_id = enqueue(store, repo, sha, ref=ref)
    store.claim_build()
    store.append_log(build_id, f"Step 2/2 : RUN echo <b>{SECRETS['GH']}</b>\n<b>hello</b>\n", 4096)
    store.finish_build(build_id, [f"registry.example:5000/team/app:sha-{sha[:12]}"], "sha256:" + "d" * 64)
    store.complete_log(build_id)
    return build_id


def _populated(store) -> dict:
    """Something of everything the page shows, with secrets where a careless page would leak them."""
    ok = _succeeded(store)
    failed = enqueue(store, "acme/web", "f" * 40, ref="main")
    store.claim_build()
    store.fail_build(failed, f"PushFailed: auth {SECRETS['REG_PW']} refused by registry", None)
    store.record_tag_position("app", "staging", store.build(ok), store.build(ok).digest)
    gated = BuildRequest("acme/web", BuildKind.RELEASE, "v2.0.0", "e" * 40, "2.0.0", gated=True)
    (awaiting,) = store.save_poll("acme/web", RepoPlan((gated,), RepoState(True, "f" * 40, {"v2.0.0": "e" * 40}), ()))
    store.set_hold("acme/web", "alice", "bad <i>deploy</i>")
    running = enqueue(store, "app", "a" * 40, ref=EVIL_BRANCH)
    store.claim_build()
    store.append_log(running, "Step 1/2 : FROM base\n", 4096)
    apply = store.save_charts("http://charts.example", ChartPlan(
        (ChartChange("web", "1.4.2", "sha256:aa", "added"),), (), ChartState(True, {}), ()), None)
    store.apply_accepted(apply.id, "helmsman-cronjob-3f2a9c1b7e", "running")
    store.set_apply_job_state(apply.id, "succeeded")
    return {"ok": ok, "failed": failed, "awaiting": awaiting, "running": running, "apply": apply.id}


# --- what it shows --------------------------------------------------------------------------------------------
def test_the_overview_shows_repositories_queue_builds_applies_and_release_safety(tmp_path, store):
    ids = _populated(store)
    page = _client(_settings(tmp_path), store).get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    for section in ("release-safety", "repositories", "queue", "builds", "applies"):
        assert f'id="{section}"' in html
    assert f'href="/builds/{ids["ok"]}"' in html and "succeeded" in html
    assert "helmsman-cronjob-3f2a9c1b7e" in html and "web-1.4.2 (added)" in html
    assert "polling-server approve --repo acme/web --tag v2.0.0" in html
    assert "alice" in html and "bad &lt;i&gt;deploy&lt;/i&gt;" in html
    assert f"sha-{SHA[:12]}" in html and "sha256:ddddddddddd" in html
    assert 'data-refresh="/partials/overview"' in html  # the script refreshes this, not the whole page
    # Times both ways: relative on the page, absolute beside it, machine-readable in the attribute.
    assert re.search(r'<time datetime="\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"><span class="rel">(just now|\d+ s ago)</span>'
                     r'<span class="abs">\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC</span></time>', html)
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    partial = _client(_settings(tmp_path), store).get("/partials/overview").get_data(as_text=True)
    assert 'id="repositories"' in partial and "<html" not in partial


def test_values_are_escaped_and_headers_forbid_inline_script(tmp_path, store):
    build_id = _succeeded(store)
    client = _client(_settings(tmp_path), store)
    for path in ("/", f"/builds/{build_id}", "/partials/overview", f"/partials/builds/{build_id}"):
        answer = client.get(path)
        html = answer.get_data(as_text=True)
        assert "x&lt;svg/onload=alert(1)&gt;" in html, path
        assert "<svg" not in html and "<b>" not in html, path
        assert answer.headers["Content-Security-Policy"].startswith("default-src 'self'")
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert "<script>" not in html and not re.search(r"<[^>]*\son[a-z]+=", html), path  # no inline handler
    text = client.get(f"/builds/{build_id}/log.txt")
    assert text.mimetype == "text/plain" and "<b>hello</b>" in text.get_data(as_text=True)
    assert text.headers["X-Content-Type-Options"] == "nosniff"


def test_the_build_page_shows_the_build_and_its_log_and_follows_a_running_one(tmp_path, store):
    ids = _populated(store)
    client = _client(_settings(tmp_path), store)
    done = client.get(f"/builds/{ids['ok']}").get_data(as_text=True)
    assert 'data-complete="true"' in done and "&lt;b&gt;hello&lt;/b&gt;" in done
    running = client.get(f"/builds/{ids['running']}").get_data(as_text=True)
    assert 'data-complete="false"' in running and f'data-api="/api/builds/{ids["running"]}/log"' in running
    assert 'data-next-offset="21"' in running and "Step 1/2 : FROM base" in running
    assert client.get("/builds/9999").status_code == 404


def test_a_cut_log_says_so_where_it_was_cut(tmp_path, store):
    build_id = enqueue(store, "app", SHA, ref=EVIL_BRANCH)
    for i in range(400):
        store.append_log(build_id, f"output line {i:04d}\n", 4096)
    client = _client(_settings(tmp_path), store)
    chunk = client.get(f"/api/builds/{build_id}/log").get_json()
    assert chunk["cut"] is True and "output line 0000" not in chunk["text"]
    assert chunk["text"].endswith("output line 0399\n")
    marker = "[... earlier output was cut here: a build's log keeps its last 4096 bytes ...]"
    assert marker in unescape(client.get(f"/builds/{build_id}").get_data(as_text=True))
    assert client.get(f"/builds/{build_id}/log.txt").get_data(as_text=True).startswith(marker)


# --- the JSON API ---------------------------------------------------------------------------------------------
def test_api_builds_filters_caps_and_refuses_bad_parameters(tmp_path, store):
    ids = _populated(store)
    client = _client(_settings(tmp_path), store)
    everything = client.get("/api/builds").get_json()["builds"]
    assert [b["id"] for b in everything] == sorted(ids[k] for k in ("ok", "failed", "awaiting", "running"))[::-1]
    ok = client.get("/api/builds?repo=app&status=succeeded").get_json()["builds"]
    assert [b["id"] for b in ok] == [ids["ok"]]
    b = ok[0]
    assert (b["repo"], b["kind"], b["ref"], b["sha"], b["status"]) == ("app", "staging", EVIL_BRANCH, SHA, "succeeded")
    assert b["tags"] == [f"registry.example:5000/team/app:sha-{SHA[:12]}"] and b["digest"] == "sha256:" + "d" * 64
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", b["finished_at"]) and b["error"] is None
    assert client.get("/api/builds?limit=1000").get_json()["limit"] == 200
    assert len(client.get("/api/builds?limit=1").get_json()["builds"]) == 1
    for bad in ("limit=0", "limit=x", "status=bogus"):
        answer = client.get(f"/api/builds?{bad}")
        assert answer.status_code == 400 and "error" in answer.get_json(), bad
    assert client.get(f"/api/builds/{ids['failed']}").get_json()["error"].startswith("PushFailed")
    assert client.get("/api/builds/9999").status_code == 404


def test_api_log_reads_from_an_offset_and_says_when_it_is_complete(tmp_path, store):
    ids = _populated(store)
    client = _client(_settings(tmp_path), store)
    first = client.get(f"/api/builds/{ids['running']}/log?offset=0").get_json()
    assert first == {"build_id": ids["running"], "offset": 0, "text": "Step 1/2 : FROM base\n", "next_offset": 21,
                     "complete": False, "cut": False}
    store.append_log(ids["running"], "Step 2/2 : RUN echo hi\n", 4096)
    more = client.get(f"/api/builds/{ids['running']}/log?offset=21").get_json()
    assert more["text"] == "Step 2/2 : RUN echo hi\n" and more["next_offset"] == 44 and more["complete"] is False
    store.complete_log(ids["running"])
    assert client.get(f"/api/builds/{ids['running']}/log?offset=44").get_json()["complete"] is True
    # A build that ended without running (a gated release rejected) is complete too: nothing will come.
    store.decide_gated("acme/web", "v2.0.0", "bob", approve=False, reason="not now")
    assert client.get(f"/api/builds/{ids['awaiting']}/log").get_json()["complete"] is True
    assert client.get(f"/api/builds/{ids['running']}/log?offset=-5").status_code == 400
    assert client.get("/api/builds/9999/log").status_code == 404


def test_api_repositories_applies_and_overview(tmp_path, store):
    ids = _populated(store)
    client = _client(_settings(tmp_path), store)
    repos = {r["name"]: r for r in client.get("/api/repositories").get_json()["repositories"]}
    app = repos["app"]
    assert app["branch"] == EVIL_BRANCH and app["source"] == "https://git.example/team/app.git"
    assert app["last_staging"]["id"] == ids["running"] and app["last_staging"]["status"] == "running"
    assert app["tags"]["staging"]["build_id"] == ids["ok"]
    web = repos["acme/web"]
    assert web["held"] is True and web["source"] == "https://github.com/acme/web"
    assert web["last_release"]["id"] == ids["awaiting"] and web["last_release"]["status"] == "awaiting_approval"
    (apply,) = client.get("/api/applies").get_json()["applies"]
    assert (apply["id"], apply["job"], apply["job_state"], apply["status"]) == \
        (ids["apply"], "helmsman-cronjob-3f2a9c1b7e", "succeeded", "accepted")
    assert apply["charts"] == ["web-1.4.2 (added)"]
    overview = client.get("/api/overview").get_json()
    assert [h["repo"] for h in overview["holds"]] == ["acme/web"]
    assert [b["ref"] for b in overview["awaiting_approval"]] == ["v2.0.0"]
    assert [b["id"] for b in overview["queue"]] == [ids["running"]]


# --- no secret in any answer ----------------------------------------------------------------------------------
def test_no_secret_is_in_any_page_or_answer(tmp_path, store):
    ids = _populated(store)
    settings = _settings(tmp_path, token=TOKEN)
    client = _client(settings, store)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    paths = ["/", "/partials/overview", "/api/overview", "/api/repositories", "/api/builds", "/api/applies",
             "/login", "/assets/status.js", "/assets/status.css"]
    for build_id in ids.values():
        paths += [f"/builds/{build_id}", f"/partials/builds/{build_id}", f"/builds/{build_id}/log.txt",
                  f"/api/builds/{build_id}", f"/api/builds/{build_id}/log"]
    bodies = {p: client.get(p, headers=auth).get_data(as_text=True) for p in paths}
    assert "***" in bodies[f"/api/builds/{ids['ok']}/log"] and "***" in bodies[f"/api/builds/{ids['failed']}"]
    for path, body in bodies.items():
        for name, secret in SECRETS.items():
            assert secret not in body, f"{path} shows {name}"


# --- access ---------------------------------------------------------------------------------------------------
def test_with_a_read_token_every_page_and_answer_needs_it(tmp_path, store):
    build_id = _succeeded(store)
    client = _client(_settings(tmp_path, token=TOKEN), store)
    page = client.get("/")
    assert page.status_code == 401 and 'action="/login"' in page.get_data(as_text=True)
    assert EVIL_BRANCH not in page.get_data(as_text=True) and "x&lt;svg" not in page.get_data(as_text=True)
    for path in ("/api/builds", f"/api/builds/{build_id}/log", "/partials/overview", "/api/overview"):
        answer = client.get(path)
        assert answer.status_code == 401 and answer.headers["WWW-Authenticate"].startswith("Bearer"), path
        assert "x<svg" not in answer.get_data(as_text=True)
    assert client.get(f"/builds/{build_id}/log.txt").status_code == 401
    for wrong in ("Bearer nope", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN):
        assert client.get("/api/builds", headers={"Authorization": wrong}).status_code == 401, wrong
    right = client.get("/api/builds", headers={"Authorization": f"Bearer {TOKEN}"})
    assert right.status_code == 200 and right.get_json()["builds"][0]["id"] == build_id
    # The probes, the metrics and the static files keep their own rules.
    assert client.get("/healthz").status_code == 200 and client.get("/metrics").status_code == 200
    assert client.get("/assets/status.js").status_code == 200


def test_the_login_form_sets_a_strict_http_only_session_cookie(tmp_path, store):
    _succeeded(store)
    client = _client(_settings(tmp_path, token=TOKEN), store)
    wrong = client.post("/login", data={"token": "guess", "next": "/"})
    assert wrong.status_code == 401 and "That is not the read token." in wrong.get_data(as_text=True)
    assert "Set-Cookie" not in wrong.headers
    ok = client.post("/login", data={"token": TOKEN, "next": "/builds/1"})
    assert ok.status_code == 303 and ok.headers["Location"] == "/builds/1"
    cookie = ok.headers["Set-Cookie"]
    assert cookie.startswith("polling_server_session=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "Secure" not in cookie  # plain http here: a Secure cookie would never come back
    assert TOKEN not in cookie
    assert client.get("/").status_code == 200 and client.get("/api/builds").status_code == 200
    assert client.post("/logout").status_code == 303
    assert client.get("/api/builds").status_code == 401


@pytest.mark.parametrize(("how", "public_url", "kwargs"), [
    ("https request", None, {"base_url": "https://status.example"}),
    ("behind a proxy", None, {"headers": {"X-Forwarded-Proto": "https"}}),
    ("https public_url", "https://cd.example", {}),
])
def test_the_session_cookie_is_secure_over_https(tmp_path, store, how, public_url, kwargs):
    client = _client(_settings(tmp_path, token=TOKEN, public_url=public_url), store)
    answer = client.post("/login", data={"token": TOKEN}, **kwargs)
    assert answer.status_code == 303
    assert "; Secure" in answer.headers["Set-Cookie"], how


def test_a_new_token_ends_every_session_and_login_never_redirects_off_site(tmp_path, store):
    old = _client(_settings(tmp_path, token=TOKEN), store)
    assert old.post("/login", data={"token": TOKEN}).status_code == 303
    cookie = old.get_cookie("polling_server_session")
    rotated = _client(_settings(tmp_path, token="another-token-9f8e7d"), store)
    rotated.set_cookie("polling_server_session", cookie.value)
    assert rotated.get("/api/builds").status_code == 401
    for target in ("//evil.example/", "https://evil.example/", "/\\evil.example", "evil"):
        answer = old.post("/login", data={"token": TOKEN, "next": target})
        assert answer.headers["Location"] == "/", target


def test_without_a_read_token_the_page_is_open(tmp_path, store):
    _succeeded(store)
    client = _client(_settings(tmp_path), store)
    assert client.get("/").status_code == 200 and client.get("/api/builds").status_code == 200


# --- shipped with the package ---------------------------------------------------------------------------------
def test_the_templates_and_static_files_are_package_data():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["polling_server.web"]
    web = ROOT / "polling_server" / "web"
    shipped = {p for pattern in patterns for p in web.glob(pattern)}
    needed = {p for d in ("templates", "static") for p in (web / d).rglob("*") if p.is_file()}
    assert needed and needed <= shipped, sorted(str(p.relative_to(web)) for p in needed - shipped)
    html = (web / "templates" / "status" / "base.html").read_text()
    assert "http://" not in html and "https://" not in html  # no CDN: the page loads only what the daemon serves
