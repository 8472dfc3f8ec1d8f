"""ChartWatcher: one chart poll step against the real index fixtures, asserting the stored state, the queued apply
requests, the requests sent and the log events.

Variants of the fixtures (a new version, a re-push, a removal) are derived in the tests by text edits on the real
files, never by editing them.
"""

from __future__ import annotations

import base64
import functools
import logging
import os
import re
import sqlite3
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
import responses
from responses import matchers

from polling_server.chart_watch import ChartWatcher
from polling_server.config import parse_settings
from polling_server.http import HttpClient
from polling_server.metrics import Metrics
from polling_server.planning.model import ChartChange
from polling_server.sources import chart_index as charts
from polling_server.sources.chart_index import ChartIndexSource, parse_index
from polling_server.state import MIGRATIONS, StateStore, _statements
from tests.fixture_paths import ACTIVITI, CHARTMUSEUM_401, CHARTMUSEUM_EMPTY, OPENFAAS, STAKATER

REPO_URL = "http://chartmuseum.test"
INDEX_URL = f"{REPO_URL}/index.yaml"
NEW_DIGEST = "f" * 64


# --- derived variants of the real indexes ----------------------------------------------------------------
def with_version(text: str, chart: str, version: str, digest: str = NEW_DIGEST) -> str:
    """The index with one more version of `chart` listed first (as `helm repo index` lists the newest)."""
    entry = (f"  - apiVersion: v2\n    created: \"2026-07-01T10:00:00.000000000Z\"\n    digest: {digest}\n"
             f"    name: {chart}\n    urls:\n    - charts/{chart}-{version}.tgz\n    version: {version}\n")
    if "entries: {}" in text:
        return text.replace("entries: {}", f"entries:\n  {chart}:\n{entry}", 1)
    marker = f"\n  {chart}:\n"
    if marker not in text:
        return text.replace("\nentries:\n", f"\nentries:\n  {chart}:\n{entry}", 1)
    return text.replace(marker, marker + entry, 1)


def repushed(text: str, chart: str, version: str, digest: str = NEW_DIGEST) -> str:
    """The index with `chart` `version` uploaded again with another digest (ChartMuseum with overwrite)."""
    old = parse_index(text)[(chart, version)]
    assert text.count(old) == 1
    return text.replace(old, digest)


def without_version(text: str, chart: str, version: str) -> str:
    """The index with one entry of `chart` deleted."""
    out: list[str] = []
    block: list[str] = []
    current = None

    def flush():
        if not (current == chart and f"    version: {version}\n" in block):
            out.extend(block)
        block.clear()

    for line in text.splitlines(keepends=True):
        inside_item = line.startswith("    ")
        if not inside_item:  # an item's start, a chart key or a top-level key ends the item being read
            flush()
        if inside_item or line.startswith("  - "):
            block.append(line)
        else:
            out.append(line)
            current = line.strip().rstrip(":") if line.startswith("  ") else None
    flush()
    result = "".join(out)
    assert len(parse_index(result)) == len(parse_index(text)) - 1
    return result


# --- set-up ----------------------------------------------------------------------------------------------
def make_settings(tmp_path, **repo):
    return parse_settings({
        "state_path": str(tmp_path / "state.db"),
        "chart_repository": {"url": REPO_URL, **repo},
        "helm_api": {"url": "http://helm-api.test", "token": "api-token"},
    }, env={})


def make_watcher(settings, store=None):
    store = store or StateStore(settings.state_path)
    http = HttpClient(max_retries=1, sleep=lambda s: None)
    return ChartWatcher(settings, store, Metrics(), ChartIndexSource(settings.chart_repository, http))


@pytest.fixture
def rsps():
    with responses.RequestsMock(assert_all_requests_are_fired=True) as r:
        yield r


@pytest.fixture
def caplog_info(caplog):
    caplog.set_level(logging.DEBUG, logger="polling_server")
    return caplog


def events(caplog, name):
    return [r for r in caplog.records if getattr(r, "event", None) == name]


