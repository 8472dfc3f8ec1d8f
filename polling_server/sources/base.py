"""What every repository source returns from one poll, and the interface the poll cycle calls."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from polling_server.config import RepositorySettings
from polling_server.planning.model import Observation, RepoState
from polling_server.state import Cursor


class CursorReader(Protocol):
    def cursor(self, key: str) -> Cursor: ...

    def tag_commit(self, tag_object_sha: str) -> str | None: ...


@dataclass(frozen=True)
class SourcePoll:
    """One poll of one repository: what was observed, and what to save with the plan made from it."""

    observation: Observation
    cursors: dict[str, Cursor] = field(default_factory=dict)
    tag_objects: dict[str, str] = field(default_factory=dict)
    poll_interval: float | None = None  # the server's X-Poll-Interval, seconds
    counted_requests: int = 0  # requests that counted against a rate limit
    not_modified: int = 0  # conditional requests answered 304
    skipped: tuple[str, ...] = ()  # malformed items skipped, with why


class RepositorySource(Protocol):
    kind: str

    def poll(self, repo: RepositorySettings, cursors: CursorReader, state: RepoState, reconcile: bool) -> SourcePoll:
        """Observe `repo`. `reconcile` asks for the refs themselves (branch head and every tag), not just events."""
        ...
