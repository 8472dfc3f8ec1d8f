"""What to report of a change, as outbox items: pure (no I/O), from a record, what was reported of it before, and
the settings.

A build's new status becomes at most one commit status (GitHub repositories only, when statuses are on) and one
notification per target whose `events` include the event. Event names are the log's own, one meaning each (EVENTS,
also the README's table). Dedupe keys make each at most once per change: `status:<build>:<phase>` for a commit
status, `notify:<target>:<build>:<event>` for a notification (`notify:<target>:apply:<id>:<event>`,
`notify:<target>:rollback:<id>` for applies and rollbacks). A retried build goes queued -> running -> queued again:
one `pending` phase, so one pending status.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from polling_server.config import RepositorySettings, Settings
from polling_server.git_process import scrub
from polling_server.planning.model import BuildKind, BuildStatus
from polling_server.state import ApplyRecord, BuildRecord, OutboxItem

COMMIT_STATUS = "commit_status"
NOTIFICATION = "notification"
MAX_DESCRIPTION = 140  # GitHub refuses a longer commit status description (422)
MAX_ERROR_IN_NOTIFICATION = 500
MAX_CHARTS_IN_NOTIFICATION = 20

EVENTS: Mapping[str, str] = {
    "build.planned": "a build was planned (queued, or started): commit status `pending`; notified only if asked",
    "build.succeeded": "a build pushed its image: status `success` listing the pushed tags",
    "build.failed": "a build failed its last attempt (a failed attempt that will be retried is not this): "
                    "status `failure` with the reason",
    "build.superseded": "a build will not finish because a newer build of its branch or tag was planned: "
                        "status `error` naming the newer commit",
    "release.awaiting_approval": "a release waits for `polling-server approve`: status `pending` saying so",
    "release.rejected": "a release waiting for approval was rejected (or its tag deleted): status `error`",
    "rollback": "an operator rolled a mutable tag back (`polling-server rollback`); the repository is held",
    "apply.requested": "helm-api accepted an apply request and named the Job that runs helmsman",
    "apply.failed": "helm-api refused an apply request for good (a configuration problem: URL or token)",
    "apply.job_succeeded": "the helmsman Job of an apply ended Complete",
    "apply.job_failed": "the helmsman Job of an apply ended Failed",
    "apply.job_unknown": "the helmsman Job of an apply was gone before it was seen to end (deleted, or its TTL)",
}  # the same names as config.NOTIFICATION_EVENTS, which a target's `events` are checked against

# A build's status -> (event, commit status phase, GitHub state).
_BUILD_REPORTS: Mapping[BuildStatus, tuple[str, str, str]] = {
    BuildStatus.QUEUED: ("build.planned", "pending", "pending"),
    BuildStatus.RUNNING: ("build.planned", "pending", "pending"),
    BuildStatus.AWAITING_APPROVAL: ("release.awaiting_approval", "awaiting_approval", "pending"),
    BuildStatus.SUCCEEDED: ("build.succeeded", "succeeded", "success"),
    BuildStatus.FAILED: ("build.failed", "failed", "failure"),
    BuildStatus.SUPERSEDED: ("build.superseded", "superseded", "error"),
    BuildStatus.REJECTED: ("release.rejected", "rejected", "error"),
}
_APPLY_EVENTS: Mapping[str, str] = {
    "queued": "apply.requested", "running": "apply.requested", "succeeded": "apply.job_succeeded",
    "failed": "apply.job_failed", "unknown": "apply.job_unknown",
}
FINAL_JOB_STATES = frozenset({"succeeded", "failed", "unknown"})


def statuses_enabled(settings: Settings) -> bool:
    """`github.commit_statuses`, or, when unset, whether a token is configured (statuses need one)."""
    gh = settings.github
    return bool(gh.token) if gh.commit_statuses is None else gh.commit_statuses


def cut(text: str, limit: int = MAX_DESCRIPTION) -> str:
    """`text` on one line, at most `limit` characters (an ellipsis says it was cut)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def short(sha: str | None) -> str:
    return (sha or "")[:7]


def status_key_prefix(build_id: int) -> str:
    """The dedupe keys of one build's commit statuses start so: a newer one makes an older unsent one moot."""
    return f"status:{build_id}:"


