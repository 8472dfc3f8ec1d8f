"""Loads and validates the poller's YAML configuration, once, into frozen dataclasses.

`${VAR}` (or `${VAR:-default}`) in any string value is expanded from the environment: that is how secrets get in.
A value that is exactly one `${...}` is read, once expanded, as a YAML scalar where the key wants a number or a
boolean (`${POLL:-30}` is 30.0); keys read as strings (secrets among them) keep the expansion as it is.
Every error names the file, the key path (e.g. `repositories[2].branch`) and what is wrong. Nothing else in the
poller reads os.environ. Secrets are held as `Secret`, whose repr is masked, so a logged Settings leaks nothing.
A mapping that gives one key twice is an error too (YAML itself would keep the last one silently).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

from polling_server.errors import ConfigError

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# GitHub logins: letters, digits and hyphens, not at either end; `_` appears in Enterprise Managed Users
# (`name_corp`). Repository names: letters, digits, `.`, `-`, `_` (but `.` and `..` would walk the API's paths).
_GITHUB_OWNER = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_-]{0,98}[A-Za-z0-9])?$")
_GITHUB_NAME = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
_IMAGE = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$")
# Characters git never allows in a ref (refs.c: controls, space, DEL and ~ ^ : ? * [ \).
_REF_FORBIDDEN_CHAR = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_REGISTRY_HOST = re.compile(rf"^(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::(\d{{1,5}}))?$")


class Secret(str):
    """A string whose repr is masked; str() still gives the value (for headers and auth)."""

    def __repr__(self) -> str:
        return "'***'"


@dataclass(frozen=True)
class GitHubSettings:
    api_url: str = "https://api.github.com"
    token: Secret | None = None
    timeout_seconds: float = 10.0
    max_retries: int = 3
    backoff_seconds: float = 1.0
    rate_limit_backoff_seconds: float = 60.0
    max_requests_per_minute: float = 600.0  # points (GET 1, POST 5); GitHub's secondary limit is 900
    max_concurrent_requests: int = 10  # across all GitHub work; GitHub's limit is 100
    org_feeds: bool = False
    commit_statuses: bool | None = None  # None: on when a token is configured
    status_context_prefix: str = "helmsman-cd"


@dataclass(frozen=True)
class RegistrySettings:
    host: str = ""
    username: str | None = None
    password: Secret | None = None
    insecure: bool = False  # plain HTTP to a non-loopback registry (inside a cluster); loopback is always HTTP


@dataclass(frozen=True)
class BuildSettings:
    concurrency: int = 1
    timeout_seconds: float = 1800.0
    retries: int = 2
    retry_backoff_seconds: float = 30.0
    workdir: str | None = None
    max_source_bytes: int = 2 << 30  # the expanded source tree of one build (a GitHub tarball)
    log_max_bytes: int = 2 << 20  # each build's log keeps its last 2 MiB
    keep: int = 200  # builds kept per repository (with their logs); never one a tag, hold or rollback names
    backend: str = "docker"  # docker | kubernetes
    kubernetes: KubernetesBuildSettings | None = None


@dataclass(frozen=True)
class KubernetesBuildSettings:
    """`builds.kubernetes`: each build is one Job running rootless BuildKit in `namespace`."""

    namespace: str = "cd-builds"
    image: str = "moby/buildkit:v0.33.1-rootless"
    init_image: str = "alpine/git:v2.54.0"
    resources: Mapping[str, Any] = field(default_factory=dict)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    docker_config_secret: str = "registry-push"  # noqa: S105 - the name of a kubernetes.io/dockerconfigjson Secret
    source_token_secret: str | None = None  # a Secret with key `token`, for private sources
    ttl_seconds_after_finished: int = 3600


@dataclass(frozen=True)
class GitSettings:
    """`url:` repositories: how long one `git ls-remote` may take, and how many refs it may list."""

    ls_remote_timeout_seconds: float = 60.0
    max_refs: int = 100000


@dataclass(frozen=True)
class ChartRepositorySettings:
    url: str
    username: str | None = None
    password: Secret | None = None
    token: Secret | None = None
    charts: tuple[str, ...] = ()
    poll_interval_seconds: float = 60.0
    timeout_seconds: float = 30.0


@dataclass(frozen=True)
class HelmApiSettings:
    url: str
    token: Secret | None = None
    timeout_seconds: float = 10.0
    retry_backoff_seconds: float = 5.0
    max_backoff_seconds: float = 300.0

    def fingerprint(self) -> str:
        """Changes when the URL or token changes: a rejected apply is retried only then."""
        return hashlib.sha256(f"{self.url}\0{self.token or ''}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class HttpSettings:
    enabled: bool = True
    host: str = "0.0.0.0"
    port: int = 8081
    read_token: Secret | None = None  # when set, the status page and its API need it
    public_url: str | None = None  # where people reach the page (links in statuses and notifications)


# What a notification target may ask for in `events` (their meanings: notify/messages.py and the README).
NOTIFICATION_EVENTS = (
    "build.planned", "build.succeeded", "build.failed", "build.superseded", "release.awaiting_approval",
    "release.rejected", "rollback", "apply.requested", "apply.failed", "apply.job_succeeded", "apply.job_failed",
    "apply.job_unknown",
)


@dataclass(frozen=True)
class NotificationTarget:
    """One place notifications go: `url` is a secret (from the environment); `events` are log event names."""

    name: str
    url: Secret
    format: str = "slack"  # slack | json
    events: tuple[str, ...] = ()
    secret: Secret | None = None  # json: HMAC-SHA256 of the body in X-Signature-256


@dataclass(frozen=True)
class WebhookSettings:
    """Secrets of the webhook receiver; a hook whose secret is not set answers 404. `port`: a listener of its own."""

    github_secrets: tuple[Secret, ...] = ()
    gitlab_tokens: tuple[Secret, ...] = ()
    gitea_secrets: tuple[Secret, ...] = ()
    charts_tokens: tuple[Secret, ...] = ()
    host: str = "0.0.0.0"
    port: int | None = None


@dataclass(frozen=True)
class RepositorySettings:
    name: str
    image: str
    repo: str | None = None
    url: str | None = None
    branch: str = "master"
    dockerfile: str = "Dockerfile"
    context: str = "."
    build_args: Mapping[str, str] = field(default_factory=dict)
    floating_tags: bool = False
    initial_build: bool = False
    approve_major: bool = False  # a new major release waits for `polling-server approve`
    backend: str | None = None  # overrides builds.backend for this repository
    platforms: tuple[str, ...] = ()  # kubernetes backend: multi-arch (linux/amd64, linux/arm64)
    cache: str | None = None  # kubernetes backend: "registry" (a :buildcache tag)
    build_secrets: Mapping[str, str] = field(default_factory=dict)  # kubernetes backend: id -> Secret name

    @property
    def kind(self) -> str:
        return "github" if self.repo else "git"


@dataclass(frozen=True)
class Settings:
    source_file: str
    state_path: str
    repositories: tuple[RepositorySettings, ...]
    poll_interval_seconds: float = 60.0
    reconcile_interval_seconds: float = 600.0
    max_concurrent_polls: int = 16
    log_format: str = "text"
    github: GitHubSettings = field(default_factory=GitHubSettings)
    git: GitSettings = field(default_factory=GitSettings)
    registry: RegistrySettings = field(default_factory=RegistrySettings)
    builds: BuildSettings = field(default_factory=BuildSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    notifications: tuple[NotificationTarget, ...] = ()
    chart_repository: ChartRepositorySettings | None = None
    helm_api: HelmApiSettings | None = None

    def repository(self, name: str) -> RepositorySettings:
        for r in self.repositories:
            if r.name == name:
                return r
        raise KeyError(name)

    def image_ref(self, repo: RepositorySettings) -> str:
        """The image reference without tag: `<registry.host>/<image>` (or `<image>` when no host is set)."""
        return f"{self.registry.host.rstrip('/')}/{repo.image}" if self.registry.host else repo.image

    def secret_values(self) -> tuple[str, ...]:
        """Every secret value of the configuration, longest first: what build logs and the status page mask.

        The registry password, the GitHub token, the chart repository's and helm-api's credentials, the webhook
        secrets, notification URLs (the URL is the secret) and their signing secrets, http.read_token, and a
        password (or a lone user name, often a token) written into a repository's `url:`.
        """
        found: list[str | None] = [self.registry.password, self.github.token, self.http.read_token]
        if self.chart_repository is not None:
            found += [self.chart_repository.password, self.chart_repository.token]
        if self.helm_api is not None:
            found.append(self.helm_api.token)
        w = self.webhooks
        found += [*w.github_secrets, *w.gitlab_tokens, *w.gitea_secrets, *w.charts_tokens]
        for n in self.notifications:
            found += [n.url, n.secret]
            parts = urlsplit(str(n.url))
            found.append(parts.path + (f"?{parts.query}" if parts.query else "") if len(parts.path) > 8 else None)
        for r in self.repositories:
            parts = urlsplit(r.url or "")
            if parts.scheme and parts.netloc and "@" in parts.netloc:
                found.append(parts.password if parts.password is not None else parts.username)
        values = {str(v) for v in found if v}
        values |= {unquote(v) for v in values}  # as written in a URL, and as sent
        return tuple(sorted(values, key=lambda v: (-len(v), v)))


# --- validation ------------------------------------------------------------------------------------------
class _Reader:
    """Walks one mapping of the YAML document, checking keys and types, with the path for error messages."""

    def __init__(self, source: str, path: str, data: Any, env: Mapping[str, str]):
        self.source, self.path, self.env = source, path, env
        if not isinstance(data, dict):
            self.fail(f"must be a mapping, got {type(data).__name__}")
        self.data = data
        self.used: set[str] = set()

    def fail(self, msg: str, key: str | None = None):
        where = f"{self.path}.{key}" if key and self.path else (key or self.path or "(top level)")
        raise ConfigError(f"{self.source}: {where}: {msg}")

    def _expand(self, key: str, value: Any) -> Any:
        if not isinstance(value, str):
            return value

        def sub(m: re.Match) -> str:
            var, default = m.group(1), m.group(2)
            if var in self.env:
                return self.env[var]
            if default is not None:
                return default
            self.fail(f"environment variable {var} is not set", key)
            return ""

        return _VAR.sub(sub, value)

    def get(self, key: str, kind: type | tuple, default: Any = ..., check: Callable[[Any], str | None] = None):
        self.used.add(key)
        if key not in self.data or self.data[key] is None:
            if default is ...:
                self.fail("is required", key)
            return default
        raw = self.data[key]
        value = self._expand(key, raw)
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if str not in kinds and isinstance(raw, str) and _VAR.fullmatch(raw):
            # The whole value came from the environment, where everything is text: read it as YAML would have.
            value = _yaml_scalar(value)
            if value is None:  # `${VAR:-}` with VAR unset: as if the key were not given
                if default is ...:
                    self.fail(f"is required ({raw} is empty)", key)
                return default
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            try:
                value = float(value)
            except OverflowError:
                self.fail("is too large", key)
        if bool not in kinds and isinstance(value, bool) or not isinstance(value, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            self.fail(f"must be {names}, got {type(value).__name__} {value!r}", key)
        if isinstance(value, float) and not math.isfinite(value):
            self.fail(f"must be a finite number, got {value!r}", key)
        if check:
            problem = check(value)
            if problem:
                self.fail(problem, key)
        return value

    def secret(self, key: str) -> Secret | None:
        value = self.get(key, str, None)
        return Secret(value) if value else None

    def child(self, key: str, optional: bool = False) -> _Reader | None:
        self.used.add(key)
        if self.data.get(key) is None:
            if optional:
                return None
            return _Reader(self.source, self._sub(key), {}, self.env)
        return _Reader(self.source, self._sub(key), self.data[key], self.env)

    def _sub(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def done(self):
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            self.fail(f"unknown key(s) {', '.join(map(str, unknown))}")


def _positive(v) -> str | None:
    return None if v > 0 else "must be greater than 0"


def _non_negative(v) -> str | None:
    return None if v >= 0 else "must be 0 or more"


def _http_url(v: str) -> str | None:
    return None if re.match(r"^https?://[^\s/]+", v) else "must be an http(s):// URL"


def _image(v: str) -> str | None:
    if ":" in v or "@" in v:
        return "must be an image name without tag or digest (tags are chosen per build)"
    return None if _IMAGE.match(v) else "must be a lowercase image name like team/app"


_HOUR, _DAY = 3600.0, 86400.0
_MIN_INTERVAL = 0.1  # shorter poll intervals only spin: every poll is at least one request


def _yaml_scalar(text: str) -> Any:
    """`text` read as one YAML scalar (30 → 30, true → True, empty → None); text that is not a scalar stays text."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if value is None or isinstance(value, str | int | float | bool) else text


