"""The poller's durable state, in one embedded SQLite database (`state_path`).

What is stored: per repository the accepted truth (baseline, branch head, tags) and the HTTP cursors (ETags, last
event seen); the build queue with each build's outcome; per chart repository the versions seen; the queue of apply
requests to the Helm API. Crash safety comes from transactions: a poll's new truth, its cursors and the builds it
planned are written in ONE transaction, so a crash before it loses nothing (the next poll sees the same change
again) and a crash after it repeats nothing (the change is no longer new and the builds are queued). A build is
marked running before it starts and finished after its push is confirmed; a build found running at start-up was
interrupted and is queued again. A claim is a lease: a running build whose lease expired (its outcome could not be
written, or its worker is gone) is due again, so one failed write never blocks a repository.

The schema is versioned (`PRAGMA user_version`, see MIGRATIONS): an older database is migrated forward in one
transaction when it is opened, a newer one is refused. A file that is not a readable state database is refused
with one line naming it (StateError), before anything is written to it.
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

from polling_server.errors import OperatorError, StateError
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

# Version 1: the schema as first released (no user_version was set then).
_SCHEMA_V1 = """
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

# Each entry takes the database from version N-1 to N; applied in order, in one transaction.
MIGRATIONS: tuple[str, ...] = (
    _SCHEMA_V1,
    """
    ALTER TABLE builds ADD COLUMN lease_expires_at REAL;
    CREATE TABLE tag_positions (
        repo TEXT NOT NULL,
        tag TEXT NOT NULL,
        build_id INTEGER NOT NULL,
        sha TEXT NOT NULL,
        digest TEXT NOT NULL,
        version TEXT,
        moved_at REAL NOT NULL,
        PRIMARY KEY (repo, tag)
    );
    """,
    """
    CREATE TABLE deliveries (
        key TEXT PRIMARY KEY,
        received_at REAL NOT NULL
    );
    CREATE INDEX deliveries_by_time ON deliveries (received_at);
    """,
    """
    CREATE TABLE holds (
        repo TEXT PRIMARY KEY,
        reason TEXT,
        held_by TEXT NOT NULL,
        held_at REAL NOT NULL,
        rollback_id INTEGER
    );
    CREATE TABLE rollbacks (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        repo TEXT NOT NULL,
        tag TEXT NOT NULL,
        by TEXT NOT NULL,
        from_build INTEGER,
        from_sha TEXT,
        from_digest TEXT,
        to_build INTEGER NOT NULL,
        to_sha TEXT NOT NULL,
        to_digest TEXT NOT NULL,
        at REAL NOT NULL
    );
    ALTER TABLE builds ADD COLUMN decided_by TEXT;
    """,
    # Chart-index validators saved before the weak-validator rule may hold a Last-Modified from the same second
    # as the index it came with, which can hide a newer index forever: the next poll downloads the index once.
    """
    UPDATE cursors SET etag = NULL, last_modified = NULL WHERE key LIKE 'chart-index:%';
    """,
    # Visibility: per-build logs (chunks at their byte offset in the build's output), what was last reported of
    # each build and apply (commit statuses, notifications), the outbox those reports go through; and the
    # reference a build backend keeps for a build (a Kubernetes Job's name).
    """
    CREATE TABLE build_logs (
        build_id INTEGER NOT NULL,
        pos INTEGER NOT NULL,
        text TEXT NOT NULL,
        PRIMARY KEY (build_id, pos)
    );
    ALTER TABLE builds ADD COLUMN log_bytes INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE builds ADD COLUMN log_kept_from INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE builds ADD COLUMN log_complete INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE builds ADD COLUMN reported_status TEXT;
    ALTER TABLE builds ADD COLUMN backend_ref TEXT;
    ALTER TABLE applies ADD COLUMN reported_state TEXT;
    ALTER TABLE applies ADD COLUMN job_followed_at REAL;
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        channel TEXT NOT NULL,
        target TEXT NOT NULL,
        dedupe_key TEXT NOT NULL UNIQUE,
        payload TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        last_error TEXT,
        created_at REAL NOT NULL,
        sent_at REAL
    );
    CREATE INDEX outbox_due ON outbox (status, next_attempt_at);
    """,
)
MAX_DELIVERIES = 10_000  # webhook delivery ids kept for deduplication (the oldest are dropped)
SCHEMA_VERSION = len(MIGRATIONS)


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
    lease_expires_at: float | None = None

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

@dataclass(frozen=True)
class TagPosition:
    """Where the poller last moved a mutable image tag (`staging`, `1.2`, `1`): to which build's image."""

    repo: str
    tag: str
    build_id: int
    sha: str
    digest: str
    version: str | None
    moved_at: float


