"""helm-api's logs: text or one JSON object per line, and no client value can forge a line or colour a terminal."""

from __future__ import annotations

import io
import json
import logging
import re
import sys

import pytest
import requests
from helm_api_testing import clean_env

from helm_api.config import load_log_format
from helm_api.errors import ConfigError
from helm_api.logs import JsonFormatter, TextFormatter, configure_logging, escape_control, event_fields

TOKEN = "logs-test-token"
# A newline followed by what a real record looks like, and an ANSI colour sequence.
FORGED = "\n2030-01-01 00:00:00,000 INFO helm_api.service: FORGED \x1b[31mred"
FORGED_ESCAPED = "\\n2030-01-01 00:00:00,000 INFO helm_api.service: FORGED \\x1b[31mred"


def record(msg: str, *args: object, exc_info: object = None, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("helm_api.service", logging.INFO, __file__, 1, msg, args, exc_info)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("a\nb", "a\\nb"),
        ("a\r\nb", "a\\r\\nb"),
        ("tab\there", "tab\\there"),
        ("\x1b[2J", "\\x1b[2J"),
        ("nul\x00del\x7fc1\x85", "nul\\x00del\\x7fc1\\x85"),
        ("line\u2028sep\u202eltr", "line\\u2028sep\\u202eltr"),
        ("plain ascii, é and 日本", "plain ascii, é and 日本"),
    ],
)
def test_escape_control(raw, escaped):
    assert escape_control(raw) == escaped


def test_text_formatter_keeps_a_record_on_one_line():
    line = TextFormatter().format(record("apply requested: request_id=%s", "id" + FORGED))
    assert "\n" not in line and "\x1b" not in line
    assert line.endswith(" INFO helm_api.service: apply requested: request_id=id" + FORGED_ESCAPED)


def test_text_formatter_indents_a_traceback_so_it_cannot_pass_for_a_record():
    try:
        raise ValueError("bad" + FORGED)
    except ValueError:
        rec = record("unexpected error", exc_info=sys.exc_info())
    first, *rest = TextFormatter().format(rec).split("\n")
    assert first.endswith("helm_api.service: unexpected error")
    assert rest and all(line.startswith("    ") for line in rest)
    assert "\x1b" not in "".join(rest)
    assert any(line.endswith("ValueError: bad") for line in rest)


def test_json_formatter_shape_fields_and_escapes():
    rec = record(
        "apply requested: request_id=%s",
        "id" + FORGED,
        **event_fields("apply.requested", request_id="id" + FORGED, charts=["web\x1b"], level="forged", job=None),
    )
    line = JsonFormatter().format(rec)
    assert "\n" not in line and "\x1b" not in line
    out = json.loads(line)
    assert list(out)[:4] == ["ts", "level", "logger", "event"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", out["ts"])
    assert (out["level"], out["logger"], out["event"]) == ("info", "helm_api.service", "apply.requested")
    assert out["request_id"] == "id" + FORGED_ESCAPED  # the two characters \n, not a newline
    assert out["charts"] == ["web\\x1b"]
    assert out["message"] == "apply requested: request_id=id" + FORGED_ESCAPED
    assert "job" not in out  # None values are left out


def test_json_formatter_plain_record_and_traceback():
    try:
        raise KeyError("k" + FORGED)
    except KeyError:
        rec = record("boom %d", 1, exc_info=sys.exc_info())
    out = json.loads(JsonFormatter().format(rec))
    assert (out["event"], out["message"]) == ("log", "boom 1")
    assert out["error"].startswith("Traceback") and "KeyError" in out["error"]
    assert "\x1b" not in out["error"]


@pytest.fixture
def root_logging():
    """Put the root logger back as it was (configure_logging replaces its handlers)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_configure_logging_json_writes_one_object_per_line(root_logging):
    stream = io.StringIO()
    configure_logging("json", stream=stream)
    logging.getLogger("helm_api.test").info("hello\nworld", extra=event_fields("test.event", job="j1"))
    [line] = stream.getvalue().splitlines()
    assert json.loads(line) == {**json.loads(line), "event": "test.event", "job": "j1", "message": "hello\\nworld"}


def test_configure_logging_leaves_a_hosts_logging_alone_unless_forced(root_logging):
    host = logging.StreamHandler(io.StringIO())
    logging.getLogger().handlers[:] = [host]
    configure_logging("json", stream=io.StringIO(), force=False)
    assert logging.getLogger().handlers == [host]


@pytest.mark.parametrize(
    ("environ", "flag", "expected"),
    [
        ({}, None, "text"),
        ({"HELM_API_LOG_FORMAT": "JSON"}, None, "json"),
        ({"HELM_API_LOG_FORMAT": "json"}, "text", "text"),
    ],
)
def test_log_format_from_flag_or_environment(environ, flag, expected):
    assert load_log_format(environ, flag) == expected


def test_unknown_log_format_names_the_variable():
    with pytest.raises(ConfigError) as e:
        load_log_format({"HELM_API_LOG_FORMAT": "xml"})
    assert "HELM_API_LOG_FORMAT" in e.value.message


# ----- the running command -------------------------------------------------------------------------------


def post_forged_apply(url: str) -> None:
    answer = requests.post(
        f"{url}/apply",
        json={"reason": "r" + FORGED, "request_id": "id" + FORGED},
        # The server refuses ESC in a header; a tab and a C1 control (NEL) get through to the log.
        headers={"Authorization": f"Bearer {TOKEN}", "User-Agent": "agent\t\x85"},
        timeout=10,
    )
    assert answer.status_code == 202, answer.text


def test_text_logs_of_the_command_escape_client_values(run_helm_api, offline_manifest):
    server = run_helm_api("--offline-cronjob", str(offline_manifest), env=clean_env(HELM_API_TOKEN=TOKEN))
    post_forged_apply(server.url)
    stderr = server.stop()
    assert "\x1b" not in stderr
    forged_lines = [line for line in stderr.splitlines() if "FORGED" in line]
    assert forged_lines, stderr
    # The forged text stays inside the record that carried it; no line of its own.
    assert all(" helm_api." in line.split("FORGED")[0].split("2030-01-01")[0] for line in forged_lines), stderr
    assert not any(line.startswith("2030-01-01") for line in stderr.splitlines())
    [requested] = [line for line in stderr.splitlines() if "apply requested" in line]
    assert f"request_id=id{FORGED_ESCAPED}" in requested


def test_json_logs_of_the_command_one_object_per_line(run_helm_api, offline_manifest):
    server = run_helm_api(
        "--offline-cronjob",
        str(offline_manifest),
        env=clean_env(HELM_API_TOKEN=TOKEN, HELM_API_LOG_FORMAT="json"),
    )
    post_forged_apply(server.url)
    stderr = server.stop()
    assert "\x1b" not in stderr
    records = [json.loads(line) for line in stderr.splitlines()]  # every line is one JSON object
    assert all({"ts", "level", "logger", "event", "message"} <= set(r) for r in records)
    events = {r["event"]: r for r in records}
    assert {"app.ready", "server.listening", "apply.requested", "apply.recorded", "server.stopped"} <= set(events)
    assert events["server.listening"]["port"] == server.port
    requested = events["apply.requested"]
    assert requested["request_id"] == "id" + FORGED_ESCAPED
    assert requested["reason"] == "r" + FORGED_ESCAPED
    assert requested["requested_by"].endswith("(agent\\t\\x85)")
    assert events["apply.recorded"]["job"] and events["apply.recorded"]["state"] == "running"
    assert TOKEN not in stderr