def serve(rsps, *bodies, **kwargs):
    for body in bodies:
        rsps.get(INDEX_URL, body=body, **kwargs)


# --- baseline ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("path", "versions"), [(STAKATER, 2026), (OPENFAAS, 372), (ACTIVITI, 0),
                                                (CHARTMUSEUM_EMPTY, 0)])
def test_first_poll_records_a_baseline_and_applies_nothing(tmp_path, rsps, caplog_info, path, versions):
    serve(rsps, path.read_text())
    w = make_watcher(make_settings(tmp_path))
    plan = w.poll()
    assert plan is not None and plan.changes == ()
    state, index_hash = w.store.chart_state(REPO_URL)
    assert state.baseline and len(state.versions) == versions and index_hash
    assert w.store.applies() == []
    [baseline] = events(caplog_info, "charts.baseline_recorded")
    assert baseline.fields["versions"] == versions


def test_a_new_version_queues_one_apply(tmp_path, rsps, caplog_info):
    text = STAKATER.read_text()
    serve(rsps, text, with_version(text, "alertmanager", "1.0.17"))
    w = make_watcher(make_settings(tmp_path))
    w.poll()
    plan = w.poll()
    assert plan.changes == (ChartChange("alertmanager", "1.0.17", NEW_DIGEST, "added"),)
    [record] = w.store.applies()
    assert record.status == "pending" and record.changes == plan.changes and record.attempts == 0
    state, _ = w.store.chart_state(REPO_URL)
    assert state.versions[("alertmanager", "1.0.17")] == NEW_DIGEST and len(state.versions) == 2027
    [changed] = events(caplog_info, "chart.changed")
    assert changed.fields == {"repository": REPO_URL, "chart": "alertmanager", "version": "1.0.17",
                              "digest": NEW_DIGEST, "change": "added"}
    [queued] = events(caplog_info, "apply.queued")
    assert queued.fields["request_id"] == record.request_id


def test_a_repushed_version_with_a_new_digest_is_a_change(tmp_path, rsps):
    text = STAKATER.read_text()
    serve(rsps, text, repushed(text, "alertmanager", "1.0.15"))
    w = make_watcher(make_settings(tmp_path))
    w.poll()
    plan = w.poll()
    assert plan.changes == (ChartChange("alertmanager", "1.0.15", NEW_DIGEST, "repushed"),)
    assert [r.changes for r in w.store.applies()] == [plan.changes]


def test_v_prefixed_and_prerelease_versions_are_keys_as_written(tmp_path, rsps):
    text = OPENFAAS.read_text()
    v2 = with_version(text, "cron-connector", "v0.7.0", "a" * 64)
    v3 = with_version(v2, "cron-connector", "0.7.1-rc.1+build.5", "b" * 64)
    serve(rsps, text, v3)
    w = make_watcher(make_settings(tmp_path))
    w.poll()
    plan = w.poll()
    assert {(c.name, c.version, c.change) for c in plan.changes} == {
        ("cron-connector", "v0.7.0", "added"), ("cron-connector", "0.7.1-rc.1+build.5", "added")}
    state, _ = w.store.chart_state(REPO_URL)
    assert ("cron-connector", "v0.7.0") in state.versions and ("cron-connector", "0.7.1-rc.1+build.5") in state.versions


def test_stakater_v_prefixed_and_prerelease_versions_survive_the_store(tmp_path, rsps):
    serve(rsps, STAKATER.read_text())
    w = make_watcher(make_settings(tmp_path))
    w.poll()
    state, _ = w.store.chart_state(REPO_URL)
    versions = {v for _, v in state.versions}
    assert {"v1.2.2", "0.0.67-eb89a6c"} <= versions