@dataclass(frozen=True)
class Hold:
    """A repository whose mutable tags must not move: held by an operator, or by a rollback."""

    repo: str
    reason: str | None
    by: str
    at: float
    rollback_id: int | None


def _put_position(db: sqlite3.Connection, repo: str, tag: str, build: BuildRecord, digest: str, now: float) -> None:
    db.execute(
        "INSERT INTO tag_positions (repo, tag, build_id, sha, digest, version, moved_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT(repo, tag) DO UPDATE SET build_id = excluded.build_id, sha = excluded.sha, "
        "digest = excluded.digest, version = excluded.version, moved_at = excluded.moved_at",
        (repo, tag, build.id, build.sha, digest, build.version, now))


def _put_hold(db: sqlite3.Connection, repo: str, reason: str | None, by: str, now: float,
              rollback_id: int | None) -> None:
    db.execute("INSERT INTO holds (repo, reason, held_by, held_at, rollback_id) VALUES (?, ?, ?, ?, ?) "
               "ON CONFLICT(repo) DO UPDATE SET reason = excluded.reason, held_by = excluded.held_by, "
               "held_at = excluded.held_at, rollback_id = excluded.rollback_id",
               (repo, reason, by, now, rollback_id))


def _hold(r: sqlite3.Row) -> Hold:
    return Hold(r["repo"], r["reason"], r["held_by"], r["held_at"], r["rollback_id"])


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


@dataclass(frozen=True)
class OutboxItem:
    """One report to send: a commit status (`channel` "commit_status", `target` the repository) or a notification
    (`channel` "notification", `target` the notification target). `dedupe_key` makes it at most once per change."""

    channel: str
    target: str
    dedupe_key: str
    payload: dict


@dataclass(frozen=True)
class OutboxRow:
    id: int
    channel: str
    target: str
    dedupe_key: str
    payload: dict
    status: str  # pending | sent | failed
    attempts: int
    next_attempt_at: float
    last_error: str | None
    created_at: float
    sent_at: float | None


def _outbox(r: sqlite3.Row) -> OutboxRow:
    return OutboxRow(r["id"], r["channel"], r["target"], r["dedupe_key"], json.loads(r["payload"]), r["status"],
                     r["attempts"], r["next_attempt_at"], r["last_error"], r["created_at"], r["sent_at"])


def _statements(script: str) -> list[str]:
    return [part.strip() for part in script.split(";") if part.strip()]


def check_database_file(path: str) -> int:
    """Read-only checks of an existing state file: readable, intact, not from a newer schema. Returns its version.

    Opens the file read-only, so a file that fails here is never changed.
    """
    try:
        db = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error as e:
        raise StateError(f"{path}: cannot open the state database ({e})") from e
    try:
        problems = [row[0] for row in db.execute("PRAGMA quick_check(3)").fetchall()]
        if problems != ["ok"]:
            raise StateError(f"{path}: the state database is damaged ({'; '.join(problems)[:300]})")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as e:
        raise StateError(f"{path}: not a readable state database ({e})") from e
    finally:
        db.close()
    if version == 0 and tables and "repos" not in tables:
        raise StateError(f"{path}: an SQLite database, but not a polling-server state database")
    if version == 0 and "repos" in tables:
        version = 1  # the first release recorded no version
    if version > SCHEMA_VERSION:
        raise StateError(f"{path}: written by a newer polling-server (schema {version}; this one knows up to "
                         f"{SCHEMA_VERSION}): refusing to use it")
    return version


