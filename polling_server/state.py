"""The poller's durable state, in one embedded SQLite database (`state_path`).

What is stored: per repository the accepted truth (baseline, branch head, tags) and the HTTP cursors (ETags, last
event seen); the build queue with each build's outcome; per chart repository the versions seen; the queue of apply
requests to the Helm API. Crash safety comes from transactions: a poll's new truth, its cursors and the builds it
planned are written in ONE transaction, so a crash before it loses nothing (the next poll sees the same change
again) and a crash after it repeats nothing (the change is no longer new and the builds are queued). A build is
marked running before it starts and finished after its push is confirmed; a build found running at start-up was
interrupted and is queued again.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from polling_server.planning.model import (
    BuildKind,
    BuildRequest,
    BuildStatus,
    ChartChange,
    ChartPlan,
    ChartState,
    RepoPlan,
    RepoState,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS repos (
    name TEXT PRIMARY KEY,
    baseline INTEGER NOT NULL,
    branch_head TEXT,
    tags TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS cursors (
    key TEXT PRIMARY KEY,
    etag TEXT,
    last_modified TEXT,
    value TEXT,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tag_objects (
    sha TEXT PRIMARY KEY,
    commit_sha TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS builds (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    repo TEXT NOT NULL,
    kind TEXT NOT NULL,
    ref TEXT NOT NULL,
    sha TEXT NOT NULL,
    version TEXT,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    next_attempt_at REAL NOT NULL,
    error TEXT,
    pushed_tags TEXT,
    digest TEXT,
    superseded_by INTEGER,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS builds_by_status ON builds (status, next_attempt_at);
CREATE INDEX IF NOT EXISTS builds_by_repo ON builds (repo, id);
CREATE TABLE IF NOT EXISTS charts (
    repo_url TEXT PRIMARY KEY,
    baseline INTEGER NOT NULL,
    versions TEXT NOT NULL,
    index_hash TEXT,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS applies (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL UNIQUE,
    changes TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    rejected_fingerprint TEXT,
    job TEXT,
    job_state TEXT,
    created_at REAL NOT NULL,
    accepted_at REAL
);
"""


@dataclass(frozen=True)
class Cursor:
    """A conditional-request cursor: the validators last received, and the value they stand for."""

    etag: str | None = None
    last_modified: str | None = None
    value: str | None = None


@dataclass(frozen=True)
class BuildRecord:
    id: int
    repo: str
    kind: BuildKind
    ref: str
    sha: str
    version: str | None
    status: BuildStatus
    attempts: int
    max_attempts: int
    next_attempt_at: float
    error: str | None
    pushed_tags: tuple[str, ...]
    digest: str | None
    superseded_by: int | None
    created_at: float
    started_at: float | None
    finished_at: float | None

    @property
    def request(self) -> BuildRequest:
        return BuildRequest(self.repo, self.kind, self.ref, self.sha, self.version)


@dataclass(frozen=True)
class ApplyRecord:
    id: int
    request_id: str
    changes: tuple[ChartChange, ...]
    status: str  # pending | accepted | rejected
    attempts: int
    next_attempt_at: float
    last_error: str | None
    rejected_fingerprint: str | None
    job: str | None
    job_state: str | None
    created_at: float
    accepted_at: float | None