def _rfc3339(ts: float | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _link(settings: Settings, path: str) -> str | None:
    return f"{settings.http.public_url}{path}" if settings.http.public_url else None


def _what(build: BuildRecord) -> str:
    return f"release {build.ref}" if build.kind is BuildKind.RELEASE else f"staging build of {build.ref}"


def notification_items(settings: Settings, event: str, subject: str, fields: Mapping[str, Any],
                       summary: str) -> list[OutboxItem]:
    """One notification per target that asked for `event`; `subject` makes the dedupe key (`<build id>`,
    `apply:<id>`, `rollback:<id>`)."""
    items = []
    for target in settings.notifications:
        if event not in target.events:
            continue
        key = f"notify:{target.name}:{subject}" + ("" if event == "rollback" else f":{event}")
        payload = {"id": key, "event": event, "summary": summary, **fields}
        items.append(OutboxItem(NOTIFICATION, target.name, key, payload))
    return items


def build_items(settings: Settings, build: BuildRecord, previous: str | None,
                superseding: BuildRecord | None = None,
                repo: RepositorySettings | None = None) -> list[OutboxItem]:
    """What to report now that `build` is in its status, `previous` being the status last reported of it.

    `superseding`: the build that overtook it (for a superseded build). `repo`: its settings (None when it is no
    longer configured: no commit status then)."""
    event, phase, state = _BUILD_REPORTS[build.status]
    if build.status is BuildStatus.SUPERSEDED and previous == BuildStatus.FAILED.value:
        return []  # its failure was reported; a newer plan overtaking it changes nothing of that commit
    secrets = settings.secret_values()
    error = scrub(build.error, secrets) if build.error else None
    link = _link(settings, f"/builds/{build.id}")
    head = f"{build.repo}: {_what(build)} #{build.id} at {short(build.sha)}"
    tags = ", ".join(build.pushed_tags)
    if build.status is BuildStatus.AWAITING_APPROVAL:
        description = f"awaiting approval: polling-server approve --repo {build.repo} --tag {build.ref}"
        summary = f"{head} awaits approval: polling-server approve --repo {build.repo} --tag {build.ref}"
    elif build.status in (BuildStatus.QUEUED, BuildStatus.RUNNING):
        description = "building" if build.status is BuildStatus.RUNNING else "queued"
        summary = f"{head} {'started' if build.status is BuildStatus.RUNNING else 'queued'}"
    elif build.status is BuildStatus.SUCCEEDED:
        # The tag names only (`:sha-3f2a9c1e8b7d`): the registry and image would eat GitHub's 140 characters.
        names = ", ".join(f":{t.rsplit(':', 1)[-1]}" for t in build.pushed_tags)
        description = f"pushed {names}" if names else "built and pushed"
        summary = f"{head} succeeded" + (f", pushed {tags}" if tags else "")
    elif build.status is BuildStatus.FAILED:
        attempts = f" after {build.attempts} attempts" if build.attempts > 1 else ""
        description = f"failed{attempts}: {error or 'no reason recorded'}"
        summary = f"{head} failed{attempts}: {cut(error or 'no reason recorded', MAX_ERROR_IN_NOTIFICATION)}"
    elif build.status is BuildStatus.SUPERSEDED:
        newer = f" ({short(superseding.sha)}, build #{superseding.id})" if superseding else ""
        description = f"superseded by {short(superseding.sha)}" if superseding else "superseded by a newer build"
        summary = f"{head} was superseded by a newer build of {build.ref}{newer}"
    else:  # rejected
        description = f"release rejected: {error or 'no reason recorded'}"
        summary = f"{head} was rejected: {cut(error or 'no reason recorded', MAX_ERROR_IN_NOTIFICATION)}"

    items: list[OutboxItem] = []
    same_commit = superseding is not None and superseding.sha == build.sha
    if repo is not None and repo.repo and statuses_enabled(settings) and not same_commit:
        # A newer build of the same commit reports on it itself: an `error` here would hide its status.
        payload = {"repo": repo.repo, "sha": build.sha, "state": state, "description": cut(description),
                   "context": f"{settings.github.status_context_prefix}/{build.kind.value}"}
        if link:
            payload["target_url"] = link
        items.append(OutboxItem(COMMIT_STATUS, repo.repo, f"{status_key_prefix(build.id)}{phase}", payload))
    fields = {
        "repo": build.repo, "build": build.id, "kind": build.kind.value, "ref": build.ref, "sha": build.sha,
        "version": build.version, "status": build.status.value, "attempts": build.attempts,
        "tags": list(build.pushed_tags), "digest": build.digest,
        "error": cut(error, MAX_ERROR_IN_NOTIFICATION) if error else None,
        "superseded_by": superseding.id if superseding else None,
        "superseded_by_sha": superseding.sha if superseding else None,
        "url": link, "at": _rfc3339(build.finished_at or build.started_at or build.created_at),
    }
    return items + notification_items(settings, event, str(build.id), fields, summary)


def _charts(apply: ApplyRecord) -> list[str]:
    return [c.describe() for c in apply.changes[:MAX_CHARTS_IN_NOTIFICATION]]


def _apply_fields(settings: Settings, apply: ApplyRecord, now: float) -> dict[str, Any]:
    more = len(apply.changes) - MAX_CHARTS_IN_NOTIFICATION
    return {"apply": apply.id, "request_id": apply.request_id, "job": apply.job, "job_state": apply.job_state,
            "charts": _charts(apply) + ([f"and {more} more"] if more > 0 else []),
            "url": _link(settings, "/"), "at": _rfc3339(now)}


def _charts_text(apply: ApplyRecord) -> str:
    names = _charts(apply)
    more = len(apply.changes) - len(names)
    return ", ".join(names) + (f" and {more} more" if more > 0 else "") if names else "no chart change"


def apply_items(settings: Settings, apply: ApplyRecord, now: float) -> list[OutboxItem]:
    """Notifications for an accepted apply whose Job state changed (accepted, then how helmsman ended)."""
    event = _APPLY_EVENTS.get(apply.job_state or "")
    if event is None:
        return []
    charts = _charts_text(apply)
    summary = {
        "apply.requested": f"helmsman apply requested: Job {apply.job} {apply.job_state} ({charts})",
        "apply.job_succeeded": f"helmsman Job {apply.job} succeeded ({charts})",
        "apply.job_failed": f"helmsman Job {apply.job} failed ({charts})",
        "apply.job_unknown": f"helmsman Job {apply.job} was gone before it was seen to end ({charts})",
    }[event]
    return notification_items(settings, event, f"apply:{apply.id}", _apply_fields(settings, apply, now), summary)


def rejected_apply_items(settings: Settings, apply: ApplyRecord, now: float) -> list[OutboxItem]:
    """Notifications for an apply request the Helm API refused for good (once per request)."""
    if apply.status != "rejected":
        return []
    error = scrub(apply.last_error or "no reason recorded", settings.secret_values())
    fields = {**_apply_fields(settings, apply, now), "error": cut(error, MAX_ERROR_IN_NOTIFICATION)}
    summary = f"the Helm API refused the apply request ({_charts_text(apply)}): {fields['error']}"
    return notification_items(settings, "apply.failed", f"apply:{apply.id}", fields, summary)


def rollback_items(settings: Settings, rollback: Mapping[str, Any]) -> list[OutboxItem]:
    """Notifications for one row of the rollbacks table (`StateStore.rollbacks()`)."""
    was = f" (was {short(rollback['from_sha'])})" if rollback.get("from_sha") else ""
    summary = (f"{rollback['repo']}: :{rollback['tag']} rolled back to {short(rollback['to_sha'])} "
               f"(build #{rollback['to_build']}){was} by {rollback['by']}; its tags stay held until unhold")
    fields = {"rollback": rollback["id"], "repo": rollback["repo"], "tag": rollback["tag"], "by": rollback["by"],
              "from_sha": rollback.get("from_sha"), "to_sha": rollback["to_sha"], "to_build": rollback["to_build"],
              "to_digest": rollback["to_digest"], "url": _link(settings, f"/builds/{rollback['to_build']}"),
              "at": _rfc3339(rollback["at"])}
    return notification_items(settings, "rollback", f"rollback:{rollback['id']}", fields, summary)
