"""Typed values passed between the poller's rooms: what sources observed, what is stored, what the planner decided.

Sources produce `Observation`s and `ChartIndex`es; the planner turns them plus stored state into plans; executors
carry plans out. Everything here is immutable plain data with no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class BuildKind(StrEnum):
    STAGING = "staging"  # a push (merge) to the watched branch
    RELEASE = "release"  # a semver tag


class BuildStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SUPERSEDED = "superseded"
    AWAITING_APPROVAL = "awaiting_approval"  # a new major release waits for `polling-server approve`
    REJECTED = "rejected"  # a gated release an operator rejected (or whose tag went away before approval)


@dataclass(frozen=True)
class Observation:
    """What one poll saw of one repository.

    `branch_head` is meaningful only when `branch_checked` (None then means the branch does not exist).
    `tags` maps every tag name to the commit it points to (annotated tags already peeled), or is None when the
    source did not list tags this poll.
    """

    branch_checked: bool = False
    branch_head: str | None = None
    tags: Mapping[str, str] | None = None


@dataclass(frozen=True)
class RepoState:
    """What the poller has accepted as the truth of a repository, and planned from. Saved with the plan."""

    baseline: bool = False
    branch_head: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BuildRequest:
    """One image build the planner asks for: `ref` is the branch (staging) or the tag name (release)."""

    repo: str
    kind: BuildKind
    ref: str
    sha: str
    version: str | None = None  # the normalised semver of a release tag ("1.2.3" for tag "v1.2.3")
    gated: bool = False  # a new major of a repository with approve_major: it waits for an approval


@dataclass(frozen=True)
class Decision:
    """A decision worth a log line: `event` is the log event name (build.planned, tag.ignored, ...)."""

    event: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    level: str = "info"


@dataclass(frozen=True)
class RepoPlan:
    builds: tuple[BuildRequest, ...]
    new_state: RepoState
    decisions: tuple[Decision, ...]
    deleted_tags: tuple[str, ...] = ()


# --- charts -------------------------------------------------------------------------------------------------
ChartKey = tuple[str, str]  # (chart name, version as written in the index)


@dataclass(frozen=True)
class ChartState:
    """The chart versions seen in the Helm repository: (name, version) -> digest."""

    baseline: bool = False
    versions: Mapping[ChartKey, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ChartChange:
    name: str
    version: str
    digest: str
    change: str  # "added" or "repushed"

    def describe(self) -> str:
        return f"{self.name}-{self.version} ({self.change})"


@dataclass(frozen=True)
class ChartPlan:
    changes: tuple[ChartChange, ...]
    removed: tuple[ChartKey, ...]
    new_state: ChartState
    decisions: tuple[Decision, ...]

    @property
    def apply_needed(self) -> bool:
        return bool(self.changes)
