"""What the status page and its JSON API show, read from the state: plain dicts, the same for HTML and JSON.

Pure reads over a StateStore and the Settings: no Flask, no HTTP. Times are RFC 3339 in UTC. No value leaves here
with a secret in it: error texts and logs are masked with the configuration's secret values, and repositories are
named by their public address (a password in a remote's URL is dropped).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from polling_server.builds.source_fetch import github_web_url, public_url
from polling_server.config import RepositorySettings, Settings
from polling_server.git_process import scrub
from polling_server.planning.model import BuildKind, BuildStatus
from polling_server.state import ApplyRecord, BuildRecord, StateStore

MAX_LIMIT = 200
WAITING = (BuildStatus.QUEUED, BuildStatus.RUNNING, BuildStatus.AWAITING_APPROVAL)
# Shown where a log's beginning was dropped (a log keeps only its last builds.log_max_bytes).
CUT_MARKER = "[... earlier output was cut here: a build's log keeps its last {max_bytes} bytes ...]\n"


def rfc3339(ts: float | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _mask(text: str | None, secrets: Sequence[str]) -> str | None:
    return None if text is None else scrub(text, secrets)


def build_view(b: BuildRecord, settings: Settings) -> dict:
    """One build, as the state keeps it (times in RFC 3339), with its duration and its page."""
    ended = b.status not in WAITING
    duration = (b.finished_at - b.started_at) if ended and b.started_at and b.finished_at else None
    page = f"/builds/{b.id}"
    return {
        "id": b.id, "repo": b.repo, "kind": b.kind.value, "ref": b.ref, "sha": b.sha, "version": b.version,
        "status": b.status.value, "attempts": b.attempts, "max_attempts": b.max_attempts,
        "tags": list(b.pushed_tags), "digest": b.digest, "error": _mask(b.error, settings.secret_values()),
        "superseded_by": b.superseded_by,
        "created_at": rfc3339(b.created_at), "started_at": rfc3339(b.started_at),
        "finished_at": rfc3339(b.finished_at),
        "next_attempt_at": rfc3339(b.next_attempt_at) if b.status is BuildStatus.QUEUED else None,
        "duration_seconds": None if duration is None else round(max(duration, 0.0), 1),
        "url": f"{settings.http.public_url}{page}" if settings.http.public_url else page,
    }


def source_of(settings: Settings, repo: RepositorySettings) -> str:
    """Where the repository lives, without credentials."""
    return github_web_url(settings.github.api_url, repo.repo) if repo.repo else public_url(repo.url or "")


def repositories(store: StateStore, settings: Settings) -> list[dict]:
    """Each configured repository: branch, the head last seen, its last staging build and last release (each with
    its state), where its mutable tags point, and whether it is held."""
    rows = []
    for repo in settings.repositories:
        state = store.repo_state(repo.name)
        staging = store.latest_build(repo.name, BuildKind.STAGING, repo.branch)
        releases = store.builds(repo=repo.name, kind=BuildKind.RELEASE, limit=1)
        hold = store.hold(repo.name)
        rows.append({
            "name": repo.name, "source": source_of(settings, repo), "image": settings.image_ref(repo),
            "branch": repo.branch, "head": state.branch_head, "baseline": state.baseline,
            "last_staging": None if staging is None else build_view(staging, settings),
            "last_release": build_view(releases[0], settings) if releases else None,
            "tags": {tag: {"build_id": p.build_id, "sha": p.sha, "digest": p.digest, "version": p.version,
                           "moved_at": rfc3339(p.moved_at)}
                     for tag, p in sorted(store.tag_positions(repo.name).items())},
            "held": hold is not None,
            "approve_major": repo.approve_major,
        })
    return rows


def builds(store: StateStore, settings: Settings, repo: str | None = None, status: BuildStatus | None = None,
           limit: int = 50) -> list[dict]:
    """Builds newest first, optionally of one repository or in one state; at most MAX_LIMIT."""
    limit = max(1, min(limit, MAX_LIMIT))
    return [build_view(b, settings) for b in store.builds(repo=repo, status=status, limit=limit)]


def queue(store: StateStore, settings: Settings) -> list[dict]:
    """What runs and what waits to run, in the order the worker takes them (running first)."""
    running = store.builds(status=BuildStatus.RUNNING, limit=MAX_LIMIT)
    queued = sorted(store.builds(status=BuildStatus.QUEUED, limit=MAX_LIMIT), key=lambda b: (b.next_attempt_at, b.id))
    return [build_view(b, settings) for b in [*sorted(running, key=lambda b: b.id), *queued]]


def build(store: StateStore, settings: Settings, build_id: int) -> dict | None:
    """One build, or None when there is no such build."""
    try:
        record = store.build(build_id)
    except IndexError:
        return None
    return build_view(record, settings)


def log_chunk(store: StateStore, build_id: int, offset: int, secrets: Sequence[str]) -> dict:
    """A build's log from byte `offset`: the text, the offset to ask for next, whether the log is complete (the
    build has ended: nothing more will come) and whether text before the kept window was dropped (`cut`).

    OperatorError (from the store) when there is no such build."""
    text, next_offset, complete, cut = store.read_log(build_id, max(0, offset))
    if not complete:
        # A build that ended without a worker finishing its log (superseded while it waited, rejected) is done too.
        complete = store.build(build_id).status not in WAITING
    return {"build_id": build_id, "offset": max(0, offset), "text": scrub(text, secrets),
            "next_offset": next_offset, "complete": complete, "cut": cut}


def apply_view(a: ApplyRecord, settings: Settings) -> dict:
    return {
        "id": a.id, "request_id": a.request_id, "status": a.status, "attempts": a.attempts,
        "charts": [c.describe() for c in a.changes], "job": a.job, "job_state": a.job_state,
        "error": _mask(a.last_error, settings.secret_values()),
        "created_at": rfc3339(a.created_at), "accepted_at": rfc3339(a.accepted_at),
        "next_attempt_at": rfc3339(a.next_attempt_at) if a.status == "pending" else None,
    }


def applies(store: StateStore, settings: Settings, limit: int = 20) -> list[dict]:
    """Recent apply requests to the Helm API, newest first: the helm-api Job each started, and its last state."""
    return [apply_view(a, settings) for a in store.applies(limit=max(1, min(limit, MAX_LIMIT)))]


def controls(store: StateStore, settings: Settings) -> dict:
    """What operators decided: holds, rollbacks, and releases that wait for an approval."""
    holds = [{"repo": h.repo, "by": h.by, "since": rfc3339(h.at), "reason": h.reason, "rollback_id": h.rollback_id}
             for h in store.holds()]
    rollbacks = [{"id": r["id"], "repo": r["repo"], "tag": r["tag"], "by": r["by"], "at": rfc3339(r["at"]),
                  "from_build": r["from_build"], "from_sha": r["from_sha"], "from_digest": r["from_digest"],
                  "to_build": r["to_build"], "to_sha": r["to_sha"], "to_digest": r["to_digest"]}
                 for r in store.rollbacks(limit=20)]
    awaiting = [build_view(b, settings) for b in store.builds(status=BuildStatus.AWAITING_APPROVAL, limit=MAX_LIMIT)]
    return {"holds": holds, "rollbacks": rollbacks, "awaiting_approval": awaiting}


def overview(store: StateStore, settings: Settings, recent: int = 30) -> dict:
    """Everything the status page shows."""
    return {
        "repositories": repositories(store, settings),
        "queue": queue(store, settings),
        "recent_builds": builds(store, settings, limit=recent),
        "applies": applies(store, settings, limit=10),
        **controls(store, settings),
    }
