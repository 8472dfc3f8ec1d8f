"""Read and validate helm_api's configuration from the environment, once, into a frozen dataclass.

This is the only module that reads ``os.environ``. Every bad value raises ConfigError naming the variable.

Variables:
    HELM_API_TOKEN / HELM_API_TOKEN_FILE  bearer token (or a file holding it); one is required unless
                                          HELM_API_ALLOW_ANONYMOUS=true
    HELM_API_NAMESPACE                    default: the pod's namespace in-cluster, else "default"
    HELM_API_CRONJOB                      default "helmsman-cronjob"
    HELM_API_RECONCILE_SECONDS            default 10
    HELM_API_SCHEDULE                     re-apply schedule, a cron expression (`0 * * * *`); unset or empty: none
    HELM_API_SCHEDULE_TZ                  time zone of the schedule, an IANA name, default UTC
    HELM_API_OFFLINE_CRONJOB_FILE         offline mode: read the CronJob from this YAML file, create nothing
    HELM_API_OFFLINE_JOBS_DIR             offline mode: also write each Job as YAML into this directory
    KUBECONFIG                            used when not in-cluster (else ~/.kube/config)

Read for the ``helm-api`` command only (helm_api.cli), each by its own function:
    HELM_API_LOG_FORMAT                   text (default) or json
    HELM_API_THREADS                      requests served at once, default 4
    HELM_API_CONNECTION_LIMIT             connections open at once, default 256
    HELM_API_IDLE_TIMEOUT_SECONDS         close a connection silent for this long, default 30
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from helm_api.errors import ConfigError
from helm_api.logs import LOG_FORMATS
from helm_api.schedule import parse_schedule, parse_timezone
from helm_api.server import ServerSettings

SERVICE_ACCOUNT_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_CRONJOB = "helmsman-cronjob"
DEFAULT_RECONCILE_SECONDS = 10.0

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Settings:
    """Everything helm_api is configured with. The token is kept out of repr so it never reaches a log."""

    namespace: str = "default"
    cronjob_name: str = DEFAULT_CRONJOB
    reconcile_seconds: float = DEFAULT_RECONCILE_SECONDS
    token: str | None = field(default=None, repr=False)
    allow_anonymous: bool = False
    offline_cronjob_file: Path | None = None
    offline_jobs_dir: Path | None = None
    in_cluster: bool = False
    kubeconfig: str | None = None
    schedule: str | None = None
    schedule_timezone: str = "UTC"

    @property
    def offline(self) -> bool:
        return self.offline_cronjob_file is not None


def _get(environ: Mapping[str, str], name: str) -> str | None:
    value = environ.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def _read_bool(environ: Mapping[str, str], name: str) -> bool:
    raw = (environ.get(name) or "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _read_token(environ: Mapping[str, str]) -> str | None:
    token = _get(environ, "HELM_API_TOKEN")
    token_file = _get(environ, "HELM_API_TOKEN_FILE")
    if token and token_file:
        raise ConfigError("set only one of HELM_API_TOKEN and HELM_API_TOKEN_FILE")
    if token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(f"HELM_API_TOKEN_FILE: cannot read {token_file}: {e.strerror}") from e
        if not token:
            raise ConfigError(f"HELM_API_TOKEN_FILE: {token_file} is empty")
    return token


def _read_namespace(environ: Mapping[str, str], in_cluster: bool, namespace_file: Path) -> str:
    namespace = _get(environ, "HELM_API_NAMESPACE")
    if namespace is None and in_cluster:
        try:
            namespace = namespace_file.read_text(encoding="utf-8").strip() or None
        except OSError:
            namespace = None
    namespace = namespace or "default"
    if not _DNS1123_LABEL.match(namespace) or len(namespace) > 63:
        raise ConfigError(f"HELM_API_NAMESPACE: {namespace!r} is not a valid namespace name")
    return namespace


def _read_reconcile_seconds(environ: Mapping[str, str]) -> float:
    raw = _get(environ, "HELM_API_RECONCILE_SECONDS")
    if raw is None:
        return DEFAULT_RECONCILE_SECONDS
    try:
        value = float(raw)
    except ValueError as e:
        raise ConfigError(f"HELM_API_RECONCILE_SECONDS must be a number of seconds, got {raw!r}") from e
    if not 0 < value <= 3600:
        raise ConfigError(f"HELM_API_RECONCILE_SECONDS must be between 0 and 3600 seconds, got {raw!r}")
    return value


def _read_schedule(environ: Mapping[str, str]) -> tuple[str | None, str]:
    """(expression or None, time zone), both checked now: a bad one stops the start, not the first slot."""
    expression = _get(environ, "HELM_API_SCHEDULE")
    timezone = _get(environ, "HELM_API_SCHEDULE_TZ") or "UTC"
    parse_timezone(timezone)
    if expression is not None:
        expression = " ".join(expression.split())
        parse_schedule(expression, timezone)
    return expression, timezone


def _read_int(environ: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = _get(environ, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as e:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from e
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {raw!r}")
    return value


def load_log_format(environ: Mapping[str, str] | None = None, override: str | None = None) -> str:
    """``override`` (the --log-format flag) or HELM_API_LOG_FORMAT, else text."""
    source = os.environ if environ is None else environ
    fmt = override or (_get(source, "HELM_API_LOG_FORMAT") or "text").lower()
    if fmt not in LOG_FORMATS:
        raise ConfigError(f"HELM_API_LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
    return fmt


def load_server_settings(environ: Mapping[str, str] | None = None, *, max_request_body_size: int) -> ServerSettings:
    """How the HTTP server treats clients; ``max_request_body_size`` is the app's own body limit."""
    source = os.environ if environ is None else environ
    return ServerSettings(
        threads=_read_int(source, "HELM_API_THREADS", ServerSettings.threads, 1, 64),
        connection_limit=_read_int(source, "HELM_API_CONNECTION_LIMIT", ServerSettings.connection_limit, 8, 10000),
        idle_timeout_seconds=_read_int(
            source, "HELM_API_IDLE_TIMEOUT_SECONDS", ServerSettings.idle_timeout_seconds, 1, 3600
        ),
        max_request_body_size=max_request_body_size,
    )


