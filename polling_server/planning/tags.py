"""Where the mutable image tags should point: `staging`, and a release's floating `1.2` and `1`. Pure: no I/O.

Builds push only immutable tags (`sha-<12>`, `1.2.3`); this decides, and `builds/tag_mover.py` carries out by a
registry manifest PUT, which build's image each mutable tag serves. The rules:

- `staging` follows the build planned LAST for the watched branch, and only once that build succeeded. A build
  overtaken by a newer plan (while queued, running, retried or re-run after a crash) never moves it, so staging
  never goes back to an older plan; a force-push back to an old commit is a newer plan, and moves it.
- `1.2` and `1` follow the highest released version (pre-releases never count) among the succeeded release builds;
  a re-built tag (the tag moved) wins over its older build. They never move back: not below the position recorded,
  nor below the version the registry says the tag holds now (`held`, read from its version label).
- A held repository (an operator's hold, or a rollback) moves no mutable tag at all until the hold ends; then the
  same rules bring `staging` and the floating tags to the newest built head and release.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import semver

from polling_server.planning.model import BuildKind, BuildStatus
from polling_server.planning.versions import parse_release_tag

STAGING_TAG = "staging"


@dataclass(frozen=True)
class BuiltImage:
    """What the decision needs of one build: its identity, state and pushed image."""

    id: int
    kind: BuildKind
    ref: str
    sha: str
    status: BuildStatus
    digest: str | None
    version: str | None = None


@dataclass(frozen=True)
class Position:
    """Where a mutable tag serves now, as last recorded."""

    build_id: int
    digest: str
    version: str | None = None


@dataclass(frozen=True)
class TagMove:
    tag: str
    build_id: int
    sha: str
    digest: str
    version: str | None
    previous_build_id: int | None
    reason: str


def staging_target(branch: str, latest: BuiltImage | None) -> BuiltImage | None:
    """The build `staging` should serve: the last planned build of `branch`, once it succeeded; else none."""
    if latest is None or latest.kind is not BuildKind.STAGING or latest.ref != branch:
        return None
    if latest.status is not BuildStatus.SUCCEEDED or not latest.digest:
        return None
    return latest


def floating_targets(releases: Iterable[BuiltImage]) -> dict[str, tuple[semver.Version, BuiltImage]]:
    """`M.m` and `M` → the highest released version's build (later build of the same version wins)."""
    best: dict[str, tuple[semver.Version, BuiltImage]] = {}
    for build in releases:
        if build.kind is not BuildKind.RELEASE or build.status is not BuildStatus.SUCCEEDED or not build.digest:
            continue
        version = parse_release_tag(build.version or "") or parse_release_tag(build.ref)
        if version is None or version.prerelease:
            continue
        for tag in (f"{version.major}.{version.minor}", f"{version.major}"):
            held = best.get(tag)
            if held is None or (version, build.id) > (held[0], held[1].id):
                best[tag] = (version, build)
    return best


def plan_tag_moves(*, branch: str, latest_staging: BuiltImage | None, releases: Iterable[BuiltImage],
                   floating: bool, positions: Mapping[str, Position],
                   held: Mapping[str, semver.Version | None] | None = None,
                   frozen: Iterable[str] = (), on_hold: bool = False) -> list[TagMove]:
    """The mutable-tag moves that bring the registry to the rules above.

    `positions`: where each tag was last moved. `held`: the version each floating tag's image carries in the
    registry now, when known (a guard for a lost or older state). `frozen`: tags to keep where they are;
    `on_hold`: keep every tag where it is.
    """
    if on_hold:
        return []
    frozen = set(frozen)
    held = held or {}
    moves: list[TagMove] = []

    target = staging_target(branch, latest_staging)
    current = positions.get(STAGING_TAG)
    if target is not None and STAGING_TAG not in frozen and (
            current is None or current.build_id != target.id or current.digest != target.digest):
        moves.append(TagMove(STAGING_TAG, target.id, target.sha, target.digest or "", None,
                             current.build_id if current else None,
                             f"build {target.id} is the newest planned build of {branch}"))

    if floating:
        for tag, (version, build) in sorted(floating_targets(releases).items()):
            if tag in frozen:
                continue
            current = positions.get(tag)
            if current is not None and current.build_id == build.id and current.digest == build.digest:
                continue
            recorded = parse_release_tag(current.version or "") if current and current.version else None
            registry_version = held.get(tag)
            if any(v is not None and v.compare(version) > 0 for v in (recorded, registry_version)):
                continue  # never back to an older version
            moves.append(TagMove(tag, build.id, build.sha, build.digest or "", str(version),
                                 current.build_id if current else None,
                                 f"{version} is the highest release of {tag}"))
    return moves