def migrate(db: sqlite3.Connection, path: str) -> None:
    """Bring the schema to SCHEMA_VERSION in one transaction (nothing changes when a step fails)."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version == 0 and db.execute("SELECT 1 FROM sqlite_master WHERE name = 'repos'").fetchone():
        version = 1
    if version > SCHEMA_VERSION:
        raise StateError(f"{path}: written by a newer polling-server (schema {version}; this one knows up to "
                         f"{SCHEMA_VERSION}): refusing to use it")
    if version == SCHEMA_VERSION:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        for script in MIGRATIONS[version:]:
            for statement in _statements(script):
                db.execute(statement)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except sqlite3.Error as e:
        db.execute("ROLLBACK")
        raise StateError(f"{path}: cannot migrate the state database to schema {SCHEMA_VERSION} ({e})") from e
    db.execute("COMMIT")


class StateStore:
    """All reads and writes of the state database. Safe to share between threads.

    `path` is created (with its directory) when it does not exist. Every problem opening it is a StateError.
    """

    def __init__(self, path: str | Path, clock=time.time, *, busy_timeout: float = 30.0,
                 _connection: sqlite3.Connection | None = None):
        self.path = str(path)
        self._clock = clock
        self._lock = threading.RLock()
        self.last_write_error: str | None = None  # the last failed write, until a write succeeds again
        if _connection is not None:
            self._db = _connection
        else:
            if self.path != ":memory:":
                if Path(self.path).exists():
                    check_database_file(self.path)
                try:
                    Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    raise StateError(f"{self.path}: cannot create its directory ({e.strerror})") from e
            try:
                self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                           timeout=busy_timeout)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
            except sqlite3.Error as e:
                raise StateError(f"{self.path}: cannot open the state database for writing ({e})") from e
        self._db.row_factory = sqlite3.Row
        migrate(self._db, self.path)

    @classmethod
    def in_memory_copy(cls, path: str | Path, clock=time.time) -> StateStore:
        """The stored state copied into memory; nothing is ever written to `path` (dry runs, `status`).

        A missing file gives an empty state (and is not created).
        """
        memory = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        if Path(path).exists():
            check_database_file(str(path))
            try:
                source = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, timeout=5)
                try:
                    source.backup(memory)
                finally:
                    source.close()
            except sqlite3.Error as e:
                raise StateError(f"{path}: cannot read the state database ({e})") from e
        store = cls(str(path), clock, _connection=memory)
        return store

    @property
    def writable(self) -> bool:
        """False while the last write failed (disk full, database locked...)."""
        return self.last_write_error is None

    def check_rows(self) -> None:
        """Decode every stored row once (at start-up), so a row that does not decode is reported there, by name."""
        for row in self._query("SELECT name FROM repos"):
            self.repo_state(row["name"])
        self._builds("", ())
        self._applies("", ())
        for row in self._query("SELECT repo_url FROM charts"):
            self.chart_state(row["repo_url"])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.OperationalError as e:
                # Disk full, database locked, read-only file: the write did not happen.
                self.last_write_error = str(e)
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise StateError(f"{self.path}: cannot write the state ({e})") from e
            self.last_write_error = None

    def _query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.DatabaseError as e:
                raise StateError(f"{self.path}: cannot read the state ({e})") from e

    @contextmanager
    def _decoding(self, table: str, key: object = None) -> Iterator[None]:
        """A stored row that does not decode is named, with its table, in one StateError."""
        try:
            yield
        except (ValueError, TypeError, KeyError) as e:
            which = f" row {key!r}" if key is not None else ""
            raise StateError(f"{self.path}: table {table}{which} does not decode ({type(e).__name__}: "
                             f"{str(e)[:200]})") from e

    # --- repositories ------------------------------------------------------------------------------------
    def repo_state(self, name: str) -> RepoState:
        rows = self._query("SELECT baseline, branch_head, tags FROM repos WHERE name = ?", (name,))
        if not rows:
            return RepoState()
        r = rows[0]
        with self._decoding("repos", name):
            tags = json.loads(r["tags"])
            if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
                raise ValueError("tags is not a mapping of names to commits")
            return RepoState(bool(r["baseline"]), r["branch_head"], tags)

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
                for tag in plan.deleted_tags:
                    # A gated release whose tag went away before its approval is dropped, and says why.
                    db.execute("UPDATE builds SET status = ?, error = ?, finished_at = ? WHERE repo = ? AND kind = ? "
                               "AND ref = ? AND status = ?",
                               (BuildStatus.REJECTED.value, "the tag was deleted before approval", now, repo,
                                BuildKind.RELEASE.value, tag, BuildStatus.AWAITING_APPROVAL.value))
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
        status = BuildStatus.AWAITING_APPROVAL if build.gated else BuildStatus.QUEUED
        cur = db.execute(
            "INSERT INTO builds (repo, kind, ref, sha, version, status, max_attempts, next_attempt_at, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (build.repo, build.kind.value, build.ref, build.sha, build.version, status.value,
             max_attempts, now, now),
        )
        new_id = cur.lastrowid
        # A newer build of the same branch (staging) or the same tag (moved tag) makes older waiting ones moot.
        db.execute(
            "UPDATE builds SET status = ?, superseded_by = ?, finished_at = ? "
            "WHERE repo = ? AND kind = ? AND ref = ? AND id < ? AND status IN (?, ?, ?)",
            (BuildStatus.SUPERSEDED.value, new_id, now, build.repo, build.kind.value, build.ref, new_id,
             BuildStatus.QUEUED.value, BuildStatus.FAILED.value, BuildStatus.AWAITING_APPROVAL.value),
        )
        return new_id

    def superseded_by(self, build_id: int) -> list[BuildRecord]:
        return self._builds("WHERE superseded_by = ?", (build_id,))

    def claim_build(self, due_by: float | None = None, lease_seconds: float = 3600.0,
                    superseded: list[int] | None = None) -> BuildRecord | None:
        """Mark the next due build running, under a lease of `lease_seconds`, and return it.

        Due: queued and past its next attempt time, or running under a lease that expired (its outcome was never
        written). At most one build per repository runs under a live lease. A build that a newer plan of the same
        branch or tag overtook is marked superseded here instead of being handed out, so a retry or a restart can
        never build an older commit after a newer one. `due_by`: only builds already due at that time (a run that
        must not pick up the retries it caused). `superseded` collects the ids of the builds marked superseded.
        """
        now = self._clock()
        cutoff = now if due_by is None else min(now, due_by)
        with self._tx() as db:
            while True:
                row = db.execute(
                    "SELECT * FROM builds AS b WHERE ((b.status = ? AND b.next_attempt_at <= ?) "
                    "OR (b.status = ? AND b.lease_expires_at IS NOT NULL AND b.lease_expires_at <= ?)) "
                    "AND b.repo NOT IN (SELECT repo FROM builds WHERE status = ? AND id != b.id "
                    "AND (lease_expires_at IS NULL OR lease_expires_at > ?)) "
                    "ORDER BY b.next_attempt_at, b.id LIMIT 1",
                    (BuildStatus.QUEUED.value, cutoff, BuildStatus.RUNNING.value, now,
                     BuildStatus.RUNNING.value, now),
                ).fetchone()
                if row is None:
                    return None
                if self._supersede_if_overtaken(db, row, now):
                    if superseded is not None:
                        superseded.append(row["id"])
                    continue
                db.execute(
                    "UPDATE builds SET status = ?, attempts = attempts + ?, started_at = ?, error = NULL, "
                    "lease_expires_at = ? WHERE id = ?",
                    # An expired lease is not a new attempt: the build ran, only its outcome was lost.
                    (BuildStatus.RUNNING.value, 0 if row["status"] == BuildStatus.RUNNING.value else 1, now,
                     now + lease_seconds, row["id"]),
                )
                break
        return self.build(row["id"])

    @staticmethod
    def _supersede_if_overtaken(db: sqlite3.Connection, row: sqlite3.Row, now: float) -> bool:
        """Mark `row` superseded when a newer build of the same repository, kind and ref was planned."""
        newer = db.execute(
            "SELECT MAX(id) AS id FROM builds WHERE repo = ? AND kind = ? AND ref = ? AND id > ?",
            (row["repo"], row["kind"], row["ref"], row["id"]),
        ).fetchone()["id"]
        if newer is None:
            return False
        db.execute(
            "UPDATE builds SET status = ?, superseded_by = ?, finished_at = ?, lease_expires_at = NULL WHERE id = ?",
            (BuildStatus.SUPERSEDED.value, newer, now, row["id"]),
        )
        return True

    def finish_build(self, build_id: int, pushed_tags: list[str], digest: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE builds SET status = ?, pushed_tags = ?, digest = ?, finished_at = ?, error = NULL, "
                "lease_expires_at = NULL WHERE id = ?",
                (BuildStatus.SUCCEEDED.value, json.dumps(pushed_tags), digest, self._clock(), build_id),
            )

    def fail_build(self, build_id: int, error: str, retry_in: float | None) -> BuildStatus:
        """Record a failed attempt: queued again after `retry_in` seconds if attempts remain, else failed.

        A build overtaken by a newer plan of its branch or tag is not retried: it ends superseded.
        """
        now = self._clock()
        with self._tx() as db:
            row = db.execute("SELECT * FROM builds WHERE id = ?", (build_id,)).fetchone()
            retry = retry_in is not None and row["attempts"] < row["max_attempts"]
            status = BuildStatus.QUEUED if retry else BuildStatus.FAILED
            db.execute(
                "UPDATE builds SET status = ?, error = ?, next_attempt_at = ?, finished_at = ?, "
                "lease_expires_at = NULL WHERE id = ?",
                (status.value, error[:4000], now + (retry_in or 0), None if retry else now, build_id),
            )
            if self._supersede_if_overtaken(db, row, now):
                status = BuildStatus.SUPERSEDED  # overtaken: neither retried nor a failure of the newest plan
        return status

    def requeue_interrupted(self) -> list[BuildRecord]:
        """At start-up: builds left running by a crash run again (the attempt did not count), unless a newer plan
        of the same branch or tag overtook them: those end superseded. Returns them as they are now."""
        interrupted = self._builds("WHERE status = ?", (BuildStatus.RUNNING.value,))
        now = self._clock()
        with self._tx() as db:
            for b in interrupted:
                row = db.execute("SELECT * FROM builds WHERE id = ?", (b.id,)).fetchone()
                if not self._supersede_if_overtaken(db, row, now):
                    db.execute(
                        "UPDATE builds SET status = ?, attempts = MAX(attempts - 1, 0), next_attempt_at = ?, "
                        "lease_expires_at = NULL WHERE id = ?",
                        (BuildStatus.QUEUED.value, now, b.id),
                    )
        return [self.build(b.id) for b in interrupted]

    def latest_build(self, repo: str, kind: BuildKind, ref: str) -> BuildRecord | None:
        """The build planned last for this repository's branch or tag (whatever its state)."""
        found = self._builds("WHERE repo = ? AND kind = ? AND ref = ? ORDER BY id DESC LIMIT 1",
                             (repo, kind.value, ref))
        return found[0] if found else None

    def succeeded_builds(self, repo: str, kind: BuildKind) -> list[BuildRecord]:
        return self._builds("WHERE repo = ? AND kind = ? AND status = ? ORDER BY id",
                            (repo, kind.value, BuildStatus.SUCCEEDED.value))

    # --- operators' controls: holds, rollbacks, approvals ------------------------------------------------
    def hold(self, repo: str) -> Hold | None:
        rows = self._query("SELECT * FROM holds WHERE repo = ?", (repo,))
        return _hold(rows[0]) if rows else None

    def holds(self) -> list[Hold]:
        return [_hold(r) for r in self._query("SELECT * FROM holds ORDER BY held_at")]

    def set_hold(self, repo: str, by: str, reason: str | None, rollback_id: int | None = None,
                 replace: bool = False) -> Hold:
        """Hold `repo`: nothing of it moves a mutable tag until `release_hold`. OperatorError if already held
        (unless `replace`: a deeper rollback while held)."""
        with self._tx() as db:
            existing = db.execute("SELECT * FROM holds WHERE repo = ?", (repo,)).fetchone()
            if existing is not None and not replace:
                raise OperatorError(f"{repo} is already held (since {_utc(existing['held_at'])} by "
                                    f"{existing['held_by']}: {existing['reason'] or 'no reason given'})")
            _put_hold(db, repo, reason, by, self._clock(), rollback_id)
        return self.hold(repo)

    def release_hold(self, repo: str) -> Hold:
        with self._tx() as db:
            existing = db.execute("SELECT * FROM holds WHERE repo = ?", (repo,)).fetchone()
            if existing is None:
                raise OperatorError(f"{repo} is not held")
            db.execute("DELETE FROM holds WHERE repo = ?", (repo,))
        return _hold(existing)

    def record_rollback(self, repo: str, tag: str, by: str, previous: TagPosition | None, to: BuildRecord,
                        digest: str) -> int:
        """Record a rollback done (the registry already serves `to` under `tag`): its position, and the hold."""
        now = self._clock()
        with self._tx() as db:
            rollback_id = db.execute(
                "INSERT INTO rollbacks (repo, tag, by, from_build, from_sha, from_digest, to_build, to_sha, "
                "to_digest, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (repo, tag, by, previous.build_id if previous else None, previous.sha if previous else None,
                 previous.digest if previous else None, to.id, to.sha, digest, now)).lastrowid
            _put_position(db, repo, tag, to, digest, now)
            _put_hold(db, repo, f"rolled back {tag} to {to.sha[:12]}", by, now, rollback_id)
        return rollback_id

    def rollbacks(self, repo: str | None = None, limit: int = 20) -> list[dict]:
        where, args = ("WHERE repo = ?", (repo,)) if repo else ("", ())
        rows = self._query(f"SELECT * FROM rollbacks {where} ORDER BY id DESC LIMIT ?", (*args, limit))  # noqa: S608
        return [dict(r) for r in rows]

    def decide_gated(self, repo: str, tag: str, by: str, approve: bool, reason: str | None = None) -> BuildRecord:
        """Approve (queue) or reject the gated release of `tag`. OperatorError when none waits."""
        now = self._clock()
        with self._tx() as db:
            row = db.execute("SELECT id FROM builds WHERE repo = ? AND kind = ? AND ref = ? AND status = ? "
                             "ORDER BY id DESC LIMIT 1",
                             (repo, BuildKind.RELEASE.value, tag, BuildStatus.AWAITING_APPROVAL.value)).fetchone()
            if row is None:
                raise OperatorError(f"no release of {repo} tag {tag!r} is awaiting approval")
            if approve:
                db.execute("UPDATE builds SET status = ?, next_attempt_at = ?, decided_by = ? WHERE id = ?",
                           (BuildStatus.QUEUED.value, now, by, row["id"]))
            else:
                db.execute("UPDATE builds SET status = ?, error = ?, finished_at = ?, decided_by = ? WHERE id = ?",
                           (BuildStatus.REJECTED.value, f"rejected by {by}: {reason or 'no reason given'}", now, by,
                            row["id"]))
        return self.build(row["id"])

    def gated_tags(self, repo: str) -> set[str]:
        """Tags whose release waits for approval or was rejected: they do not count as released."""
        rows = self._query("SELECT DISTINCT ref FROM builds WHERE repo = ? AND kind = ? AND status IN (?, ?)",
                           (repo, BuildKind.RELEASE.value, BuildStatus.AWAITING_APPROVAL.value,
                            BuildStatus.REJECTED.value))
        return {r["ref"] for r in rows}

    # --- build logs --------------------------------------------------------------------------------------
    def append_log(self, build_id: int, text: str, max_bytes: int) -> None:
        """Append a batch of a build's output; only the last `max_bytes` (in UTF-8) are kept."""
        if not text:
            return
        size = len(text.encode())
        with self._tx() as db:
            row = db.execute("SELECT log_bytes FROM builds WHERE id = ?", (build_id,)).fetchone()
            if row is None:
                return
            offset = row["log_bytes"]
            db.execute("INSERT OR REPLACE INTO build_logs (build_id, pos, text) VALUES (?, ?, ?)",
                       (build_id, offset, text))
            end = offset + size
            keep_from = max(0, end - max_bytes)
            # Drop whole chunks that end before the kept window (the newest chunk always stays).
            db.execute("DELETE FROM build_logs WHERE build_id = ? AND pos < ? AND pos + length(CAST(text AS "
                       "BLOB)) <= ?", (build_id, offset, keep_from))
            first = db.execute("SELECT MIN(pos) AS o FROM build_logs WHERE build_id = ?",
                               (build_id,)).fetchone()["o"]
            db.execute("UPDATE builds SET log_bytes = ?, log_kept_from = ? WHERE id = ?",
                       (end, first if first is not None else end, build_id))

    def complete_log(self, build_id: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE builds SET log_complete = 1 WHERE id = ?", (build_id,))

    def prune_builds(self, keep: int) -> int:
        """Delete, with their logs, each repository's oldest finished builds beyond its newest `keep`; returns how
        many. Never one a mutable tag serves or a rollback names (a hold's rollback included), never the newest of
        its branch or tag (the staging decision and the release gate read it), never a waiting or running one."""
        finished = (BuildStatus.SUCCEEDED.value, BuildStatus.FAILED.value, BuildStatus.SUPERSEDED.value,
                    BuildStatus.REJECTED.value)
        with self._tx() as db:
            ids = [r["id"] for r in db.execute(
                "SELECT id FROM (SELECT id, status, ROW_NUMBER() OVER (PARTITION BY repo ORDER BY id DESC) AS n "
                "FROM builds) WHERE n > ? AND status IN (?, ?, ?, ?) "
                "AND id NOT IN (SELECT build_id FROM tag_positions) "
                "AND id NOT IN (SELECT to_build FROM rollbacks) "
                "AND id NOT IN (SELECT from_build FROM rollbacks WHERE from_build IS NOT NULL) "
                "AND id NOT IN (SELECT MAX(id) FROM builds GROUP BY repo, kind, ref)",
                (keep, *finished))]
            if ids:
                chosen = json.dumps(ids)
                db.execute("DELETE FROM build_logs WHERE build_id IN (SELECT value FROM json_each(?))", (chosen,))
                db.execute("DELETE FROM builds WHERE id IN (SELECT value FROM json_each(?))", (chosen,))
        return len(ids)

    def read_log(self, build_id: int, offset: int = 0) -> tuple[str, int, bool, bool]:
        """(text from `offset`, the next offset, complete?, cut?) of a build's log. `cut`: the text before the
        kept window was dropped (the log is bounded, keeping the end); the text then starts where it was kept."""
        rows = self._query("SELECT log_bytes, log_kept_from, log_complete FROM builds WHERE id = ?", (build_id,))
        if not rows:
            raise OperatorError(f"there is no build {build_id}")
        total, kept_from, complete = rows[0]["log_bytes"], rows[0]["log_kept_from"], bool(rows[0]["log_complete"])
        cut = offset < kept_from
        start = max(offset, kept_from)
        parts = []
        for r in self._query("SELECT pos, text FROM build_logs WHERE build_id = ? ORDER BY pos", (build_id,)):
            data = r["text"].encode()
            if r["pos"] + len(data) <= start:
                continue
            parts.append(data[max(0, start - r["pos"]):])
        text = b"".join(parts).decode(errors="replace")
        return text, total, complete, cut

    # --- reports: commit statuses and notifications, through the outbox ------------------------------------
    def builds_to_report(self, limit: int = 100) -> list[BuildRecord]:
        """Builds whose status changed since it was last reported (the reporter's input)."""
        return self._builds("WHERE reported_status IS NOT status ORDER BY id LIMIT ?", (limit,))

    def applies_to_report(self, limit: int = 100) -> list[ApplyRecord]:
        return self._applies("WHERE job_state IS NOT NULL AND reported_state IS NOT job_state ORDER BY id LIMIT ?",
                             (limit,))

    def record_reports(self, *, build: BuildRecord | None = None, apply: ApplyRecord | None = None,
                       items: list[OutboxItem] = ()) -> int:
        """In one transaction: queue `items` in the outbox (a dedupe key already there is skipped) and mark what
        they report as reported. Returns how many rows were queued."""
        now = self._clock()
        queued = 0
        with self._tx() as db:
            for item in items:
                cur = db.execute(
                    "INSERT OR IGNORE INTO outbox (channel, target, dedupe_key, payload, status, next_attempt_at, "
                    "created_at) VALUES (?, ?, ?, ?, 'pending', ?, ?)",
                    (item.channel, item.target, item.dedupe_key, json.dumps(item.payload), now, now))
                queued += cur.rowcount
            if build is not None:
                db.execute("UPDATE builds SET reported_status = ? WHERE id = ?", (build.status.value, build.id))
            if apply is not None:
                db.execute("UPDATE applies SET reported_state = ? WHERE id = ?", (apply.job_state, apply.id))
        return queued

    def due_outbox(self, channel: str | None = None, limit: int = 50) -> list[OutboxRow]:
        where = "status = 'pending' AND next_attempt_at <= ?"
        args: tuple = (self._clock(),)
        if channel:
            where += " AND channel = ?"
            args += (channel,)
        rows = self._query(f"SELECT * FROM outbox WHERE {where} ORDER BY id LIMIT ?", (*args, limit))  # noqa: S608
        return [_outbox(r) for r in rows]

    def outbox(self, channel: str | None = None, limit: int = 100) -> list[OutboxRow]:
        where, args = ("WHERE channel = ?", (channel,)) if channel else ("", ())
        rows = self._query(f"SELECT * FROM outbox {where} ORDER BY id DESC LIMIT ?", (*args, limit))  # noqa: S608
        return [_outbox(r) for r in rows]

    def outbox_attempted(self, item_id: int) -> None:
        """Count an attempt before sending (at most one duplicate after a crash mid-send)."""
        with self._tx() as db:
            db.execute("UPDATE outbox SET attempts = attempts + 1 WHERE id = ?", (item_id,))

    def outbox_sent(self, item_id: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE outbox SET status = 'sent', sent_at = ?, last_error = NULL WHERE id = ?",
                       (self._clock(), item_id))

    def outbox_retry(self, item_id: int, error: str, retry_in: float | None) -> None:
        """A failed send: due again after `retry_in` seconds, or failed for good when it is None."""
        with self._tx() as db:
            if retry_in is None:
                db.execute("UPDATE outbox SET status = 'failed', last_error = ? WHERE id = ?", (error[:1000], item_id))
            else:
                db.execute("UPDATE outbox SET last_error = ?, next_attempt_at = ? WHERE id = ?",
                           (error[:1000], self._clock() + retry_in, item_id))

    def set_apply_job_state(self, apply_id: int, job_state: str) -> None:
        """What `GET /apply/<job>` said of an accepted apply's Job (running, succeeded, failed, unknown...)."""
        with self._tx() as db:
            db.execute("UPDATE applies SET job_state = ?, job_followed_at = ? WHERE id = ?",
                       (job_state, self._clock(), apply_id))

    def reported_statuses(self, build_ids: list[int]) -> dict[int, str | None]:
        """The status last reported of each build (None: never), so a change can be told from what came before."""
        rows = self._query("SELECT id, reported_status FROM builds WHERE id IN (SELECT value FROM json_each(?))",
                           (json.dumps(list(build_ids)),))
        return {r["id"]: r["reported_status"] for r in rows}

    def applies_to_follow(self, limit: int = 20) -> list[ApplyRecord]:
        """Accepted applies whose Job has not been seen to end (succeeded, failed, or gone: unknown)."""
        return self._applies("WHERE status = 'accepted' AND job IS NOT NULL AND (job_state IS NULL OR job_state "
                             "NOT IN ('succeeded', 'failed', 'unknown')) ORDER BY id LIMIT ?", (limit,))

    def outbox_keys(self, keys: list[str]) -> set[str]:
        """Which of these dedupe keys are in the outbox already (a scan's reports, queued once)."""
        rows = self._query("SELECT dedupe_key FROM outbox WHERE dedupe_key IN (SELECT value FROM json_each(?))",
                           (json.dumps(list(keys)),))
        return {r["dedupe_key"] for r in rows}

    def outbox_newer(self, item_id: int, key_prefix: str) -> bool:
        """Whether a row queued after `item_id` has a dedupe key starting with `key_prefix` (a newer status)."""
        pattern = key_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = self._query("SELECT 1 FROM outbox WHERE id > ? AND dedupe_key LIKE ? ESCAPE '\\' LIMIT 1",
                           (item_id, pattern))
        return bool(rows)

    def prune_outbox(self, before: float) -> int:
        """Delete sent and failed outbox rows created before `before`; returns how many."""
        with self._tx() as db:
            return db.execute("DELETE FROM outbox WHERE status IN ('sent', 'failed') AND created_at < ?",
                              (before,)).rowcount

    def set_backend_ref(self, build_id: int, ref: str | None) -> None:
        """The backend's own name for a build (a Kubernetes Job), kept so a restarted poller can adopt it."""
        with self._tx() as db:
            db.execute("UPDATE builds SET backend_ref = ? WHERE id = ?", (ref, build_id))

    def backend_ref(self, build_id: int) -> str | None:
        rows = self._query("SELECT backend_ref FROM builds WHERE id = ?", (build_id,))
        return rows[0]["backend_ref"] if rows else None

    # --- webhook deliveries --------------------------------------------------------------------------------
    def record_delivery(self, key: str) -> bool:
        """Remember a webhook delivery id; False when it was seen before (a redelivery or a replay)."""
        with self._tx() as db:
            cur = db.execute("INSERT OR IGNORE INTO deliveries (key, received_at) VALUES (?, ?)",
                             (key[:200], self._clock()))
            if cur.rowcount:
                db.execute("DELETE FROM deliveries WHERE key IN (SELECT key FROM deliveries "
                           "ORDER BY received_at DESC LIMIT -1 OFFSET ?)", (MAX_DELIVERIES,))
            return bool(cur.rowcount)

    # --- mutable image tags --------------------------------------------------------------------------------
    def tag_positions(self, repo: str) -> dict[str, TagPosition]:
        rows = self._query("SELECT * FROM tag_positions WHERE repo = ?", (repo,))
        return {r["tag"]: TagPosition(r["repo"], r["tag"], r["build_id"], r["sha"], r["digest"], r["version"],
                                      r["moved_at"]) for r in rows}

    def record_tag_position(self, repo: str, tag: str, build: BuildRecord, digest: str) -> None:
        """Record that `repo`'s image tag `tag` now serves `build`'s image (after the registry confirmed it)."""
        with self._tx() as db:
            _put_position(db, repo, tag, build, digest, self._clock())

    def build(self, build_id: int) -> BuildRecord:
        return self._builds("WHERE id = ?", (build_id,))[0]

    def builds(self, repo: str | None = None, status: BuildStatus | None = None, limit: int = 100,
               kind: BuildKind | None = None) -> list[BuildRecord]:
        clauses, args = [], []
        if repo is not None:
            clauses.append("repo = ?")
            args.append(repo)
        if kind is not None:
            clauses.append("kind = ?")
            args.append(kind.value)
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
        with self._decoding("builds"):
            return [self._build_record(r) for r in rows]

    @staticmethod
    def _build_record(r: sqlite3.Row) -> BuildRecord:
        return BuildRecord(
            id=r["id"], repo=r["repo"], kind=BuildKind(r["kind"]), ref=r["ref"], sha=r["sha"],
            version=r["version"], status=BuildStatus(r["status"]), attempts=r["attempts"],
            max_attempts=r["max_attempts"], next_attempt_at=r["next_attempt_at"], error=r["error"],
            pushed_tags=tuple(json.loads(r["pushed_tags"] or "[]")), digest=r["digest"],
            superseded_by=r["superseded_by"], created_at=r["created_at"], started_at=r["started_at"],
            finished_at=r["finished_at"], lease_expires_at=r["lease_expires_at"],
        )

    # --- charts and apply requests -----------------------------------------------------------------------
    def chart_state(self, repo_url: str) -> tuple[ChartState, str | None]:
        """The stored chart versions and the hash of the index they came from."""
        rows = self._query("SELECT baseline, versions, index_hash FROM charts WHERE repo_url = ?", (repo_url,))
        if not rows:
            return ChartState(), None
        with self._decoding("charts", repo_url):
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
        with self._decoding("applies"):
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
