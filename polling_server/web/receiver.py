"""The webhook receiver: a knock on the door, never the truth.

`POST /hooks/github`, `/hooks/gitlab`, `/hooks/gitea` and `/hooks/charts`. A delivery is verified (web/signatures.py),
parsed, matched to the configured repositories, and then only makes those repositories be polled now through the
ordinary sources (`poll_now`): the branch head and tags are read from the API or `git ls-remote` as on any poll,
so a signed but stale or replayed payload can never make the poller build a commit that is not on the branch.
Verification, one small database write (the delivery id, for deduplication) and a flag are all the work done on the
request thread, so the answer comes well within GitHub's 10 s. Triggers coalesce per repository: a repository due
now is due once, however many deliveries name it.

Answers: 202 accepted or ignored (with a short JSON body), 200 for `ping` and duplicates, 401 bad or missing
signature, 400 a body that is not a delivery, 404 a hook whose secret is not configured, 413 over 25 MB.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from polling_server.config import RepositorySettings, Settings
from polling_server.errors import StateError
from polling_server.logs import log_event
from polling_server.metrics import Metrics
from polling_server.state import StateStore
from polling_server.web.signatures import bearer, gitea_signature_valid, github_signature_valid, token_valid

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 25 * 1024 * 1024  # GitHub's own cap on a payload
_SCP_LIKE = re.compile(r"^(?:[^@/]+@)?([^:/]+):(.+)$")


class InvalidDelivery(ValueError):
    """The body is not a webhook delivery (not JSON, not an object, no repository)."""


@dataclass(frozen=True)
class HookAnswer:
    status: int
    body: dict
    outcome: str
    repositories: tuple[str, ...] = field(default=())


# --- pure parsing and matching -------------------------------------------------------------------------------
def parse_payload(body: bytes, content_type: str) -> dict:
    """The delivery's JSON object, from `application/json` or a form-encoded `payload=` field."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    text: str | bytes = body
    if ctype == "application/x-www-form-urlencoded":
        try:
            fields = parse_qs(body.decode("utf-8"), strict_parsing=False, max_num_fields=100)
        except (UnicodeDecodeError, ValueError) as e:
            raise InvalidDelivery("the form body cannot be read") from e
        if not fields.get("payload"):
            raise InvalidDelivery("the form body has no payload field")
        text = fields["payload"][0]
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise InvalidDelivery("the body is not JSON (or nests too deeply)") from e
    if not isinstance(data, dict):
        raise InvalidDelivery("the body is not a JSON object")
    return data


def clone_url_key(url: str) -> tuple[str, str, str] | None:
    """A clone URL reduced to (scheme, host[:port], path): no credentials, no trailing `.git` or `/`, lowercase host.

    `git@host:group/app.git` (scp-like) is ("ssh", host, "/group/app"). A local path gives None.
    """
    url = (url or "").strip()
    if not url:
        return None
    if "://" not in url:
        m = _SCP_LIKE.match(url)
        if not m or url.startswith("/"):
            return None
        host, path = m.group(1), "/" + m.group(2).lstrip("/")
        scheme = "ssh"
    else:
        p = urlsplit(url)
        if not p.hostname:
            return None
        host = p.hostname + (f":{p.port}" if p.port else "")
        path, scheme = p.path, p.scheme.lower()
        if scheme == "git+ssh":
            scheme = "ssh"
    path = re.sub(r"(\.git)?/*$", "", path) or "/"
    return scheme, host.lower(), path


def _ref_of(event: str, payload: Mapping) -> str | None:
    """The full ref a delivery names: `refs/heads/x` or `refs/tags/y`."""
    if event in ("create", "delete"):
        ref, ref_type = payload.get("ref"), payload.get("ref_type")
        if isinstance(ref, str) and ref_type in ("branch", "tag"):
            return f"refs/{'heads' if ref_type == 'branch' else 'tags'}/{ref}"
        return None
    ref = payload.get("ref")
    return ref if isinstance(ref, str) else None