def _seconds(most: float, least: float | None = None) -> Callable[[float], str | None]:
    """A duration check: greater than 0 (or at least `least`) and at most `most`. The upper bound keeps sleeps and
    waits within what threads accept and catches a unit mistake (milliseconds written as seconds)."""

    def check(v: float) -> str | None:
        if least is None and v <= 0:
            return "must be greater than 0"
        if not (least or 0.0) <= v <= most:
            return f"must be between {least or 0:g} and {most:g} seconds"
        return None

    return check


def _between(least: int, most: int) -> Callable[[int], str | None]:
    return lambda v: None if least <= v <= most else f"must be between {least} and {most}"


def branch_name_problem(name: str) -> str | None:
    """Why git refuses `name` as a branch name, or None: the rules of `git check-ref-format --branch`.

    Stricter in one place: `@` alone is refused too, since git reads it as HEAD wherever a revision is expected.
    """
    if not name:
        return "it is empty"
    if name.startswith("-"):
        return "it starts with '-'"
    if name in ("HEAD", "@"):
        return "it names HEAD"
    bad = _REF_FORBIDDEN_CHAR.search(name)
    if bad:
        return f"it contains {bad.group()!r}"
    if ".." in name:
        return "it contains '..'"
    if "@{" in name:
        return "it contains '@{'"
    if name.endswith("."):
        return "it ends with '.'"
    for part in name.split("/"):
        if not part:
            return "it has an empty path component (a leading, trailing or double '/')"
        if part.startswith("."):
            return "a path component starts with '.'"
        if part.endswith(".lock"):
            return "a path component ends with '.lock'"
    return None