def test_a_removed_version_is_logged_and_triggers_nothing(tmp_path, rsps, caplog_info):
    text = STAKATER.read_text()
    serve(rsps, text, without_version(text, "alertmanager", "1.0.15"))
    w = make_watcher(make_settings(tmp_path))
    w.poll()
    plan = w.poll()
    assert plan.changes == () and plan.removed == (("alertmanager", "1.0.15"),)
    assert w.store.applies() == []
    [removed] = events(caplog_info, "chart.removed")
    assert removed.fields == {"repository": REPO_URL, "chart": "alertmanager", "version": "1.0.15"}
    state, _ = w.store.chart_state(REPO_URL)
    assert ("alertmanager", "1.0.15") not in state.versions


def test_several_charts_changing_in_one_poll_queue_one_apply(tmp_path, rsps):
    text = STAKATER.read_text()
    changed = repushed(with_version(with_version(text, "alertmanager", "1.0.17"), "brand-new-chart", "0.1.0",
                                    "c" * 64), "alertmanager", "1.0.15", "d" * 64)
    serve(rsps, text, changed)
    w = make_watcher(make_settings(tmp_path))
    w.poll()
    plan = w.poll()
    assert len(plan.changes) == 3
    [record] = w.store.applies()
    assert set(record.changes) == set(plan.changes)


def test_changes_before_the_apply_is_sent_merge_into_one_request(tmp_path, rsps):
    text = OPENFAAS.read_text()
    one = with_version(text, "cron-connector", "0.7.0", "a" * 64)
    two = with_version(one, "cron-connector", "0.7.1", "b" * 64)
    serve(rsps, text, one, two)
    w = make_watcher(make_settings(tmp_path))
    w.poll(), w.poll(), w.poll()
    [record] = w.store.applies()
    assert [c.version for c in record.changes] == ["0.7.0", "0.7.1"]


def test_charts_filter_limits_what_is_watched(tmp_path, rsps):
    text = STAKATER.read_text()
    other = with_version(text, "brand-new-chart", "0.1.0")
    watched = with_version(other, "alertmanager", "1.0.17")
    serve(rsps, text, other, watched)
    w = make_watcher(make_settings(tmp_path, charts=["alertmanager"]))
    w.poll()
    state, _ = w.store.chart_state(REPO_URL)
    assert {name for name, _ in state.versions} == {"alertmanager"}
    assert w.poll().changes == ()  # only an unwatched chart changed
    assert w.store.applies() == []
    assert [c.name for c in w.poll().changes] == ["alertmanager"]
    assert len(w.store.applies()) == 1


# --- unchanged indexes -----------------------------------------------------------------------------------
def test_etag_round_trip(tmp_path, rsps, caplog_info, monkeypatch):
    text = OPENFAAS.read_text()
    etag, later = 'W/"5f1-abc"', 'W/"5f1-def"'
    rsps.get(INDEX_URL, body=text, headers={"ETag": etag})
    rsps.get(INDEX_URL, status=304, match=[matchers.header_matcher({"If-None-Match": etag})])
    rsps.get(INDEX_URL, body=with_version(text, "cron-connector", "0.7.0"), headers={"ETag": later},
             match=[matchers.header_matcher({"If-None-Match": etag})])
    rsps.get(INDEX_URL, status=304, match=[matchers.header_matcher({"If-None-Match": later})])
    w = make_watcher(make_settings(tmp_path))
    w.poll()
    saved = w.store.chart_state(REPO_URL)
    assert w.poll() is None
    assert w.store.chart_state(REPO_URL) == saved
    assert events(caplog_info, "charts.unchanged")[0].fields["reason"] == "not modified (304)"
    assert w.metrics.not_modified.labels("charts")._value.get() == 1
    assert [c.version for c in w.poll().changes] == ["0.7.0"]
    assert w.poll() is None
    assert len(w.store.applies()) == 1


def test_last_modified_is_sent_back(tmp_path, rsps):
    modified = "Wed, 01 Jul 2026 10:00:00 GMT"
    rsps.get(INDEX_URL, body=ACTIVITI.read_text(),
             headers={"Last-Modified": modified, "Date": "Wed, 01 Jul 2026 10:05:00 GMT"})
    rsps.get(INDEX_URL, status=304, match=[matchers.header_matcher({"If-Modified-Since": modified})])
    w = make_watcher(make_settings(tmp_path))
    w.poll()
    assert w.poll() is None