def _wants(repo: RepositorySettings, ref: str | None) -> bool:
    return ref == f"refs/heads/{repo.branch}" or bool(ref and ref.startswith("refs/tags/") and len(ref) > 10)


def github_targets(event: str, payload: Mapping, repositories: Iterable[RepositorySettings]) -> tuple[list[str], str]:
    """The configured GitHub repositories this delivery asks to poll now, or [] with why not."""
    if event not in ("push", "create", "delete"):
        return [], f"event {event!r} is not a push, create or delete"
    full_name = (payload.get("repository") or {}).get("full_name") if isinstance(payload.get("repository"),
                                                                                 dict) else None
    if not isinstance(full_name, str):
        raise InvalidDelivery("the delivery names no repository.full_name")
    ref = _ref_of(event, payload)
    named = [r for r in repositories if r.repo and r.repo.lower() == full_name.lower()]
    if not named:
        return [], f"repository {full_name} is not configured"
    wanted = [r.name for r in named if _wants(r, ref)]
    return wanted, "" if wanted else f"ref {ref!r} is neither a watched branch nor a tag"


def git_targets(urls: Iterable[str], ref: str | None, repositories: Iterable[RepositorySettings]) -> tuple[list[str],
                                                                                                      str]:
    """The configured `url:` repositories whose clone URL is one of `urls` and that watch `ref`."""
    keys = {k for k in (clone_url_key(u) for u in urls if isinstance(u, str)) if k}
    if not keys:
        raise InvalidDelivery("the delivery names no repository clone URL")
    named = [r for r in repositories if r.url and clone_url_key(r.url) in keys]
    if not named:
        return [], "repository is not configured"
    wanted = [r.name for r in named if _wants(r, ref)]
    return wanted, "" if wanted else f"ref {ref!r} is neither a watched branch nor a tag"


def _mapping(value) -> dict:
    return value if isinstance(value, dict) else {}


def gitlab_targets(event: str, payload: Mapping, repositories) -> tuple[list[str], str]:
    if event not in ("Push Hook", "Tag Push Hook"):
        return [], f"event {event!r} is not a Push Hook or Tag Push Hook"
    project, repository = _mapping(payload.get("project")), _mapping(payload.get("repository"))
    urls = [project.get("git_http_url"), project.get("git_ssh_url"), project.get("web_url"),
            repository.get("git_http_url")]
    return git_targets([u for u in urls if u], payload.get("ref"), repositories)


def gitea_targets(event: str, payload: Mapping, repositories) -> tuple[list[str], str]:
    if event not in ("push", "create", "delete"):
        return [], f"event {event!r} is not a push, create or delete"
    repo = _mapping(payload.get("repository"))
    urls = [repo.get("clone_url"), repo.get("ssh_url"), repo.get("html_url")]
    return git_targets([u for u in urls if u], _ref_of(event, payload), repositories)


