"""A GitHub-like API for the benchmarks: the events feed, `git/ref/heads/<branch>` and `git/matching-refs/tags`,
the organization feeds (`/users/{user}/events/orgs/{org}`, `/orgs/{org}/events`, with `/user` and
`/users/{owner}`), with ETags, 304 answers to a matching If-None-Match and `X-Poll-Interval`, shaped like the real
payloads in tests/fixtures/github.

`FakeGitHub` is the pure answering logic, on a clock of its own (so time can be simulated). It is served either
over real HTTP by a separate process (`python -m benchmarks.github_fake`, for measuring the client's CPU alone;
`POST /_push` moves a branch there), or in-process through a requests transport adapter (`in_process_http`, for
simulations that run hours in seconds). Pushes can be scheduled in advance, each with its event delayed or
dropped. With `record=True` every answer is kept as (time, route, path), so a benchmark can count requests
per window.
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from polling_server.http import HttpClient

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "github"
BRANCH = "master"
INITIAL_EVENTS = 30  # what a quiet repository's feed holds (the API's default page size)


def _sha(*parts: object) -> str:
    return hashlib.sha1("\0".join(map(str, parts)).encode()).hexdigest()  # noqa: S324 - a git-like id, not security


def _push_template() -> dict:
    return json.loads((FIXTURES / "events" / "PushEvent_post-2025-10_reduced.json").read_text())


@dataclass
class _Event:
    visible_at: float
    event_id: int
    head: str
    before: str


@dataclass
class _Repo:
    owner_name: str
    changes: list[tuple[float, str]] = field(default_factory=list)  # (time, new head), sorted by time
    events: list[_Event] = field(default_factory=list)  # sorted by visible_at (and so by id)
    tags: dict[str, str] = field(default_factory=dict)

    def head_at(self, now: float) -> str:
        i = bisect.bisect_right([t for t, _ in self.changes], now)
        return self.changes[i - 1][1]

    def visible_events(self, now: float) -> int:
        return bisect.bisect_right([e.visible_at for e in self.events], now)


class FakeGitHub:
    """Answers GET requests like api.github.com for a set of repositories `owner/name`."""

    def __init__(self, clock: Callable[[], float] = time.time, poll_interval: int = 60, *,
                 organizations: frozenset[str] | set[str] = frozenset(), user: str | None = "bench-user",
                 record: bool = False):
        self.clock = clock
        self.poll_interval = str(poll_interval)
        self.repos: dict[str, _Repo] = {}
        self.organizations = {o.lower() for o in organizations}  # owners that `/users/{owner}` calls organizations
        self.user = user  # the token's user (`GET /user`); None: an App token, which `/user` rejects
        self._next_id = 10_000_000
        self._template = _push_template()
        self._bodies: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self.counted = 0  # answers other than 304: they count against the rate limit
        self.not_modified = 0
        self.log: list[tuple[float, str, str]] | None = [] if record else None  # (time, route, path) answered

    # --- setting up ---------------------------------------------------------------------------------------
    def add_repo(self, owner_name: str, tags: int = 3, start: float = 0.0) -> None:
        repo = _Repo(owner_name)
        head = _sha(owner_name, "initial")
        repo.changes.append((float("-inf"), head))
        for k in range(INITIAL_EVENTS):  # an old history, already visible
            self._next_id += 1
            repo.events.append(_Event(float("-inf"), self._next_id, _sha(owner_name, "old", k), _sha(owner_name, k)))
        repo.events[-1].head = head
        repo.tags = {f"v1.0.{k}": _sha(owner_name, "tag", k) for k in range(tags)}
        self.repos[owner_name] = repo

    def schedule_pushes(self, pushes: list[tuple[str, float, str, float | None]]) -> None:
        """Pushes (repo, time, new head, event delay or None when the event is lost), applied as the clock
        passes them. Event ids follow the order the events become visible, as in the real feed."""
        for owner_name, at, head, _ in sorted(pushes, key=lambda p: p[1]):
            self.repos[owner_name].changes.append((at, head))
        visible = sorted((at + delay, owner_name, head, at) for owner_name, at, head, delay in pushes
                         if delay is not None)
        with self._lock:  # the HTTP server's threads may be answering meanwhile
            for visible_at, owner_name, head, at in visible:
                repo = self.repos[owner_name]
                self._next_id += 1
                repo.events.append(_Event(visible_at, self._next_id, head, repo.head_at(at - 1e-9)))

    def push_now(self, owner_name: str, head: str, event_delay: float | None = None) -> None:
        """Move the branch of `owner_name` to `head` at the fake's present time."""
        self.schedule_pushes([(owner_name, self.clock(), head, event_delay)])

    # --- answering ----------------------------------------------------------------------------------------
    def handle(self, path: str, headers: CaseInsensitiveDict | dict) -> tuple[int, dict[str, str], bytes]:
        now = self.clock()
        route, answer = self._route(path, headers, now)
        if self.log is not None:
            with self._lock:
                self.log.append((now, route, path))
        return answer

    def _route(self, path: str, headers, now: float) -> tuple[str, tuple[int, dict[str, str], bytes]]:
        parts = path.split("?", 1)[0].strip("/").split("/")
        given = headers.get("If-None-Match")
        if parts == ["user"]:
            if self.user is None:
                return "user", self._answer(403, {}, b'{"message":"Resource not accessible by integration"}')
            return "user", self._answer(200, {}, json.dumps({"login": self.user, "type": "User"}).encode())
        if len(parts) == 2 and parts[0] == "users":
            kind = "Organization" if parts[1].lower() in self.organizations else "User"
            return "owner", self._answer(200, {}, json.dumps({"login": parts[1], "type": kind}).encode())
        if (len(parts) == 5 and parts[0] == "users" and parts[2:4] == ["events", "orgs"] and self.user
                and parts[1] == self.user) or (len(parts) == 3 and parts[0] == "orgs" and parts[2] == "events"):
            org = parts[4] if parts[0] == "users" else parts[1]
            if org.lower() not in self.organizations:
                return "org_events", self._answer(404, {}, b'{"message":"Not Found"}')
            return "org_events", self._org_feed(org.lower(), given, now)
        if len(parts) < 4 or parts[0] != "repos" or f"{parts[1]}/{parts[2]}" not in self.repos:
            return "other", self._answer(404, {}, b'{"message":"Not Found"}')
        repo = self.repos[f"{parts[1]}/{parts[2]}"]
        rest = parts[3:]
        if rest == ["events"]:
            count = repo.visible_events(now)
            etag = f'W/"{_sha(repo.owner_name, count)}"'
            extra = {"X-Poll-Interval": self.poll_interval, "ETag": etag}
            if given == etag:
                return "repo_events", self._answer(304, extra, b"")
            return "repo_events", self._answer(200, extra, self._events_body(repo, count, etag))
        if rest[:3] == ["git", "ref", "heads"]:
            return "branch", self._branch(repo, given, now)
        if rest[:3] == ["git", "matching-refs", "tags"]:
            return "tags", self._tags(repo, given)
        return "other", self._answer(404, {}, b'{"message":"Not Found"}')

    def _branch(self, repo: _Repo, given: str | None, now: float) -> tuple[int, dict[str, str], bytes]:
        head = repo.head_at(now)
        etag = f'"{head}"'
        if given == etag:
            return self._answer(304, {"ETag": etag}, b"")
        body = {"ref": f"refs/heads/{BRANCH}", "node_id": "REF_x",
                "url": f"https://api.github.com/repos/{repo.owner_name}/git/refs/heads/{BRANCH}",
                "object": {"sha": head, "type": "commit",
                           "url": f"https://api.github.com/repos/{repo.owner_name}/git/commits/{head}"}}
        return self._answer(200, {"ETag": etag}, json.dumps(body).encode())

    def _tags(self, repo: _Repo, given: str | None) -> tuple[int, dict[str, str], bytes]:
        etag = f'"{_sha(sorted(repo.tags.items()))}"'
        if given == etag:
            return self._answer(304, {"ETag": etag}, b"")
        body = [{"ref": f"refs/tags/{n}", "node_id": "REF_t",
                 "url": f"https://api.github.com/repos/{repo.owner_name}/git/refs/tags/{n}",
                 "object": {"sha": s, "type": "commit",
                            "url": f"https://api.github.com/repos/{repo.owner_name}/git/commits/{s}"}}
                for n, s in sorted(repo.tags.items())]
        return self._answer(200, {"ETag": etag}, json.dumps(body).encode())

    def _org_feed(self, org: str, given: str | None, now: float) -> tuple[int, dict[str, str], bytes]:
        """The organization's feed: its repositories' visible events merged, newest first, one page of 100."""
        members = [r for name, r in self.repos.items() if name.split("/", 1)[0].lower() == org]
        counts = tuple(r.visible_events(now) for r in members)
        etag = f'W/"{_sha(org, counts)}"'
        extra = {"X-Poll-Interval": self.poll_interval, "ETag": etag}
        if given == etag:
            return self._answer(304, extra, b"")
        body = self._bodies.get(etag)
        if body is None:
            visible = ((ev, r) for r, n in zip(members, counts, strict=True) for ev in r.events[max(0, n - 100):n])
            newest = sorted(visible, key=lambda pair: pair[0].event_id, reverse=True)[:100]
            body = json.dumps([self._event_item(r, ev) for ev, r in newest]).encode()
            with self._lock:
                self._bodies[etag] = body
        return self._answer(200, extra, body)

    def _answer(self, status: int, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            if status == 304:
                self.not_modified += 1
            else:
                self.counted += 1
        headers = {**headers, "Content-Type": "application/json; charset=utf-8", "Content-Length": str(len(body)),
                   "x-ratelimit-limit": "5000", "x-ratelimit-remaining": "4999", "x-ratelimit-resource": "core"}
        return status, headers, body

    def _events_body(self, repo: _Repo, count: int, etag: str) -> bytes:
        cached = self._bodies.get(etag)
        if cached is not None:
            return cached
        # newest first, one page of 100
        page = [self._event_item(repo, ev) for ev in reversed(repo.events[max(0, count - 100):count])]
        body = json.dumps(page).encode()
        with self._lock:
            self._bodies[etag] = body
        return body

    def _event_item(self, repo: _Repo, ev: _Event) -> dict:
        item = dict(self._template)
        item["id"] = str(ev.event_id)
        item["repo"] = {"id": 1, "name": repo.owner_name, "url": f"https://api.github.com/repos/{repo.owner_name}"}
        item["payload"] = {"repository_id": 1, "push_id": ev.event_id, "ref": f"refs/heads/{BRANCH}",
                           "head": ev.head, "before": ev.before}
        return item


# --- in-process transport ------------------------------------------------------------------------------------
class _FakeAdapter(BaseAdapter):
    def __init__(self, github: FakeGitHub):
        super().__init__()
        self.github = github

    def send(self, request, **kwargs):  # noqa: ANN001 - requests' adapter signature
        u = urlsplit(request.url)
        status, headers, body = self.github.handle(u.path + (f"?{u.query}" if u.query else ""), request.headers)
        resp = requests.Response()
        resp.status_code = status
        resp.reason = {200: "OK", 304: "Not Modified", 403: "Forbidden", 404: "Not Found"}.get(status, "")
        resp.headers = CaseInsensitiveDict(headers)
        resp._content = body
        resp.encoding = "utf-8"
        resp.url = request.url
        resp.request = request
        return resp

    def close(self) -> None:
        pass


class _InProcessHttpClient(HttpClient):
    """The product's HttpClient (retries, headers) with its sessions' transport swapped for the fake."""

    def __init__(self, github: FakeGitHub, **kwargs):
        super().__init__(**kwargs)
        self._adapter = _FakeAdapter(github)

    def _session(self) -> requests.Session:
        s = super()._session()
        if not getattr(s, "_bench_fake", False):
            s.mount("http://", self._adapter)
            s.mount("https://", self._adapter)
            s._bench_fake = True
        return s


def in_process_http(github: FakeGitHub) -> HttpClient:
    return _InProcessHttpClient(github, timeout=10, max_retries=0)


# --- real HTTP, in a process of its own ----------------------------------------------------------------------
def serve(github: FakeGitHub, latency: float, port: int = 0) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as api.github.com
        disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path == "/_stats":
                status, headers, body = 200, {}, json.dumps(
                    {"counted": github.counted, "not_modified": github.not_modified}).encode()
            else:
                time.sleep(latency)
                status, headers, body = github.handle(self.path, self.headers)
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            if "Content-Length" not in headers:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            parts = self.path.strip("/").split("/")
            if len(parts) == 5 and parts[0] == "repos" and parts[3] == "statuses":
                # A commit status (POST /repos/{owner}/{repo}/statuses/{sha}): accepted, as GitHub does.
                time.sleep(latency)
                answer = b'{"state":"pending"}'
                self.send_response(201)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)
                return
            # Control, not GitHub: `{"repo": "o/r", "head": "<sha>"}` moves the branch now (its event is lost, so
            # only a webhook or a reconcile can tell).
            if self.path != "/_push":
                self.send_error(404)
                return
            data = json.loads(body or b"{}")
            github.push_now(data["repo"], data["head"], data.get("event_delay"))
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base class signature
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.request_queue_size = 1024
    return server


def repo_names(count: int) -> list[str]:
    return [f"bench/repo-{i:04d}" for i in range(count)]


def org_repo_names(count: int, orgs: int) -> list[str]:
    """`count` repositories dealt round-robin to `orgs` owners named org-00, org-01..."""
    return [f"org-{i % orgs:02d}/repo-{i:04d}" for i in range(count)]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Serve a GitHub-like API with N quiet repositories.")
    p.add_argument("--repos", type=int, required=True)
    p.add_argument("--latency-ms", type=float, default=20.0)
    args = p.parse_args(argv)
    github = FakeGitHub()
    for name in repo_names(args.repos):
        github.add_repo(name)
    server = serve(github, args.latency_ms / 1000.0)
    print(server.server_address[1], flush=True)
    # Stop when the parent closes our stdin (it exits or is done with us).
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdin.read()
    server.shutdown()


if __name__ == "__main__":
    main()