def _branch(v: str) -> str | None:
    problem = branch_name_problem(v)
    return f"{v!r} is not a valid git branch name: {problem}" if problem else None


def _github_repo(v: str) -> str | None:
    owner, slash, name = v.partition("/")
    if not slash or not _GITHUB_OWNER.match(owner) or not _GITHUB_NAME.match(name) or ".." in name or name == ".":
        return ("must be owner/name as GitHub spells them (owner: letters, digits, '-', '_'; name: letters, digits, "
                "'.', '-', '_', not '.' and without '..')")
    if name.lower().endswith(".git"):
        return "must be owner/name without '.git'"
    return None


def _registry_host(v: str) -> str | None:
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", v):
        return ("give host[:port] only, without a scheme (like registry.example.com:5000); for a registry that "
                "speaks plain HTTP, set registry.insecure: true")
    m = _REGISTRY_HOST.match(v)
    if not m:
        return ("must be host[:port] only (like registry.example.com:5000); a path such as /team belongs in "
                "repositories[].image")
    if m.group(1) and not 1 <= int(m.group(1)) <= 65535:
        return "has a port outside 1-65535"
    return None


def _relative(v: str) -> str | None:
    p = Path(v)
    return "must be a relative path inside the repository" if p.is_absolute() or ".." in p.parts else None


