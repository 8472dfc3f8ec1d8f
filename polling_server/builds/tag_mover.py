"""Moves the mutable image tags (`staging`, `1.2`, `1`) to the image the pure decision names
(planning/tags.py), by a registry manifest PUT: the manifest the build pushed, read back by its digest and put
under the tag. No engine is involved, so it takes one GET and one PUT per tag.

It runs after every build outcome of a repository, at start-up and on a short schedule, so a move that failed
(registry down) is retried and a crash between a build and its move costs nothing. The position is recorded after
the registry confirms it (HEAD of the tag → the digest), never before. Dry runs never construct one.
"""

from __future__ import annotations

import logging
import threading

from polling_server.builds.registry import RegistryClient, RegistryError
from polling_server.config import RepositorySettings, Settings
from polling_server.logs import log_event
from polling_server.metrics import Metrics
from polling_server.planning.model import BuildKind
from polling_server.planning.tags import BuiltImage, Position, TagMove, plan_tag_moves
from polling_server.planning.versions import parse_release_tag
from polling_server.state import BuildRecord, StateStore

log = logging.getLogger(__name__)


def built_image(b: BuildRecord) -> BuiltImage:
    return BuiltImage(b.id, b.kind, b.ref, b.sha, b.status, b.digest, b.version)


class TagMover:
    def __init__(self, settings: Settings, store: StateStore, registry: RegistryClient, metrics: Metrics):
        self.settings = settings
        self.store = store
        self.registry = registry
        self.metrics = metrics
        self._lock = threading.Lock()  # one repository's moves at a time: decisions read what the last one wrote


    def plan(self, repo: RepositorySettings) -> list[TagMove]:
        latest = self.store.latest_build(repo.name, BuildKind.STAGING, repo.branch)
        releases = [built_image(b) for b in self.store.succeeded_builds(repo.name, BuildKind.RELEASE)] \
            if repo.floating_tags else []
        positions = {t: Position(p.build_id, p.digest, p.version)
                     for t, p in self.store.tag_positions(repo.name).items()}
        kwargs = dict(branch=repo.branch, latest_staging=built_image(latest) if latest else None,
                      releases=releases, floating=repo.floating_tags, positions=positions,
                      on_hold=self.store.hold(repo.name) is not None)  # read each time: `hold` obeys at once
        moves = plan_tag_moves(**kwargs)
        floating = [m.tag for m in moves if m.version is not None]
        if not floating:
            return moves
        # Floating tags never move back, even past a lost state: ask the registry what each holds now.
        held = {}
        for tag in floating:
            label = self.registry.image_version(repo.image, tag)
            held[tag] = parse_release_tag(label) if label else None
        return plan_tag_moves(**kwargs, held=held)

    def reconcile(self, repo_name: str) -> list[TagMove]:
        """Bring one repository's mutable tags to where the decision says; returns the moves made."""
        try:
            repo = self.settings.repository(repo_name)
        except KeyError:
            return []
        with self._lock:
            try:
                moves = self.plan(repo)
            except RegistryError as e:
                self._failed(repo, "*", str(e))
                return []
            done = []
            for move in moves:
                try:
                    self._move(repo, move)
                except RegistryError as e:
                    self._failed(repo, move.tag, str(e))
                    continue
                done.append(move)
            return done

    def reconcile_all(self) -> list[TagMove]:
        moved: list[TagMove] = []
        for repo in self.settings.repositories:
            moved.extend(self.reconcile(repo.name))
        return moved

    def _move(self, repo: RepositorySettings, move: TagMove) -> None:
        found = self.registry.raw_manifest(repo.image, move.digest)
        if found is None:
            raise RegistryError(f"the registry no longer holds {repo.image}@{move.digest}")
        body, media_type = found
        self.registry.put_manifest(repo.image, move.tag, body, media_type)
        served = self.registry.manifest_digest(repo.image, move.tag)
        if served != move.digest:
            raise RegistryError(f"after the move {repo.image}:{move.tag} serves {served or 'nothing'}, "
                                f"not {move.digest}")
        self.store.record_tag_position(repo.name, move.tag, self.store.build(move.build_id), move.digest)
        self.metrics.tag_moves.labels("moved").inc()
        log_event(log, "image_tag.moved", repo=repo.name, tag=move.tag, sha=move.sha, digest=move.digest,
                  build_id=move.build_id, previous_build_id=move.previous_build_id, reason=move.reason)

    def _failed(self, repo: RepositorySettings, tag: str, reason: str) -> None:
        self.metrics.tag_moves.labels("failed").inc()
        log_event(log, "image_tag.move_failed", "warning", reason, repo=repo.name, tag=tag, reason=reason,
                  will_retry=True)