def load_settings(
    environ: Mapping[str, str] | None = None,
    *,
    overrides: Mapping[str, str | None] | None = None,
    namespace_file: Path = SERVICE_ACCOUNT_NAMESPACE_FILE,
) -> Settings:
    """Settings from ``environ`` (default: the process environment), with ``overrides`` (e.g. CLI flags)."""
    source = dict(os.environ if environ is None else environ)
    for name, value in (overrides or {}).items():
        if value is not None:
            source[name] = value

    in_cluster = bool(_get(source, "KUBERNETES_SERVICE_HOST") and _get(source, "KUBERNETES_SERVICE_PORT"))
    cronjob_name = _get(source, "HELM_API_CRONJOB") or DEFAULT_CRONJOB
    if len(cronjob_name) > 253 or not _DNS1123_SUBDOMAIN.match(cronjob_name):
        raise ConfigError(f"HELM_API_CRONJOB: {cronjob_name!r} is not a valid CronJob name")

    token = _read_token(source)
    allow_anonymous = _read_bool(source, "HELM_API_ALLOW_ANONYMOUS")
    if token is None and not allow_anonymous:
        raise ConfigError(
            "no API token: set HELM_API_TOKEN or HELM_API_TOKEN_FILE "
            "(or HELM_API_ALLOW_ANONYMOUS=true to run without authentication)"
        )

    offline_file = _get(source, "HELM_API_OFFLINE_CRONJOB_FILE")
    if offline_file is not None and not Path(offline_file).is_file():
        raise ConfigError(f"HELM_API_OFFLINE_CRONJOB_FILE: {offline_file} is not a readable file")
    jobs_dir = _get(source, "HELM_API_OFFLINE_JOBS_DIR")
    if jobs_dir is not None and Path(jobs_dir).exists() and not Path(jobs_dir).is_dir():
        raise ConfigError(f"HELM_API_OFFLINE_JOBS_DIR: {jobs_dir} exists and is not a directory")

    schedule, schedule_timezone = _read_schedule(source)

    return Settings(
        namespace=_read_namespace(source, in_cluster, namespace_file),
        cronjob_name=cronjob_name,
        reconcile_seconds=_read_reconcile_seconds(source),
        token=token,
        allow_anonymous=allow_anonymous,
        offline_cronjob_file=Path(offline_file) if offline_file else None,
        offline_jobs_dir=Path(jobs_dir) if jobs_dir else None,
        in_cluster=in_cluster,
        kubeconfig=_get(source, "KUBECONFIG"),
        schedule=schedule,
        schedule_timezone=schedule_timezone,
    )
