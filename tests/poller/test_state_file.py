"""The state file: schema versions and migration, and a damaged, foreign, newer or unwritable file refused with one
line (exit 2) and never changed."""

from __future__ import annotations

import hashlib
import json
import socket
import sqlite3
import subprocess
import sys

import pytest

from polling_server.errors import StateError
from polling_server.planning.model import BuildStatus
from polling_server.state import _SCHEMA_V1, SCHEMA_VERSION, StateStore

SHA = "a" * 40


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _config(tmp_path, state_path, **extra) -> str:
    cfg = tmp_path / "poller.yaml"
    http = extra.pop("http", {"enabled": False})
    cfg.write_text(json.dumps({"state_path": str(state_path), "http": http, "repositories": [], **extra}))
    return str(cfg)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "polling_server", *args], capture_output=True, text=True,
                          timeout=60)


def _v1_database(path) -> None:
    """A database as the first release wrote it: its schema, no user_version, one repository and one build."""
    db = sqlite3.connect(path)
    db.executescript(_SCHEMA_V1)
    db.execute("INSERT INTO repos VALUES ('app', 1, ?, ?, 1.0)", (SHA, json.dumps({"v1.0.0": SHA})))
    db.execute("INSERT INTO builds (repo, kind, ref, sha, status, attempts, max_attempts, next_attempt_at, "
               "pushed_tags, digest, created_at, finished_at) VALUES ('app', 'staging', 'main', ?, 'succeeded', 1, 3, "
               "1.0, '[\"r/app:staging\"]', 'sha256:' || hex(zeroblob(32)), 1.0, 2.0)", (SHA,))
    db.commit()
    assert db.execute("PRAGMA user_version").fetchone()[0] == 0
    db.close()


def test_a_first_release_database_is_migrated_forward_and_keeps_its_data(tmp_path):
    path = tmp_path / "state.db"
    _v1_database(path)
    store = StateStore(path)
    assert store._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert store.repo_state("app").tags == {"v1.0.0": SHA} and store.repo_state("app").branch_head == SHA
    (build,) = store.builds()
    assert build.status is BuildStatus.SUCCEEDED and build.pushed_tags == ("r/app:staging",)
    assert build.lease_expires_at is None
    assert store.tag_positions("app") == {}
    store.close()
    StateStore(path).close()  # opening again migrates nothing more


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign", "newer", "bad_row"])
def test_an_unusable_state_file_is_refused_in_one_line_and_never_changed(tmp_path, damage):
    path = tmp_path / "state.db"
    if damage == "garbage":
        path.write_bytes(b"this is not a database at all\n" * 200)
    else:
        store = StateStore(path)
        store.save_poll("app", None, {})
        store.close()
        db = sqlite3.connect(path)
        if damage == "foreign":
            for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                       "AND name NOT LIKE 'sqlite_%'").fetchall():
                db.execute(f"DROP TABLE {table}")
            db.executescript("CREATE TABLE photos (id INTEGER); PRAGMA user_version = 0;")
        elif damage == "newer":
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        elif damage == "bad_row":
            db.execute("INSERT INTO repos VALUES ('app', 1, NULL, 'not json', 1.0)")
        db.commit()
        db.close()
        if damage == "truncated":
            data = path.read_bytes()
            for _ in range(20):  # many pages, then cut in the middle of one
                db = sqlite3.connect(path)
                db.execute("CREATE TABLE IF NOT EXISTS filler (x BLOB)")
                db.execute("INSERT INTO filler VALUES (randomblob(4000))")
                db.commit()
                db.close()
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2 + 100])
    before = _digest(path)
    cfg = _config(tmp_path, path)
    for args in (["status", "--config", cfg], ["--config", cfg, "--once"], ["run", "--config", cfg, "--once",
                                                                            "--dry-run"]):
        out = cli(*args)
        assert out.returncode == 2, (damage, args, out.stderr)
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and str(path) in lines[0] and "Traceback" not in out.stderr, out.stderr
    assert _digest(path) == before
    expected = {"garbage": "not a readable state database|damaged", "truncated": "damaged|not a readable",
                "foreign": "not a polling-server state database", "newer": "newer polling-server",
                "bad_row": "table repos row 'app' does not decode"}[damage]
    assert any(word in lines[0] for word in expected.split("|")), lines[0]


def test_a_state_path_that_cannot_be_created_is_one_line_exit_2(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = cli("--config", _config(tmp_path, blocker / "state.db"), "--once")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert str(blocker / "state.db") in out.stderr and len(out.stderr.strip().splitlines()) == 1
    with pytest.raises(StateError, match="cannot create its directory"):
        StateStore(blocker / "state.db")


def test_status_never_creates_the_state_file(tmp_path):
    path = tmp_path / "nothing-yet" / "state.db"
    out = cli("status", "--config", _config(tmp_path, path))
    assert out.returncode == 0, out.stderr
    assert not path.exists() and not path.parent.exists()


def test_a_busy_port_is_one_line_exit_2(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = cli("--config", _config(tmp_path, tmp_path / "s.db", http={"host": "127.0.0.1", "port": port}))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"127.0.0.1:{port}" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_the_dry_run_copy_writes_nothing_to_the_file(tmp_path):
    path = tmp_path / "state.db"
    store = StateStore(path)
    store.save_poll("app", None, {})
    store.close()
    before = _digest(path)
    copy = StateStore.in_memory_copy(path)
    from tests.poller.build_helpers import enqueue

    enqueue(copy, "app", SHA)
    assert [b.sha for b in copy.builds()] == [SHA]
    copy.close()
    assert _digest(path) == before
    assert StateStore.in_memory_copy(path).builds() == []
