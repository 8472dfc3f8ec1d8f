"""Builds one planned image with the Docker engine and pushes it: source at the exact commit → `docker build` with
OCI labels → its immutable tag (`sha-<12>`, or the release version `1.2.3`) → push → digest confirmed.

Builds push immutable tags only. The mutable ones (`staging`, `1.2`, `1`) are moved by builds/tag_mover.py after
one pure decision (planning/tags.py), so a build that was overtaken while it ran can never move them.

Every failure leaves as one of the BuildError classes (SourceFetchError, ImageBuildFailed, PushFailed,
EngineUnavailable, BuildTimeout), translated from docker/requests/subprocess errors with `raise ... from e`; no
message carries a credential. The build's time limit is enforced here by deadline checks on every stream line and
subprocess call and by the engine API client's read timeout; the worker adds a watchdog on top.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests
import semver
import urllib3.exceptions

from polling_server.builds.registry import confirm_push, registry_client_for
from polling_server.builds.source_fetch import SourceFetcher, public_url, scrub, source_url
from polling_server.config import RepositorySettings, Settings
from polling_server.errors import (
    BuildError,
    BuildTimeout,
    EngineUnavailable,
    ImageBuildFailed,
    PushFailed,
)
from polling_server.http import HttpClient
from polling_server.planning.model import BuildKind
from polling_server.planning.tags import STAGING_TAG
from polling_server.planning.versions import image_tag_for, parse_release_tag
from polling_server.state import BuildRecord

log = logging.getLogger(__name__)

LABEL_PREFIX = "org.opencontainers.image."
_TRANSPORT_ERRORS = (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError)
_SUCCESS_LINE = re.compile(r"Successfully built ([0-9a-f]{12,64})")


@dataclass(frozen=True)
class BuildResult:
    image: str  # the image reference without tag
    tags: tuple[str, ...]  # full references pushed, e.g. registry:5000/team/app:staging
    digest: str  # the manifest digest the registry serves for every one of them


def release_version(build: BuildRecord) -> semver.Version:
    version = parse_release_tag(build.version or "") or parse_release_tag(build.ref)
    if version is None:
        raise ImageBuildFailed(f"release tag {build.ref!r} does not name a semver version")
    return version


def primary_tags(build: BuildRecord) -> list[str]:
    """The immutable tag a build pushes: `sha-<12>` for a branch build, the release version itself for a tag."""
    if build.kind is BuildKind.RELEASE:
        try:
            return [image_tag_for(release_version(build))]
        except ValueError as e:
            raise ImageBuildFailed(str(e)) from e
    return [f"sha-{build.sha[:12]}"]


def image_labels(build: BuildRecord, source: str, created: datetime) -> dict[str, str]:
    """The OCI labels: the commit, the source URL, the version (semver, or `staging`) and the build time."""
    version = str(release_version(build)) if build.kind is BuildKind.RELEASE else STAGING_TAG
    return {
        f"{LABEL_PREFIX}revision": build.sha,
        f"{LABEL_PREFIX}source": source,
        f"{LABEL_PREFIX}version": version,
        f"{LABEL_PREFIX}created": created.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def docker_host_description() -> str:
    """What the docker SDK's from_env connects to, for error messages (DOCKER_HOST, without any userinfo)."""
    # The SDK itself reads DOCKER_HOST; this only repeats its value so that the error says where it looked.
    value = os.environ.get("DOCKER_HOST")
    return f"DOCKER_HOST={public_url(value)}" if value else "the default socket unix:///var/run/docker.sock"