def _repository(r: _Reader) -> RepositorySettings:
    repo = r.get("repo", str, None, _github_repo)
    url = r.get("url", str, None, lambda v: "must not start with '-'" if v.startswith("-") else None)
    if bool(repo) == bool(url):
        r.fail("give exactly one of `repo: owner/name` (GitHub) or `url:` (any git remote)")
    build_args = r.get("build_args", dict, {})
    for k, v in build_args.items():
        if not isinstance(k, str) or not isinstance(v, str | int | float):
            r.fail(f"build_args.{k}: must map names to strings")
    name = r.get("name", str, repo or re.sub(r"(\.git)?/*$", "", url).rsplit("/", 1)[-1].rsplit(":", 1)[-1])
    settings = RepositorySettings(
        name=name,
        repo=repo,
        url=url,
        image=r.get("image", str, check=_image),
        branch=r.get("branch", str, "master", _branch),
        dockerfile=r.get("dockerfile", str, "Dockerfile", _relative),
        context=r.get("context", str, ".", _relative),
        build_args={str(k): r._expand(k, str(v)) for k, v in build_args.items()},
        floating_tags=r.get("floating_tags", bool, False),
        initial_build=r.get("initial_build", bool, False),
        approve_major=r.get("approve_major", bool, False),
        backend=r.get("backend", str, None, _backend),
        platforms=tuple(_string_list(r, "platforms", r"^[a-z0-9]+/[a-z0-9]+(/[a-z0-9]+)?$")),
        cache=r.get("cache", str, None, lambda v: None if v == "registry" else "must be registry"),
        build_secrets=_string_map(r, "build_secrets"),
    )
    r.done()
    return settings