# --- the receiver ---------------------------------------------------------------------------------------------
class WebhookReceiver:
    def __init__(self, settings: Settings, store: StateStore, metrics: Metrics, poll_now: Callable[[str], None],
                 poll_charts_now: Callable[[], None] | None = None):
        self.settings = settings
        self.hooks = settings.webhooks
        self.store = store
        self.metrics = metrics
        self.poll_now = poll_now
        self.poll_charts_now = poll_charts_now

    def _answer(self, provider: str, outcome: str, status: int, body: dict, repos: Iterable[str] = ()) -> HookAnswer:
        self.metrics.webhook_deliveries.labels(provider, outcome).inc()
        return HookAnswer(status, body, outcome, tuple(repos))

    def _seen(self, key: str | None) -> bool:
        """True for a delivery id already recorded. Best effort: if the state cannot be written, coalescing
        per repository still keeps a redelivery from doing more than one poll."""
        if not key:
            return False
        try:
            return not self.store.record_delivery(key)
        except StateError as e:
            log.warning("cannot record webhook delivery %s: %s", key, e)
            return False

    def _trigger(self, provider: str, names: list[str], why: str, delivery: str | None, event: str) -> HookAnswer:
        if not names:
            log_event(log, "webhook.ignored", "debug", provider=provider, hook_event=event, delivery=delivery,
                      reason=why)
            return self._answer(provider, "ignored", 202, {"accepted": False, "reason": why})
        for name in names:
            self.poll_now(name)
        log_event(log, "webhook.accepted", provider=provider, hook_event=event, delivery=delivery, repos=names)
        return self._answer(provider, "accepted", 202, {"accepted": True, "repositories": names}, names)

    def _receive(self, provider: str, secrets: tuple, verified: bool, event: str, delivery: str | None,
                 body: bytes, content_type: str,
                 targets: Callable[[dict], tuple[list[str], str]]) -> HookAnswer:
        """The one flow of every git host's hook: configured? verified? a delivery? seen? then trigger."""
        if not secrets:
            return self._answer(provider, "not_configured", 404, {"error": "not found"})
        if not verified:
            return self._answer(provider, "bad_signature", 401, {"error": "bad or missing signature"})
        try:
            payload = parse_payload(body, content_type)
            if provider == "github" and event == "ping":
                return self._answer(provider, "accepted", 200, {"ok": True, "zen": str(payload.get("zen", ""))})
            names, why = targets(payload)
        except InvalidDelivery as e:
            return self._answer(provider, "invalid", 400, {"error": str(e)})
        if self._seen(f"{provider}:{delivery}" if delivery else None):
            return self._answer(provider, "duplicate", 200, {"accepted": False, "duplicate": True})
        return self._trigger(provider, names, why, delivery, event)

    def github(self, body: bytes, headers: Mapping[str, str]) -> HookAnswer:
        secrets = self.hooks.github_secrets
        event = headers.get("X-GitHub-Event", "")
        return self._receive(
            "github", secrets, github_signature_valid(body, headers.get("X-Hub-Signature-256"), secrets), event,
            headers.get("X-GitHub-Delivery"), body, headers.get("Content-Type", ""),
            lambda payload: github_targets(event, payload, self.settings.repositories))

    def gitlab(self, body: bytes, headers: Mapping[str, str]) -> HookAnswer:
        tokens = self.hooks.gitlab_tokens
        event = headers.get("X-Gitlab-Event", "")
        return self._receive(
            "gitlab", tokens, token_valid(headers.get("X-Gitlab-Token"), tokens), event,
            headers.get("Idempotency-Key") or headers.get("X-Gitlab-Event-UUID"), body,
            headers.get("Content-Type", ""), lambda payload: gitlab_targets(event, payload, self.settings.repositories))

    def gitea(self, body: bytes, headers: Mapping[str, str]) -> HookAnswer:
        secrets = self.hooks.gitea_secrets
        event = headers.get("X-Gitea-Event", "")
        return self._receive(
            "gitea", secrets, gitea_signature_valid(body, headers.get("X-Gitea-Signature"), secrets), event,
            headers.get("X-Gitea-Delivery"), body, headers.get("Content-Type", ""),
            lambda payload: gitea_targets(event, payload, self.settings.repositories))

    def charts(self, headers: Mapping[str, str]) -> HookAnswer:
        if not self.hooks.charts_tokens or self.poll_charts_now is None:
            return self._answer("charts", "not_configured", 404, {"error": "not found"})
        if not token_valid(bearer(headers.get("Authorization")), self.hooks.charts_tokens):
            return self._answer("charts", "bad_signature", 401, {"error": "bad or missing token"})
        self.poll_charts_now()
        log_event(log, "webhook.accepted", provider="charts", hook_event="chart push")
        return self._answer("charts", "accepted", 202, {"accepted": True})
