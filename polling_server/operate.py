"""The operators' controls: roll staging back without a rebuild, hold a repository, approve or reject a gated
major release. Each is a row in the state database (who, why, when) that the running daemon reads at its next
step: no restart, no signal.

Rollback puts the manifest an earlier successful build pushed under the mutable tag, through the registry API
(any manifest type, since the bytes are put back exactly as read), and holds the repository, so a later merge is
still built and tagged `sha-…` but does not move the tag over the rollback until `unhold`. Every command checks
everything first and changes nothing when it fails (OperatorError: exit 2).
"""

from __future__ import annotations

import getpass
import re
from dataclasses import dataclass

from polling_server.builds.registry import RegistryClient, RegistryError
from polling_server.config import RepositorySettings, Settings
from polling_server.errors import OperatorError
from polling_server.planning.model import BuildStatus
from polling_server.planning.tags import STAGING_TAG
from polling_server.state import BuildRecord, StateStore

_HEX_PREFIX = re.compile(r"^[0-9a-f]{7,64}$")
_BUILD_ID = re.compile(r"^build:(\d+)$")


def operator(by: str | None) -> str:
    if by:
        return by
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def repository(settings: Settings, name: str) -> RepositorySettings:
    try:
        return settings.repository(name)
    except KeyError:
        known = ", ".join(r.name for r in settings.repositories) or "none"
        raise OperatorError(f"unknown repository {name!r} (configured: {known})") from None


def resolve_target(store: StateStore, repo: RepositorySettings, target: str) -> BuildRecord:
    """The build TARGET names: `build:ID`, a commit SHA or a prefix of 7+ hex digits, or a git tag name.

    When a commit was built more than once, the newest successful build of it wins.
    """
    builds = store.builds(repo=repo.name, limit=100_000)
    m = _BUILD_ID.match(target)
    if m:
        found = [b for b in builds if b.id == int(m.group(1))]
        if not found:
            raise OperatorError(f"{repo.name} has no build {target}")
        candidates = found
    else:
        sha = None
        if _HEX_PREFIX.match(target.lower()):
            sha = target.lower()
        else:
            sha = store.repo_state(repo.name).tags.get(target)
            if sha is None:
                raise OperatorError(f"{target!r} is neither a build (build:ID), a commit, nor a tag of {repo.name}")
        candidates = [b for b in builds if b.sha.startswith(sha)]
        if not candidates:
            raise OperatorError(f"{repo.name} has no build of {target}")
        if len({b.sha for b in candidates}) > 1:
            raise OperatorError(f"{target!r} is ambiguous in {repo.name}: give more digits")
    succeeded = [b for b in candidates if b.status is BuildStatus.SUCCEEDED and b.digest]
    if not succeeded:
        raise OperatorError(f"no successful build of {target} in {repo.name} (its builds: "
                            + ", ".join(f"#{b.id} {b.status.value}" for b in candidates[:5]) + ")")
    return max(succeeded, key=lambda b: b.id)


@dataclass(frozen=True)
class RollbackResult:
    repo: str
    tag: str
    build: BuildRecord
    digest: str
    previous: object
    rollback_id: int | None


def rollback(settings: Settings, store: StateStore, registry: RegistryClient, repo_name: str, target: str,
             tag: str = STAGING_TAG, by: str | None = None, dry_run: bool = False) -> RollbackResult:
    repo = repository(settings, repo_name)
    if tag != STAGING_TAG and not re.match(r"^\d+(\.\d+)?$", tag):
        raise OperatorError(f"{tag!r} is not a mutable tag of this system (staging, or a floating tag like 1.2)")
    build = resolve_target(store, repo, target)
    digest = build.digest or ""
    try:
        found = registry.raw_manifest(repo.image, digest)
    except RegistryError as e:
        raise OperatorError(f"cannot read {repo.image}@{digest} from the registry: {e}") from e
    if found is None:
        raise OperatorError(f"the registry no longer holds {repo.image}@{digest} (build #{build.id}, "
                            f"{build.sha[:12]}): nothing changed")
    previous = store.tag_positions(repo.name).get(tag)
    if dry_run:
        return RollbackResult(repo.name, tag, build, digest, previous, None)
    body, media_type = found
    try:
        registry.put_manifest(repo.image, tag, body, media_type)
        served = registry.manifest_digest(repo.image, tag)
    except RegistryError as e:
        raise OperatorError(f"the registry refused to move {repo.image}:{tag}: {e}") from e
    if served != digest:
        raise OperatorError(f"after the move {repo.image}:{tag} serves {served or 'nothing'}, not {digest}")
    rollback_id = store.record_rollback(repo.name, tag, operator(by), previous, build, digest)
    return RollbackResult(repo.name, tag, build, digest, previous, rollback_id)


def hold(settings: Settings, store: StateStore, repo_name: str, reason: str | None, by: str | None):
    repository(settings, repo_name)
    return store.set_hold(repo_name, operator(by), reason)


def unhold(settings: Settings, store: StateStore, repo_name: str):
    repository(settings, repo_name)
    return store.release_hold(repo_name)


def decide(settings: Settings, store: StateStore, repo_name: str, tag: str, approve: bool, by: str | None,
           reason: str | None = None) -> BuildRecord:
    repository(settings, repo_name)
    return store.decide_gated(repo_name, tag, operator(by), approve, reason)