def _secrets(r: _Reader, key: str) -> tuple[Secret, ...]:
    """One secret, or a list of up to two while it is being rotated."""
    r.used.add(key)
    raw = r.data.get(key)
    if raw is None:
        return ()
    items = raw if isinstance(raw, list) else [raw]
    if not 1 <= len(items) <= 2:
        r.fail("give one secret, or a list of two while rotating", key)
    found = []
    for item in items:
        value = r._expand(key, item)
        if value == "":
            continue  # `${VAR:-}` with VAR unset: this secret is not configured
        if not isinstance(value, str) or len(value) < 8:
            r.fail("must be a string of at least 8 characters (or a list of two)", key)
        found.append(Secret(value))
    return tuple(found)


def _backend(v: str) -> str | None:
    return None if v in ("docker", "kubernetes") else "must be docker or kubernetes"


def _string_list(r: _Reader, key: str, pattern: str) -> list[str]:
    items = r.get(key, list, [])
    for item in items:
        if not isinstance(item, str) or not re.match(pattern, item):
            r.fail(f"{item!r} is not valid here", key)
    return items


def _string_map(r: _Reader, key: str) -> dict[str, str]:
    items = r.get(key, dict, {})
    for k, v in items.items():
        if not isinstance(k, str) or not isinstance(v, str) or not re.match(r"^[A-Za-z0-9_.-]+$", k):
            r.fail(f"{k}: must map names to strings", key)
    return dict(items)


def _kubernetes_builds(k: _Reader | None) -> KubernetesBuildSettings | None:
    if k is None:
        return None
    d = KubernetesBuildSettings()
    tolerations = k.get("tolerations", list, [])
    if not all(isinstance(t, dict) for t in tolerations):
        k.fail("must be a list of mappings", "tolerations")
    settings = KubernetesBuildSettings(
        namespace=k.get("namespace", str, d.namespace),
        image=k.get("image", str, d.image),
        init_image=k.get("init_image", str, d.init_image),
        resources=k.get("resources", dict, {}),
        node_selector=_string_map(k, "node_selector"),
        tolerations=tuple(tolerations),
        docker_config_secret=k.get("docker_config_secret", str, d.docker_config_secret),
        source_token_secret=k.get("source_token_secret", str, None),
        ttl_seconds_after_finished=k.get("ttl_seconds_after_finished", int, d.ttl_seconds_after_finished,
                                         _non_negative),
    )
    k.done()
    return settings


def _notifications(top: _Reader) -> tuple[NotificationTarget, ...]:
    raw = top.get("notifications", list, [])
    targets = []
    for i, item in enumerate(raw):
        n = _Reader(top.source, f"notifications[{i}]", item, top.env)
        events = _string_list(n, "events", r"^[a-z_]+(\.[a-z_]+)?$")
        unknown = [e for e in events if e not in NOTIFICATION_EVENTS]
        if unknown:
            # A misspelt event would never fire, silently.
            n.fail(f"unknown event {unknown[0]!r} (known: {', '.join(NOTIFICATION_EVENTS)})", "events")
        name = n.get("name", str, f"notification-{i}")
        if any(t.name == name for t in targets):
            n.fail(f"another notification target is called {name!r}: names must differ", "name")
        target = NotificationTarget(
            name=name,
            url=Secret(n.get("url", str, check=_http_url)),
            format=n.get("format", str, "slack", lambda v: None if v in ("slack", "json") else "must be slack or json"),
            events=tuple(events),
            secret=n.secret("secret"),
        )
        n.done()
        targets.append(target)
    return tuple(targets)


def _webhooks(r: _Reader) -> WebhookSettings:
    settings = WebhookSettings(
        github_secrets=_secrets(r, "github_secret"),
        gitlab_tokens=_secrets(r, "gitlab_token"),
        gitea_secrets=_secrets(r, "gitea_secret"),
        charts_tokens=_secrets(r, "charts_token"),
        host=r.get("host", str, "0.0.0.0"),
        port=r.get("port", int, None, lambda v: None if 0 <= v < 65536 else "must be a TCP port (0-65535)"),
    )
    r.done()
    return settings


