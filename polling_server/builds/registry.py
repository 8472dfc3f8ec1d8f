"""Reads what an image registry holds, through the Registry HTTP API v2: a tag's manifest digest and its labels.

Used to confirm a push (HEAD /v2/<name>/manifests/<tag> → Docker-Content-Digest) and to learn which version a
floating tag (`1`, `1.2`) points to now (manifest → config blob → `org.opencontainers.image.version`). Answers a 401
challenge as registries ask: `Basic` with the configured credentials, or `Bearer realm=...,service=...,scope=...`
by fetching a token from the realm (with the credentials as basic auth) and retrying with it.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import threading
from typing import Any
from urllib.parse import urlsplit

import requests

from polling_server.errors import PushFailed
from polling_server.http import HttpClient, Unreachable, safe_url

MANIFEST_TYPES = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
)
INDEX_TYPES = (
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
)
VERSION_LABEL = "org.opencontainers.image.version"
_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*"([^"]*)"')
DOCKER_HUB = "registry-1.docker.io"


class RegistryError(Exception):
    """The registry could not be read (unreachable, refused, or an answer that is not a manifest)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def _is_loopback(host: str) -> bool:
    name = urlsplit(f"//{host}").hostname or ""
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="...",service="...",scope="..."` → ("bearer", {realm, service, scope})."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), {k.lower(): v for k, v in _CHALLENGE_PARAM.findall(rest)}


class RegistryClient:
    """One registry (`host` as in image references, e.g. `registry.example.com:5000`); thread-safe."""

    def __init__(self, host: str, username: str | None = None, password: str | None = None, *,
                 http: HttpClient | None = None, scheme: str | None = None):
        self.host = host or DOCKER_HUB
        self.username = username
        self.password = password
        self.http = http or HttpClient(timeout=30.0, max_retries=2, backoff_seconds=1.0)
        self.scheme = scheme or ("http" if _is_loopback(self.host) else "https")
        self.base = f"{self.scheme}://{self.host}"
        self._tokens: dict[str, str] = {}  # scope -> Authorization header value
        self._lock = threading.Lock()

    def _name(self, name: str) -> str:
        # Docker Hub keeps official images under library/.
        return f"library/{name}" if self.host == DOCKER_HUB and "/" not in name else name

    # --- the API ---------------------------------------------------------------------------------------------
    def manifest_digest(self, name: str, tag: str) -> str | None:
        """The digest the registry serves for name:tag (Docker-Content-Digest), or None when the tag is absent."""
        resp = self._request("HEAD", name, f"manifests/{tag}",
                             {"Accept": ", ".join(MANIFEST_TYPES + INDEX_TYPES)})
        if resp is None:
            return None
        digest = resp.headers.get("Docker-Content-Digest")
        if not digest:
            raise RegistryError(f"{self.host}/{name}:{tag}: the registry sent no Docker-Content-Digest")
        return digest

    def labels(self, name: str, tag: str) -> dict[str, str] | None:
        """The image config's labels of name:tag (for an index: its first linux/amd64 image), None when absent."""
        manifest = self._manifest(name, tag)
        if manifest is None:
            return None
        if manifest.get("mediaType") in INDEX_TYPES or "manifests" in manifest:
            entries = manifest.get("manifests") or []
            chosen = next((m for m in entries if (m.get("platform") or {}).get("os") == "linux"
                           and (m.get("platform") or {}).get("architecture") == "amd64"), entries[0] if entries
                          else None)
            if chosen is None:
                return {}
            manifest = self._manifest(name, chosen["digest"])
            if manifest is None:
                return None
        config_digest = (manifest.get("config") or {}).get("digest")
        if not config_digest:
            raise RegistryError(f"{self.host}/{name}:{tag}: the manifest names no config blob")
        resp = self._request("GET", name, f"blobs/{config_digest}", {})
        if resp is None:
            raise RegistryError(f"{self.host}/{name}:{tag}: the config blob {config_digest[:19]} is missing")
        config = _json(resp, f"{self.host}/{name} config blob")
        return dict((config.get("config") or {}).get("Labels") or {})

    def raw_manifest(self, name: str, reference: str) -> tuple[bytes, str] | None:
        """The manifest bytes and media type served for name:reference (a tag or a digest); None when absent."""
        resp = self._request("GET", name, f"manifests/{reference}",
                             {"Accept": ", ".join(MANIFEST_TYPES + INDEX_TYPES)})
        if resp is None:
            return None
        media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
        if media_type not in MANIFEST_TYPES + INDEX_TYPES:
            media_type = _media_type_of(resp.content) or media_type
        return resp.content, media_type

    def put_manifest(self, name: str, tag: str, body: bytes, media_type: str) -> str:
        """Serve `body` (a manifest already in this repository) under `tag`: the registry API's tag move.

        Any manifest type works (Docker v2, OCI, an index), since the bytes are put back exactly as read.
        Returns the digest the registry answers with.
        """
        resp = self._request("PUT", name, f"manifests/{tag}", {"Content-Type": media_type}, data=body, push=True)
        digest = resp.headers.get("Docker-Content-Digest") if resp is not None else None
        if not digest:
            raise RegistryError(f"{self.host}/{name}:{tag}: the registry accepted the manifest but named no digest")
        return digest

    def image_version(self, name: str, tag: str) -> str | None:
        """The `org.opencontainers.image.version` label of name:tag; None when the tag or the label is absent."""
        labels = self.labels(name, tag)
        return (labels or {}).get(VERSION_LABEL) or None

    # --- plumbing --------------------------------------------------------------------------------------------
    def _manifest(self, name: str, reference: str) -> dict[str, Any] | None:
        resp = self._request("GET", name, f"manifests/{reference}",
                             {"Accept": ", ".join(MANIFEST_TYPES + INDEX_TYPES)})
        return None if resp is None else _json(resp, f"{self.host}/{name}:{reference} manifest")

    def _request(self, method: str, name: str, path: str, headers: dict[str, str], *, data: bytes | None = None,
                 push: bool = False) -> requests.Response | None:
        """Send, answering one auth challenge; None on 404 (absent), RegistryError on any other failure."""
        name = self._name(name)
        url = f"{self.base}/v2/{name}/{path}"
        scope = f"repository:{name}:pull,push" if push else f"repository:{name}:pull"
        with self._lock:
            auth = self._tokens.get(scope) or self._tokens.get("")
        resp = self._send(method, url, headers, auth, data)
        if resp.status_code == 401:
            auth = self._answer_challenge(resp.headers.get("WWW-Authenticate", ""), scope)
            if auth:
                resp = self._send(method, url, headers, auth, data)
        if resp.status_code == 404:
            return None
        if resp.status_code >= 400:
            raise RegistryError(f"{method} {safe_url(url)}: HTTP {resp.status_code}"
                                f"{' (credentials refused or missing)' if resp.status_code in (401, 403) else ''}",
                                resp.status_code)
        return resp

    def _send(self, method: str, url: str, headers: dict[str, str], auth: str | None,
              data: bytes | None = None) -> requests.Response:
        all_headers = dict(headers)
        if auth:
            all_headers["Authorization"] = auth
        extra = {} if data is None else {"data": data}
        try:
            return self.http.request(method, url, headers=all_headers, **extra)
        except Unreachable as e:
            raise RegistryError(str(e), e.status) from e

    def _basic(self) -> str | None:
        if self.username is None:
            return None
        raw = f"{self.username}:{self.password or ''}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def _answer_challenge(self, header: str, default_scope: str) -> str | None:
        scheme, params = parse_challenge(header)
        if scheme == "basic":
            auth = self._basic()
            if auth:
                with self._lock:
                    self._tokens[""] = auth
            return auth
        if scheme != "bearer" or not params.get("realm"):
            return None
        scope = params.get("scope") or default_scope
        query = {"scope": scope}
        if params.get("service"):
            query["service"] = params["service"]
        token_headers = {}
        basic = self._basic()
        if basic:
            token_headers["Authorization"] = basic
        try:
            resp = self.http.get(params["realm"], params=query, headers=token_headers)
        except Unreachable as e:
            raise RegistryError(f"the registry's token service: {e}", e.status) from e
        if resp.status_code != 200:
            raise RegistryError(f"the registry's token service {safe_url(params['realm'])} answered HTTP "
                                f"{resp.status_code}", resp.status_code)
        body = _json(resp, "the registry's token answer")
        token = body.get("token") or body.get("access_token")
        if not token:
            raise RegistryError(f"the registry's token service {safe_url(params['realm'])} sent no token")
        auth = f"Bearer {token}"
        with self._lock:
            self._tokens[scope] = auth
        return auth


def _media_type_of(body: bytes) -> str | None:
    """A manifest's own `mediaType` field, for registries that answer with a generic Content-Type."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    value = data.get("mediaType") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def _json(resp: requests.Response, what: str) -> dict[str, Any]:
    try:
        data = resp.json()
    except ValueError as e:
        raise RegistryError(f"{what} is not JSON") from e
    if not isinstance(data, dict):
        raise RegistryError(f"{what} is not a JSON object")
    return data


def registry_client_for(settings, http: HttpClient | None = None) -> RegistryClient:
    """The client of the configured registry (`registry:` in the poller's configuration)."""
    reg = settings.registry
    return RegistryClient(reg.host, reg.username, str(reg.password) if reg.password else None, http=http,
                          scheme="http" if reg.insecure else None)


def confirm_push(registry: RegistryClient, image: str, name: str, tags: list[str], digest: str) -> None:
    """A push counts once the registry serves `digest` under every tag pushed (PushFailed otherwise)."""
    for tag in tags:
        try:
            served = registry.manifest_digest(name, tag)
        except RegistryError as e:
            raise PushFailed(f"cannot confirm the push of {image}:{tag}: {e}") from e
        if served != digest:
            raise PushFailed(f"the registry serves {served or 'nothing'} for {image}:{tag}, not the pushed {digest}")