class StaticHost:
    """Python's http.server serving a directory over loopback, as a static Helm repository is served: an index.yaml
    file, Last-Modified from its mtime, If-Modified-Since answered by comparing whole seconds.

    The `Date` it sends reads `now` (the test's clock), and publishing sets the file's mtime, so "the same second"
    is decided by the test and not by how fast it runs. Each request is recorded: (If-Modified-Since, status).
    """

    def __init__(self, root):
        self.root = root
        self.now = 0.0
        self.requests: list[tuple[str | None, int]] = []
        host = self

        class Handler(SimpleHTTPRequestHandler):
            def date_time_string(self, timestamp=None):
                return super().date_time_string(host.now if timestamp is None else timestamp)

            def send_response(self, code, message=None):
                host.requests.append((self.headers.get("If-Modified-Since"), int(code)))
                super().send_response(code, message)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def publish(self, text: str, mtime: float) -> None:
        """Replace index.yaml the way a publisher does (write aside, rename), written at `mtime`."""
        part = self.root / "index.yaml.part"
        part.write_text(text)
        os.utime(part, (mtime, mtime))
        os.replace(part, self.root / "index.yaml")

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=30)


def test_an_index_published_in_the_same_second_as_the_last_poll_is_applied(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    second = 1_782_900_000.0  # a whole second (2026-07-01), so +0.1 and +0.6 are in it
    text = OPENFAAS.read_text()
    with StaticHost(site) as host:
        settings = parse_settings({"state_path": str(tmp_path / "state.db"), "chart_repository": {"url": host.url},
                                   "helm_api": {"url": "http://helm-api.test"}}, env={})
        w = ChartWatcher(settings, StateStore(settings.state_path), Metrics(),
                         ChartIndexSource(settings.chart_repository, HttpClient(timeout=30, max_retries=1)))
        host.publish(text, second + 0.1)
        host.now = second + 0.2
        w.poll()  # the baseline
        host.publish(with_version(text, "cron-connector", "0.7.0"), second + 0.6)  # same Last-Modified second
        for now in (second + 0.8, second + 2, second + 3, second + 4):
            host.now = now
            w.poll()

    assert [[(c.name, c.version) for c in r.changes] for r in w.store.applies()] == [[("cron-connector", "0.7.0")]]
    state, _ = w.store.chart_state(host.url)
    assert state.versions[("cron-connector", "0.7.0")] == NEW_DIGEST
    # A Last-Modified from the second of the response's Date is never sent back; one from an earlier second is,
    # and then the unchanged index costs a 304.
    last_modified = host.requests[-1][0]
    assert last_modified == "Wed, 01 Jul 2026 10:00:00 GMT"
    assert host.requests == [(None, 200), (None, 200), (None, 200), (last_modified, 304), (last_modified, 304)]


def test_validators_saved_before_the_weak_validator_rule_are_dropped_by_the_migration(tmp_path, rsps):
    # Before `validators_to_keep`, a same-second Last-Modified could be stored and hide a newer index forever; the
    # schema migration that came with the rule forgets such validators, so they are never sent after an upgrade.
    text = OPENFAAS.read_text()
    pushed = with_version(text, "cron-connector", "0.7.0")
    serve(rsps, text, pushed)
    settings = make_settings(tmp_path)
    w = make_watcher(settings)
    w.poll()
    _, index_hash = w.store.chart_state(REPO_URL)
    w.store.close()
    # The same state as the release before the rule wrote it: its schema, and the validators it saved.
    rule = next(i for i, m in enumerate(MIGRATIONS) if "chart-index" in m)
    old = sqlite3.connect(tmp_path / "old.db")
    for script in MIGRATIONS[:rule]:
        for statement in _statements(script):
            old.execute(statement)
    old.execute(f"PRAGMA user_version = {rule}")
    current = sqlite3.connect(settings.state_path)
    for table in ("repos", "charts", "cursors"):
        for row in current.execute(f"SELECT * FROM {table}"):  # noqa: S608 - constant table names
            old.execute(f"INSERT INTO {table} VALUES ({', '.join('?' * len(row))})", row)  # noqa: S608
    key = f"chart-index:{REPO_URL}"
    old.execute("INSERT OR REPLACE INTO cursors (key, etag, last_modified, value, updated_at) VALUES (?, ?, ?, ?, 0)",
                (key, None, "Wed, 01 Jul 2026 10:00:00 GMT", index_hash))
    old.commit()
    old.close()
    current.close()
    upgraded = make_watcher(settings, StateStore(tmp_path / "old.db"))
    assert upgraded.store.cursor(key).last_modified is None
    assert [c.version for c in upgraded.poll().changes] == ["0.7.0"]
    assert "If-Modified-Since" not in rsps.calls[1].request.headers


def test_unchanged_body_without_etag_is_not_parsed_again(tmp_path, rsps, monkeypatch, caplog_info):
    text = STAKATER.read_text()  # served the ChartMuseum way: no ETag, no Last-Modified
    serve(rsps, text, text)
    w = make_watcher(make_settings(tmp_path))
    w.poll()
    saved = w.store.chart_state(REPO_URL)

    def must_not_parse(*a, **k):
        raise AssertionError("an unchanged index was parsed again")

    monkeypatch.setattr(charts, "parse_index", must_not_parse)
    assert w.poll() is None
    assert w.store.chart_state(REPO_URL) == saved and w.store.applies() == []
    assert "If-None-Match" not in rsps.calls[1].request.headers
    assert events(caplog_info, "charts.unchanged")[0].fields["reason"] == "same index hash"


def test_new_bytes_but_same_versions_change_nothing(tmp_path, rsps):
    text = ACTIVITI.read_text()
    serve(rsps, text, text.replace("2018-12-05", "2019-01-01"))  # only `generated` moved
    w = make_watcher(make_settings(tmp_path))
    w.poll()
    state, first_hash = w.store.chart_state(REPO_URL)
    assert w.poll().changes == ()
    state2, second_hash = w.store.chart_state(REPO_URL)
    assert state2 == state and second_hash != first_hash and w.store.applies() == []


def test_dry_run_polls_an_in_memory_copy_and_saves_nothing(tmp_path, rsps):
    text = OPENFAAS.read_text()
    serve(rsps, text, with_version(text, "cron-connector", "0.7.0"), headers={"ETag": '"x"'})
    settings = make_settings(tmp_path)
    real = make_watcher(settings)
    real.poll()  # the baseline, on disk
    real.store.close()
    # The daemon's dry run hands the watcher a copy of the state in memory: it plans, and writes nothing.
    dry = make_watcher(settings, StateStore.in_memory_copy(settings.state_path))
    assert [c.version for c in dry.poll().changes] == ["0.7.0"]
    assert len(dry.store.applies()) == 1  # queued in memory only; a dry run has no apply sender
    on_disk = StateStore(settings.state_path)
    assert on_disk.applies() == [] and ("cron-connector", "0.7.0") not in on_disk.chart_state(REPO_URL)[0].versions


# --- restarts ----------------------------------------------------------------------------------------------
def test_a_chart_pushed_while_the_poller_was_down_is_applied_once(tmp_path, rsps):
    text = OPENFAAS.read_text()
    pushed = with_version(text, "cron-connector", "0.7.0")
    serve(rsps, text, pushed, pushed)
    settings = make_settings(tmp_path)
    first = make_watcher(settings)
    first.poll()
    first.store.close()

    restarted = make_watcher(settings, StateStore(settings.state_path))
    assert [c.version for c in restarted.poll().changes] == ["0.7.0"]
    assert restarted.poll() is None
    assert [[c.version for c in r.changes] for r in restarted.store.applies()] == [["0.7.0"]]


# --- failures --------------------------------------------------------------------------------------------
def _baseline_then(tmp_path, rsps, **repo):
    rsps.get(INDEX_URL, body=OPENFAAS.read_text())
    w = make_watcher(make_settings(tmp_path, **repo))
    w.poll()
    return w, w.store.chart_state(REPO_URL), w.store.cursor(w.cursor_key)


MALFORMED = [
    ("not yaml", "entries: [unclosed\n", "not valid YAML"),
    ("wrong shape", '{"error":"not found"}', "no `entries` key"),
    ("entry without version", "entries:\n  cron-connector:\n  - digest: abc\n", "chart 'cron-connector' entry 0"),
    ("entry without digest", with_version(OPENFAAS.read_text(), "cron-connector", "0.7.0").replace(
        f"    digest: {NEW_DIGEST}\n", ""), "chart 'cron-connector' version '0.7.0' \\(entry 0\\): has no digest"),
]


@pytest.mark.parametrize(("body", "message"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_index_fails_the_poll_and_keeps_the_state(tmp_path, rsps, caplog_info, body, message):
    w, saved, cursor = _baseline_then(tmp_path, rsps)
    rsps.get(INDEX_URL, body=body)
    assert w.poll() is None
    assert w.store.chart_state(REPO_URL) == saved and w.store.cursor(w.cursor_key) == cursor
    assert w.store.applies() == []
    [failed] = events(caplog_info, "poll.failed")
    assert failed.levelname == "ERROR" and failed.fields["repository"] == REPO_URL
    assert "http://chartmuseum.test/index.yaml" in failed.fields["reason"]
    assert re.search(message, failed.fields["reason"])
    assert w.metrics.polls.labels("charts", "failed")._value.get() == 1
    # The next poll tries again, and the change it then finds is applied.
    rsps.get(INDEX_URL, body=with_version(OPENFAAS.read_text(), "cron-connector", "0.7.0"))
    assert [c.version for c in w.poll().changes] == ["0.7.0"]
    assert len(w.store.applies()) == 1


@pytest.mark.parametrize(("status", "level"), [(401, "ERROR"), (403, "ERROR"), (404, "ERROR"), (500, "WARNING")])
def test_chart_repository_errors_keep_the_state_and_secrets(tmp_path, rsps, caplog_info, status, level):
    w, saved, _ = _baseline_then(tmp_path, rsps, username="ci", password="pa55w0rd")
    for _ in range(2 if status >= 500 else 1):  # a 5xx is retried once by the HTTP layer
        rsps.get(INDEX_URL, status=status, body=CHARTMUSEUM_401.read_text(), content_type="application/json")
    assert w.poll() is None
    assert w.store.chart_state(REPO_URL) == saved and w.store.applies() == []
    [failed] = events(caplog_info, "poll.failed")
    assert failed.levelname == level and f"HTTP {status}" in failed.fields["reason"]
    assert "pa55w0rd" not in caplog_info.text and "pa55w0rd" not in str(failed.fields)


def test_credentials_are_sent_on_every_poll(tmp_path, rsps):
    basic = "Basic " + base64.b64encode(b"ci:pa55w0rd").decode()
    rsps.get(INDEX_URL, body=ACTIVITI.read_text(), match=[matchers.header_matcher({"Authorization": basic})])
    rsps.get(INDEX_URL, body=ACTIVITI.read_text(), match=[matchers.header_matcher({"Authorization": basic})])
    w = make_watcher(make_settings(tmp_path, username="ci", password="pa55w0rd"))
    w.poll(), w.poll()


def test_bearer_token_is_sent_by_the_watcher(tmp_path, rsps, caplog_info):
    rsps.get(INDEX_URL, body=ACTIVITI.read_text(),
             match=[matchers.header_matcher({"Authorization": "Bearer jwt-t0ken"})])
    make_watcher(make_settings(tmp_path, token="jwt-t0ken")).poll()
    assert "jwt-t0ken" not in caplog_info.text