class ImageBuilder:
    def __init__(self, settings: Settings, *, docker_factory: Callable[..., docker.DockerClient] | None = None,
                 http: HttpClient | None = None, github_budget=None):
        self.settings = settings
        self._docker_factory = docker_factory or docker.from_env
        gh = settings.github
        self.http = http or HttpClient(timeout=gh.timeout_seconds, max_retries=gh.max_retries,
                                       backoff_seconds=gh.backoff_seconds)
        # Source tarballs come from the GitHub API: they count against the token's budget; the registry does not.
        source_http = self.http
        if github_budget is not None and http is None:
            source_http = HttpClient(timeout=gh.timeout_seconds, max_retries=gh.max_retries,
                                     backoff_seconds=gh.backoff_seconds, budget=github_budget)
        self.source = SourceFetcher(settings, source_http)
        reg = settings.registry
        self.registry = registry_client_for(settings, http=self.http)
        self._secrets = [s for s in (str(reg.password or ""), str(gh.token or "")) if s]

    # --- the whole build --------------------------------------------------------------------------------------
    def build(self, build: BuildRecord, repo: RepositorySettings,
              on_log: Callable[[str], None] | None = None) -> BuildResult:
        deadline = time.monotonic() + self.settings.builds.timeout_seconds
        try:
            return self._build(build, repo, on_log or (lambda _line: None), deadline)
        except BuildError as e:
            clean = scrub(str(e), self._secrets)
            if clean != str(e):
                raise type(e)(clean) from None
            raise

    def _build(self, build: BuildRecord, repo: RepositorySettings, on_log: Callable[[str], None],
               deadline: float) -> BuildResult:
        image = self.settings.image_ref(repo)
        tags = primary_tags(build)
        labels = image_labels(build, source_url(self.settings, repo), datetime.now(UTC))
        client = self._connect(deadline)
        try:
            on_log(f"fetching the source at {build.sha} from {labels[f'{LABEL_PREFIX}source']}")
            with self.source.checkout(repo, build.sha, deadline) as root:
                on_log(f"source fetched; building {repo.dockerfile} in {repo.context}")
                context, dockerfile = _context_paths(root, repo)
                image_id = self._build_image(client, context, dockerfile, labels, repo.build_args, deadline,
                                             on_log)
            digest = self._push(client, image_id, image, repo.image, tags, deadline, on_log)
        finally:
            client.close()
        return BuildResult(image=image, tags=tuple(f"{image}:{t}" for t in tags), digest=digest)

    # --- engine ---------------------------------------------------------------------------------------------
    def _connect(self, deadline: float) -> docker.DockerClient:
        where = docker_host_description()
        try:
            client = self._docker_factory(timeout=_left(deadline, "connecting to the engine"))
            client.ping()
        except BuildError:
            raise
        except (docker.errors.DockerException, *_TRANSPORT_ERRORS) as e:
            raise EngineUnavailable(f"the Docker engine at {where} does not answer ({_reason(e)})") from e
        return client

    def _build_image(self, client: docker.DockerClient, context: Path, dockerfile: Path, labels: dict[str, str],
                     build_args: dict[str, str], deadline: float, on_log: Callable[[str], None]) -> str:
        image_id = None
        try:
            stream = client.api.build(
                path=str(context), dockerfile=str(dockerfile), labels=labels, buildargs=dict(build_args) or None,
                rm=True, forcerm=True, pull=False, decode=True, timeout=_left(deadline, "building"),
            )
            for chunk in stream:
                error = _stream_error(chunk)
                if error:
                    raise ImageBuildFailed(f"the image build failed: {error}")
                text = chunk.get("stream")
                if isinstance(text, str):
                    for line in text.splitlines():
                        if line.strip():
                            on_log(line.rstrip())
                        m = _SUCCESS_LINE.search(line)
                        if m:
                            image_id = m.group(1)
                aux = chunk.get("aux")
                if isinstance(aux, dict) and isinstance(aux.get("ID"), str):
                    image_id = aux["ID"]
                _left(deadline, "building")
        except BuildError:
            raise
        except docker.errors.APIError as e:
            raise ImageBuildFailed(f"the engine refused the build: {e.explanation or e}") from e
        except (docker.errors.DockerException, *_TRANSPORT_ERRORS) as e:
            _left(deadline, "building")
            raise EngineUnavailable(f"lost the Docker engine during the build ({_reason(e)})") from e
        if not image_id:
            raise ImageBuildFailed("the engine finished the build without naming the image it built")
        return image_id

    # --- tags and push --------------------------------------------------------------------------------------
    def _push(self, client: docker.DockerClient, image_id: str, image: str, name: str, tags: list[str],
              deadline: float, on_log: Callable[[str], None]) -> str:
        reg = self.settings.registry
        auth = {"username": reg.username, "password": str(reg.password or "")} if reg.username else None
        digests: dict[str, str] = {}
        try:
            for tag in tags:
                client.api.tag(image_id, image, tag, force=True)
            for tag in tags:
                on_log(f"pushing {image}:{tag}")
                stream = client.api.push(image, tag=tag, stream=True, decode=True, auth_config=auth)
                digests[tag] = self._read_push(stream, f"{image}:{tag}", deadline, on_log)
        except BuildError:
            raise
        except docker.errors.APIError as e:
            raise PushFailed(f"the engine refused to push {image}: {e.explanation or e}") from e
        except (docker.errors.DockerException, *_TRANSPORT_ERRORS) as e:
            _left(deadline, "pushing")
            raise EngineUnavailable(f"lost the Docker engine during the push ({_reason(e)})") from e
        pushed = set(digests.values())
        if len(pushed) != 1:
            raise PushFailed(f"the tags of {image} were pushed with different digests: {sorted(pushed)}")
        digest = pushed.pop()
        confirm_push(self.registry, image, name, tags, digest)
        return digest

    def _read_push(self, stream: Iterable[dict[str, Any]], ref: str, deadline: float,
                   on_log: Callable[[str], None]) -> str:
        digest = None
        for line in stream:
            error = _stream_error(line)
            if error:
                raise PushFailed(f"the push of {ref} was refused: {error}")
            aux = line.get("aux")
            if isinstance(aux, dict) and isinstance(aux.get("Digest"), str):
                digest = aux["Digest"]
            status = line.get("status")
            if isinstance(status, str) and "id" not in line:
                on_log(status)
            _left(deadline, "pushing")
        if not digest:
            raise PushFailed(f"the push of {ref} ended without a digest")
        return digest


def _context_paths(root: Path, repo: RepositorySettings) -> tuple[Path, Path]:
    """The build context and Dockerfile inside the checkout; symlinks may not lead out of it."""
    base = root.resolve()
    context = (root / repo.context).resolve()
    dockerfile = (root / repo.dockerfile).resolve()
    for what, path in (("context", context), ("dockerfile", dockerfile)):
        if not path.is_relative_to(base):
            raise ImageBuildFailed(f"{repo.name}: {what} {getattr(repo, what)!r} leads outside the repository")
    if not context.is_dir():
        raise ImageBuildFailed(f"{repo.name}: the build context {repo.context!r} is not a directory at this commit")
    if not dockerfile.is_file():
        raise ImageBuildFailed(f"{repo.name}: there is no {repo.dockerfile!r} at this commit")
    return context, dockerfile


def _stream_error(chunk: dict[str, Any]) -> str | None:
    if not isinstance(chunk, dict):
        return None
    detail = chunk.get("errorDetail")
    if isinstance(detail, dict) and detail.get("message"):
        return str(detail["message"]).strip()
    if chunk.get("error"):
        return str(chunk["error"]).strip()
    return None


def _left(deadline: float, doing: str) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise BuildTimeout(f"the build ran out of time while {doing}")
    return left


def _reason(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    # urllib3 and requests messages can embed connection objects and URLs; keep them short.
    return text if len(text) <= 300 else text[:300] + "..."