class StateStore:
    """All reads and writes of the state database. Safe to share between threads."""

    def __init__(self, path: str | Path, clock=time.time):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # --- repositories ------------------------------------------------------------------------------------
    def repo_state(self, name: str) -> RepoState:
        rows = self._query("SELECT baseline, branch_head, tags FROM repos WHERE name = ?", (name,))
        if not rows:
            return RepoState()
        r = rows[0]
        return RepoState(bool(r["baseline"]), r["branch_head"], json.loads(r["tags"]))

    def cursor(self, key: str) -> Cursor:
        rows = self._query("SELECT etag, last_modified, value FROM cursors WHERE key = ?", (key,))
        return Cursor(rows[0]["etag"], rows[0]["last_modified"], rows[0]["value"]) if rows else Cursor()

    def tag_commit(self, tag_object_sha: str) -> str | None:
        """The commit an annotated tag object points to, if resolved before (tag objects are immutable)."""
        rows = self._query("SELECT commit_sha FROM tag_objects WHERE sha = ?", (tag_object_sha,))
        return rows[0]["commit_sha"] if rows else None

    def save_poll(self, repo: str, plan: RepoPlan | None, cursors: Mapping[str, Cursor] | None = None,
                  tag_objects: Mapping[str, str] | None = None, max_attempts: int = 1) -> list[int]:
        """Record one poll atomically: the new truth, the builds planned from it, and the cursors that got it."""
        now = self._clock()
        ids: list[int] = []
        with self._tx() as db:
            if plan is not None:
                s = plan.new_state
                db.execute(
                    "INSERT INTO repos (name, baseline, branch_head, tags, updated_at) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET baseline = excluded.baseline, "
                    "branch_head = excluded.branch_head, tags = excluded.tags, updated_at = excluded.updated_at",
                    (repo, int(s.baseline), s.branch_head, json.dumps(dict(s.tags), sort_keys=True), now),
                )
                for build in plan.builds:
                    ids.append(self._enqueue(db, build, max_attempts, now))
            for key, c in (cursors or {}).items():
                db.execute(
                    "INSERT INTO cursors (key, etag, last_modified, value, updated_at) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET etag = excluded.etag, last_modified = excluded.last_modified, "
                    "value = excluded.value, updated_at = excluded.updated_at",
                    (key, c.etag, c.last_modified, c.value, now),
                )
            for sha, commit in (tag_objects or {}).items():
                db.execute("INSERT OR REPLACE INTO tag_objects (sha, commit_sha) VALUES (?, ?)", (sha, commit))
        return ids


    # --- builds ------------------------------------------------------------------------------------------
    @staticmethod
    def _enqueue(db: sqlite3.Connection, build: BuildRequest, max_attempts: int, now: float) -> int:
        cur = db.execute(
            "INSERT INTO builds (repo, kind, ref, sha, version, status, max_attempts, next_attempt_at, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (build.repo, build.kind.value, build.ref, build.sha, build.version, BuildStatus.QUEUED.value,
             max_attempts, now, now),
        )
        new_id = cur.lastrowid
        # A newer build of the same branch (staging) or the same tag (moved tag) makes older waiting ones moot.
        db.execute(
            "UPDATE builds SET status = ?, superseded_by = ?, finished_at = ? "
            "WHERE repo = ? AND kind = ? AND ref = ? AND id < ? AND status IN (?, ?)",
            (BuildStatus.SUPERSEDED.value, new_id, now, build.repo, build.kind.value, build.ref, new_id,
             BuildStatus.QUEUED.value, BuildStatus.FAILED.value),
        )
        return new_id

    def superseded_by(self, build_id: int) -> list[BuildRecord]:
        return self._builds("WHERE superseded_by = ?", (build_id,))

    def claim_build(self, due_by: float | None = None) -> BuildRecord | None:
        """Mark the next due build running and return it; at most one running build per repository.

        `due_by`: only a build that was already due at that time (a run that must not pick up retries it caused).
        """
        now = self._clock()
        cutoff = now if due_by is None else min(now, due_by)
        with self._tx() as db:
            row = db.execute(
                "SELECT id FROM builds WHERE status = ? AND next_attempt_at <= ? AND repo NOT IN "
                "(SELECT repo FROM builds WHERE status = ?) ORDER BY next_attempt_at, id LIMIT 1",
                (BuildStatus.QUEUED.value, cutoff, BuildStatus.RUNNING.value),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE builds SET status = ?, attempts = attempts + 1, started_at = ?, error = NULL WHERE id = ?",
                (BuildStatus.RUNNING.value, now, row["id"]),
            )
        return self.build(row["id"])

    def finish_build(self, build_id: int, pushed_tags: list[str], digest: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE builds SET status = ?, pushed_tags = ?, digest = ?, finished_at = ?, error = NULL "
                "WHERE id = ?",
                (BuildStatus.SUCCEEDED.value, json.dumps(pushed_tags), digest, self._clock(), build_id),
            )

    def fail_build(self, build_id: int, error: str, retry_in: float | None) -> BuildStatus:
        """Record a failed attempt: queued again after `retry_in` seconds if attempts remain, else failed."""
        now = self._clock()
        with self._tx() as db:
            row = db.execute("SELECT attempts, max_attempts FROM builds WHERE id = ?", (build_id,)).fetchone()
            retry = retry_in is not None and row["attempts"] < row["max_attempts"]
            status = BuildStatus.QUEUED if retry else BuildStatus.FAILED
            db.execute(
                "UPDATE builds SET status = ?, error = ?, next_attempt_at = ?, finished_at = ? WHERE id = ?",
                (status.value, error[:4000], now + (retry_in or 0), None if retry else now, build_id),
            )
        return status

    def requeue_interrupted(self) -> list[BuildRecord]:
        """At start-up: builds left running by a crash run again (the attempt did not count)."""
        interrupted = self._builds("WHERE status = ?", (BuildStatus.RUNNING.value,))
        with self._tx() as db:
            db.execute(
                "UPDATE builds SET status = ?, attempts = MAX(attempts - 1, 0), next_attempt_at = ? WHERE status = ?",
                (BuildStatus.QUEUED.value, self._clock(), BuildStatus.RUNNING.value),
            )
        return interrupted

    def build(self, build_id: int) -> BuildRecord:
        return self._builds("WHERE id = ?", (build_id,))[0]

    def builds(self, repo: str | None = None, status: BuildStatus | None = None, limit: int = 100) -> list[BuildRecord]:
        clauses, args = [], []
        if repo is not None:
            clauses.append("repo = ?")
            args.append(repo)
        if status is not None:
            clauses.append("status = ?")
            args.append(status.value)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        return self._builds(f"{where} ORDER BY id DESC LIMIT ?", (*args, limit))

    def waiting_builds(self) -> int:
        rows = self._query("SELECT COUNT(*) AS n FROM builds WHERE status IN (?, ?)",
                           (BuildStatus.QUEUED.value, BuildStatus.RUNNING.value))
        return rows[0]["n"]

    def _builds(self, tail: str, args: tuple) -> list[BuildRecord]:
        rows = self._query(f"SELECT * FROM builds {tail}", args)  # noqa: S608 - tail is built from constants
        return [
            BuildRecord(
                id=r["id"], repo=r["repo"], kind=BuildKind(r["kind"]), ref=r["ref"], sha=r["sha"],
                version=r["version"], status=BuildStatus(r["status"]), attempts=r["attempts"],
                max_attempts=r["max_attempts"], next_attempt_at=r["next_attempt_at"], error=r["error"],
                pushed_tags=tuple(json.loads(r["pushed_tags"] or "[]")), digest=r["digest"],
                superseded_by=r["superseded_by"], created_at=r["created_at"], started_at=r["started_at"],
                finished_at=r["finished_at"],
            )
            for r in rows
        ]

    # --- charts and apply requests -----------------------------------------------------------------------
    def chart_state(self, repo_url: str) -> tuple[ChartState, str | None]:
        """The stored chart versions and the hash of the index they came from."""
        rows = self._query("SELECT baseline, versions, index_hash FROM charts WHERE repo_url = ?", (repo_url,))
        if not rows:
            return ChartState(), None
        versions = {(n, v): d for n, v, d in json.loads(rows[0]["versions"])}
        return ChartState(bool(rows[0]["baseline"]), versions), rows[0]["index_hash"]

    def save_charts(self, repo_url: str, plan: ChartPlan, index_hash: str | None) -> ApplyRecord | None:
        """Record a chart poll atomically with the apply request it calls for (merged into one not yet sent)."""
        now = self._clock()
        versions = sorted([n, v, d] for (n, v), d in plan.new_state.versions.items())
        apply_id = None
        with self._tx() as db:
            db.execute(
                "INSERT INTO charts (repo_url, baseline, versions, index_hash, updated_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(repo_url) DO UPDATE SET baseline = excluded.baseline, versions = excluded.versions, "
                "index_hash = excluded.index_hash, updated_at = excluded.updated_at",
                (repo_url, int(plan.new_state.baseline), json.dumps(versions), index_hash, now),
            )
            if plan.changes:
                # Merge only into a request never sent: one already sent may have been accepted under its id.
                row = db.execute(
                    "SELECT id, changes FROM applies WHERE status = 'pending' AND attempts = 0 ORDER BY id LIMIT 1"
                ).fetchone()
                new = [_change_to_json(c) for c in plan.changes]
                if row:
                    merged = json.loads(row["changes"]) + new
                    db.execute("UPDATE applies SET changes = ? WHERE id = ?", (json.dumps(merged), row["id"]))
                    apply_id = row["id"]
                else:
                    apply_id = db.execute(
                        "INSERT INTO applies (request_id, changes, status, next_attempt_at, created_at) "
                        "VALUES (?, ?, 'pending', ?, ?)",
                        (uuid.uuid4().hex, json.dumps(new), now, now),
                    ).lastrowid
        return self.apply(apply_id) if apply_id else None

    def save_index_hash(self, repo_url: str, index_hash: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE charts SET index_hash = ?, updated_at = ? WHERE repo_url = ?",
                       (index_hash, self._clock(), repo_url))

    def due_apply(self, fingerprint: str) -> ApplyRecord | None:
        """The oldest apply request to send now: pending and due, or rejected under another configuration."""
        rows = self._query(
            "SELECT id FROM applies WHERE (status = 'pending' AND next_attempt_at <= ?) "
            "OR (status = 'rejected' AND rejected_fingerprint IS NOT ?) ORDER BY id LIMIT 1",
            (self._clock(), fingerprint),
        )
        return self.apply(rows[0]["id"]) if rows else None

    def apply_attempted(self, apply_id: int) -> None:
        """Count an attempt before sending: from now on the request id may be known to the Helm API."""
        with self._tx() as db:
            db.execute("UPDATE applies SET attempts = attempts + 1 WHERE id = ?", (apply_id,))

    def apply_accepted(self, apply_id: int, job: str | None, job_state: str | None) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE applies SET status = 'accepted', job = ?, job_state = ?, accepted_at = ?, last_error = NULL "
                "WHERE id = ?",
                (job, job_state, self._clock(), apply_id),
            )

    def apply_retry(self, apply_id: int, error: str, retry_in: float) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE applies SET status = 'pending', last_error = ?, next_attempt_at = ? WHERE id = ?",
                (error[:2000], self._clock() + retry_in, apply_id),
            )

    def apply_rejected(self, apply_id: int, error: str, fingerprint: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE applies SET status = 'rejected', last_error = ?, rejected_fingerprint = ? WHERE id = ?",
                (error[:2000], fingerprint, apply_id),
            )

    def apply(self, apply_id: int) -> ApplyRecord:
        return self._applies("WHERE id = ?", (apply_id,))[0]

    def applies(self, limit: int = 50) -> list[ApplyRecord]:
        return self._applies("ORDER BY id DESC LIMIT ?", (limit,))

    def _applies(self, tail: str, args: tuple) -> list[ApplyRecord]:
        rows = self._query(f"SELECT * FROM applies {tail}", args)  # noqa: S608 - tail is built from constants
        return [
            ApplyRecord(
                id=r["id"], request_id=r["request_id"],
                changes=tuple(ChartChange(**c) for c in json.loads(r["changes"])), status=r["status"],
                attempts=r["attempts"], next_attempt_at=r["next_attempt_at"], last_error=r["last_error"],
                rejected_fingerprint=r["rejected_fingerprint"], job=r["job"], job_state=r["job_state"],
                created_at=r["created_at"], accepted_at=r["accepted_at"],
            )
            for r in rows
        ]


def _change_to_json(c: ChartChange) -> dict:
    return {"name": c.name, "version": c.version, "digest": c.digest, "change": c.change}
