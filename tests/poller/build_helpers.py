"""Helpers for the build tests: settings, queueing a build, a GitHub-style tarball, and reading images back."""

from __future__ import annotations

import io
import tarfile
import uuid
from pathlib import Path

from polling_server.config import Settings, parse_settings
from polling_server.planning.model import BuildKind, BuildRequest, RepoPlan, RepoState
from polling_server.planning.versions import parse_release_tag
from polling_server.state import StateStore


def unique_image(prefix: str = "cd-test") -> str:
    return f"{prefix}/app-{uuid.uuid4().hex[:10]}"


def make_settings(tmp_path: Path, registry, repositories: list[dict], *, password: str | None = None,
                  github: dict | None = None, **builds) -> Settings:
    reg: dict = {"host": registry.host}
    if registry.username:
        reg["username"] = registry.username
        reg["password"] = password if password is not None else registry.password
    data = {
        "state_path": str(tmp_path / "state.db"),
        "registry": reg,
        "builds": {"retries": 0, "retry_backoff_seconds": 0.2, "timeout_seconds": 120,
                   "workdir": str(tmp_path / "work"), **builds},
        "repositories": repositories,
    }
    if github:
        data["github"] = github
    return parse_settings(data, env={})


def dockerfile(base_image: str, extra: str = "") -> str:
    return f"FROM {base_image}\nCOPY marker.txt /app/marker.txt\n{extra}"


def enqueue(store: StateStore, repo: str, sha: str, *, ref: str = "master", tag: str | None = None,
            max_attempts: int = 1) -> int:
    """Queue one build as the planner would: staging of `ref`, or a release of `tag`."""
    if tag:
        version = parse_release_tag(tag)
        request = BuildRequest(repo, BuildKind.RELEASE, tag, sha, str(version) if version else None)
    else:
        request = BuildRequest(repo, BuildKind.STAGING, ref, sha)
    plan = RepoPlan((request,), RepoState(True, sha, {}), ())
    (build_id,) = store.save_poll(repo, plan, max_attempts=max_attempts)
    return build_id


def github_tarball(top: str, files: dict[str, str], commit: str | None = None) -> bytes:
    """A .tar.gz shaped like GitHub's: one top directory, and the commit in a pax global header."""
    buf = io.BytesIO()
    pax = {"comment": commit} if commit else {}
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT, pax_headers=pax) as tar:
        d = tarfile.TarInfo(f"{top}/")
        d.type = tarfile.DIRTYPE
        d.mode = 0o755
        tar.addfile(d)
        for name, content in files.items():
            data = content.encode()
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def file_in_image(docker_client, ref: str, path: str) -> str:
    return docker_client.containers.run(ref, ["cat", path], remove=True).decode()
