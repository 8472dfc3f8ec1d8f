"""Loads and validates the poller's YAML configuration, once, into frozen dataclasses.

`${VAR}` (or `${VAR:-default}`) in any string value is expanded from the environment: that is how secrets get in.
Every error names the file, the key path (e.g. `repositories[2].branch`) and what is wrong. Nothing else in the
poller reads os.environ. Secrets are held as `Secret`, whose repr is masked, so a logged Settings leaks nothing.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from polling_server.errors import ConfigError

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_REPO = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
_IMAGE = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$")
_BRANCH_FORBIDDEN = re.compile(r"(^[-/.])|(\.\.)|([\x00-\x20~^:?*\[\\])|(@\{)|(/$)|(\.lock$)|(//)")


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


@dataclass(frozen=True)
class RegistrySettings:
    host: str = ""
    username: str | None = None
    password: Secret | None = None


@dataclass(frozen=True)
class BuildSettings:
    concurrency: int = 1
    timeout_seconds: float = 1800.0
    retries: int = 2
    retry_backoff_seconds: float = 30.0
    workdir: str | None = None
    max_source_bytes: int = 2 << 30  # the expanded source tree of one build (a GitHub tarball)


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
        value = self._expand(key, self.data[key])
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if bool not in kinds and isinstance(value, bool) or not isinstance(value, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            self.fail(f"must be {names}, got {type(value).__name__} {value!r}", key)
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


def _branch(v: str) -> str | None:
    return f"{v!r} is not a valid git branch name" if not v or _BRANCH_FORBIDDEN.search(v) else None


def _relative(v: str) -> str | None:
    p = Path(v)
    return "must be a relative path inside the repository" if p.is_absolute() or ".." in p.parts else None


def _repository(r: _Reader) -> RepositorySettings:
    repo = r.get("repo", str, None, lambda v: None if _REPO.match(v) else "must be owner/name")
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
        if not isinstance(value, str) or len(value) < 8:
            r.fail("must be a string of at least 8 characters (or a list of two)", key)
        found.append(Secret(value))
    return tuple(found)


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
        timeout_seconds=gh.get("timeout_seconds", float, 10.0, _positive),
        max_retries=gh.get("max_retries", int, 3, _non_negative),
        backoff_seconds=gh.get("backoff_seconds", float, 1.0, _non_negative),
        rate_limit_backoff_seconds=gh.get("rate_limit_backoff_seconds", float, 60.0, _positive),
        max_requests_per_minute=gh.get("max_requests_per_minute", float, 600.0,
                                       lambda v: None if 1 <= v <= 900 else "must be between 1 and 900 (GitHub's "
                                                                            "secondary limit)"),
        max_concurrent_requests=gh.get("max_concurrent_requests", int, 10,
                                       lambda v: None if 1 <= v <= 100 else "must be between 1 and 100"),
        org_feeds=gh.get("org_feeds", bool, False),
    )
    gh.done()

    reg = top.child("registry")
    registry = RegistrySettings(
        host=reg.get("host", str, ""), username=reg.get("username", str, None), password=reg.secret("password")
    )
    reg.done()
    if registry.password and not registry.username:
        reg.fail("password is set but username is not", "username")

    b = top.child("builds")
    builds = BuildSettings(
        concurrency=b.get("concurrency", int, 1, _positive),
        timeout_seconds=b.get("timeout_seconds", float, 1800.0, _positive),
        retries=b.get("retries", int, 2, _non_negative),
        retry_backoff_seconds=b.get("retry_backoff_seconds", float, 30.0, _non_negative),
        workdir=b.get("workdir", str, None),
        max_source_bytes=b.get("max_source_bytes", int, BuildSettings.max_source_bytes, _positive),
    )
    b.done()

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
    )
    h.done()

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
            poll_interval_seconds=c.get("poll_interval_seconds", float, 60.0, _positive),
            timeout_seconds=c.get("timeout_seconds", float, 30.0, _positive),
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
            timeout_seconds=a.get("timeout_seconds", float, 10.0, _positive),
            retry_backoff_seconds=a.get("retry_backoff_seconds", float, 5.0, _positive),
            max_backoff_seconds=a.get("max_backoff_seconds", float, 300.0, _positive),
        )
        a.done()
    if chart_repository and not helm_api:
        top.fail("chart_repository is set, so helm_api (url, token) is required to request applies", "helm_api")

    raw_repos = top.get("repositories", list, [])
    repositories = []
    for i, item in enumerate(raw_repos):
        repositories.append(_repository(_Reader(source, f"repositories[{i}]", item, env)))
    names = [r.name for r in repositories]
    for n in names:
        if names.count(n) > 1:
            top.fail(f"two repositories are named {n!r}; give one of them a distinct `name:`", "repositories")

    state_path = top.get("state_path", str)
    if base_dir and not Path(state_path).is_absolute():
        state_path = str(base_dir / state_path)
    settings = Settings(
        source_file=source,
        state_path=state_path,
        repositories=tuple(repositories),
        poll_interval_seconds=top.get("poll_interval_seconds", float, 60.0, _positive),
        reconcile_interval_seconds=top.get("reconcile_interval_seconds", float, 600.0, _positive),
        max_concurrent_polls=top.get("max_concurrent_polls", int, 16, _positive),
        log_format=top.get("log_format", str, "text",
                           lambda v: None if v in ("text", "json") else "must be text or json"),
        github=github,
        git=git,
        registry=registry,
        builds=builds,
        http=http,
        webhooks=webhooks,
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
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from e
    return parse_settings(data, str(p), env, base_dir=p.resolve().parent)