def parse_settings(data: Any, source: str = "<config>", env: Mapping[str, str] | None = None,
                   base_dir: Path | None = None) -> Settings:
    """Validate a parsed YAML document. `env` defaults to os.environ; relative paths resolve against base_dir."""
    env = os.environ if env is None else env
    top = _Reader(source, "", data if data is not None else {}, env)

    gh = top.child("github")
    github = GitHubSettings(
        api_url=gh.get("api_url", str, GitHubSettings.api_url, _http_url).rstrip("/"),
        token=gh.secret("token"),
        timeout_seconds=gh.get("timeout_seconds", float, 10.0, _seconds(_HOUR)),
        max_retries=gh.get("max_retries", int, 3, _non_negative),
        backoff_seconds=gh.get("backoff_seconds", float, 1.0, _seconds(_HOUR, least=0.0)),
        rate_limit_backoff_seconds=gh.get("rate_limit_backoff_seconds", float, 60.0, _seconds(_DAY)),
        max_requests_per_minute=gh.get("max_requests_per_minute", float, 600.0,
                                       lambda v: None if 1 <= v <= 900 else "must be between 1 and 900 (GitHub's "
                                                                            "secondary limit)"),
        max_concurrent_requests=gh.get("max_concurrent_requests", int, 10,
                                       lambda v: None if 1 <= v <= 100 else "must be between 1 and 100"),
        org_feeds=gh.get("org_feeds", bool, False),
        commit_statuses=gh.get("commit_statuses", bool, None),
        status_context_prefix=gh.get("status_context_prefix", str, "helmsman-cd",
                                     lambda v: None if re.match(r"^[A-Za-z0-9_./-]{1,80}$", v) else
                                     "must be 1-80 letters, digits, _ . / -"),
    )
    gh.done()

    reg = top.child("registry")
    registry = RegistrySettings(
        host=reg.get("host", str, "", lambda v: _registry_host(v.rstrip("/"))).rstrip("/"),
        username=reg.get("username", str, None),
        password=reg.secret("password"),
        insecure=reg.get("insecure", bool, False),
    )
    reg.done()
    if registry.password and not registry.username:
        reg.fail("password is set but username is not", "username")
    if registry.insecure and not registry.host:
        reg.fail("insecure needs host: Docker Hub is never spoken to over plain HTTP", "insecure")

    b = top.child("builds")
    builds = BuildSettings(
        concurrency=b.get("concurrency", int, 1, _between(1, 64)),
        timeout_seconds=b.get("timeout_seconds", float, 1800.0, _seconds(_DAY)),
        retries=b.get("retries", int, 2, _non_negative),
        retry_backoff_seconds=b.get("retry_backoff_seconds", float, 30.0, _seconds(_DAY, least=0.0)),
        workdir=b.get("workdir", str, None),
        max_source_bytes=b.get("max_source_bytes", int, BuildSettings.max_source_bytes, _positive),
        log_max_bytes=b.get("log_max_bytes", int, BuildSettings.log_max_bytes,
                            lambda v: None if 4096 <= v <= 1 << 30 else "must be between 4096 and 1 GiB"),
        keep=b.get("keep", int, BuildSettings.keep, lambda v: None if v >= 10 else "must be 10 or more"),
        backend=b.get("backend", str, "docker", _backend),
        kubernetes=_kubernetes_builds(b.child("kubernetes", optional=True)),
    )
    b.done()
    if builds.backend == "kubernetes" and builds.kubernetes is None:
        builds = replace(builds, kubernetes=KubernetesBuildSettings())

    g = top.child("git")
    git = GitSettings(
        ls_remote_timeout_seconds=g.get("ls_remote_timeout_seconds", float, GitSettings.ls_remote_timeout_seconds,
                                        _positive),
        max_refs=g.get("max_refs", int, GitSettings.max_refs, _positive),
    )
    g.done()

    h = top.child("http")
    http = HttpSettings(
        enabled=h.get("enabled", bool, True),
        host=h.get("host", str, "0.0.0.0"),
        port=h.get("port", int, 8081, lambda v: None if 0 <= v < 65536 else "must be a TCP port (0-65535)"),
        read_token=h.secret("read_token"),
        public_url=(h.get("public_url", str, None, _http_url) or "").rstrip("/") or None,
    )
    h.done()
    notifications = _notifications(top)

    webhooks = _webhooks(top.child("webhooks"))

    chart_repository = None
    c = top.child("chart_repository", optional=True)
    if c is not None:
        charts = c.get("charts", list, [])
        if not all(isinstance(x, str) and x for x in charts):
            c.fail("must be a list of chart names", "charts")
        chart_repository = ChartRepositorySettings(
            url=c.get("url", str, check=_http_url).rstrip("/"),
            username=c.get("username", str, None),
            password=c.secret("password"),
            token=c.secret("token"),
            charts=tuple(charts),
            poll_interval_seconds=c.get("poll_interval_seconds", float, 60.0, _seconds(_DAY, least=_MIN_INTERVAL)),
            timeout_seconds=c.get("timeout_seconds", float, 30.0, _seconds(_HOUR)),
        )
        c.done()
        if chart_repository.password and not chart_repository.username:
            c.fail("password is set but username is not (basic auth needs both)", "username")
        if chart_repository.token and chart_repository.password:
            c.fail("give either token (bearer) or username/password (basic auth), not both", "token")

    helm_api = None
    a = top.child("helm_api", optional=True)
    if a is not None:
        helm_api = HelmApiSettings(
            url=a.get("url", str, check=_http_url).rstrip("/"),
            token=a.secret("token"),
            timeout_seconds=a.get("timeout_seconds", float, 10.0, _seconds(_HOUR)),
            retry_backoff_seconds=a.get("retry_backoff_seconds", float, 5.0, _seconds(_DAY)),
            max_backoff_seconds=a.get("max_backoff_seconds", float, 300.0, _seconds(_DAY)),
        )
        a.done()
    if chart_repository and not helm_api:
        top.fail("chart_repository is set, so helm_api (url, token) is required to request applies", "helm_api")

    raw_repos = top.get("repositories", list, [])
    repositories = []
    for i, item in enumerate(raw_repos):
        repositories.append(_repository(_Reader(source, f"repositories[{i}]", item, env)))
    for i, r in enumerate(repositories):
        if (r.backend or builds.backend) == "docker":
            for key, value in (("platforms", r.platforms), ("cache", r.cache), ("build_secrets", r.build_secrets)):
                if value:
                    top.fail(f"{key} needs the kubernetes build backend (BuildKit); the docker backend cannot do it",
                             f"repositories[{i}].{key}")
        if r.backend == "kubernetes" and builds.kubernetes is None:
            builds = replace(builds, kubernetes=KubernetesBuildSettings())
    names = [r.name for r in repositories]
    for n in names:
        if names.count(n) > 1:
            top.fail(f"two repositories are named {n!r}; give one of them a distinct `name:`", "repositories")

    state_path = top.get("state_path", str, check=lambda v: None if v.strip() else "must not be empty")
    if base_dir and not Path(state_path).is_absolute():
        state_path = str(base_dir / state_path)
    settings = Settings(
        source_file=source,
        state_path=state_path,
        repositories=tuple(repositories),
        poll_interval_seconds=top.get("poll_interval_seconds", float, 60.0, _seconds(_DAY, least=_MIN_INTERVAL)),
        reconcile_interval_seconds=top.get("reconcile_interval_seconds", float, 600.0,
                                           _seconds(7 * _DAY, least=_MIN_INTERVAL)),
        max_concurrent_polls=top.get("max_concurrent_polls", int, 16, _positive),
        log_format=top.get("log_format", str, "text",
                           lambda v: None if v in ("text", "json") else "must be text or json"),
        github=github,
        git=git,
        registry=registry,
        builds=builds,
        http=http,
        webhooks=webhooks,
        notifications=notifications,
        chart_repository=chart_repository,
        helm_api=helm_api,
    )
    top.done()
    return settings


def load_settings(path: str | Path, env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the configuration file at `path`."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the configuration: {e.strerror}") from e
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as e:
        raise ConfigError(f"{p}: line {e.line}: the key {e.key!r} is given twice in one mapping (first at line "
                          f"{e.first_line})") from e
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{p}: not valid YAML{at}: {e.problem or e.context}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from e
    return parse_settings(data, str(p), env, base_dir=p.resolve().parent)


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int, first_line: int):
        super().__init__(f"line {line}: duplicate key {key!r}")
        self.key, self.line, self.first_line = key, line, first_line


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping giving one key twice, where plain YAML keeps the last without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_seen: dict[Any, int] = {}
        # Checked before the merge keys (`<<: *defaults`) are flattened in: overriding a merged key is the point.
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in first_seen:
                raise _DuplicateKey(key, line, first_seen[key])
            first_seen[key] = line
        return super().construct_mapping(node, deep)
