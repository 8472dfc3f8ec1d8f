"""The poller's logs: a value, a message or an exception text from outside can neither forge a line nor reach the
terminal as a control sequence, in the text and the JSON format; and the values still read back as they were."""

from __future__ import annotations

import io
import json
import logging
import re
import traceback

import pytest

from polling_server.logs import JsonFormatter, TextFormatter, escape_controls, log_event, setup_logging

FORGED_LINE = "v1\n12:00:00 info    build.succeeded"
COLOUR = "\x1b[31m"
# Every kind of character that must never reach the output as it is.
HOSTILE = [FORGED_LINE, COLOUR, "a\rb", "del\x7f", "csi\x9b2J", "nel\x85", "ls\u2028ps\u2029", "rlo\u202eabc",
           "nul\x00", "lone\udc80surrogate"]
RAW_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202e\ud800-\udfff]")


def emit(fmt: str, tag: str, msg: str | None = None, exc: BaseException | None = None) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logger = logging.getLogger(f"test_logs.{fmt}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    if exc is None:
        log_event(logger, "build.queued", repo="acme/app", tag=tag, msg=msg)
    else:
        try:
            raise exc
        except BaseException:
            logger.exception("build failed for %s", tag, extra={"event": "build.failed", "fields": {"tag": tag}})
    out = stream.getvalue()
    assert out.endswith("\n")
    return out[:-1]  # the handler's terminator


def text_field(line: str, key: str) -> str:
    """The value of `key=` in a text line: a bare word, or a JSON string literal when quoted."""
    m = re.search(rf'\b{key}=("(?:[^"\\]|\\.)*"|\S*)', line)
    assert m, line
    value = m.group(1)
    return json.loads(value) if value.startswith('"') else value


@pytest.mark.parametrize("tag", HOSTILE)
def test_text_value_is_quoted_escaped_and_reads_back(tag):
    out = emit("text", tag)
    assert not RAW_UNSAFE.search(out)  # one record, one line: no raw newline either
    assert text_field(out, "tag") == tag
    assert text_field(out, "repo") == "acme/app"  # plain values stay bare


@pytest.mark.parametrize("tag", HOSTILE)
def test_json_value_is_escaped_and_reads_back(tag):
    out = emit("json", tag)
    assert not RAW_UNSAFE.search(out)
    record = json.loads(out)
    assert record["tag"] == tag and record["event"] == "build.queued"


def test_the_forged_line_is_inside_the_value_not_a_record():
    out = emit("text", FORGED_LINE)
    assert 'tag="v1\\n12:00:00 info    build.succeeded"' in out
    assert "\x1b" not in emit("text", COLOUR) and 'tag="\\u001b[31m"' in emit("text", COLOUR)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_message_text_is_escaped(fmt):
    out = emit(fmt, "v1", msg=f"chart {FORGED_LINE} {COLOUR}pushed")
    assert not RAW_UNSAFE.search(out)
    message = json.loads(out)["message"] if fmt == "json" else out
    assert "v1\n12:00:00" in message if fmt == "json" else "v1\\n12:00:00 info    build.succeeded \\u001b[31m" in out


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_exception_text_is_escaped_but_the_traceback_keeps_its_shape(fmt):
    out = emit(fmt, FORGED_LINE, exc=chained_failure(f"registry said: {FORGED_LINE}", f"push of {COLOUR}x failed"))
    assert not RAW_UNSAFE.search(out.replace("\n", ""))
    text = json.loads(out)["error"] if fmt == "json" else out
    lines = text.rstrip("\n").split("\n")
    # Each exception's text is one line of its own, its newline written as \n; no line looks like a record.
    assert "ValueError: registry said: v1\\n12:00:00 info    build.succeeded" in lines
    assert "RuntimeError: push of \\u001b[31mx failed" in lines
    assert "The above exception was the direct cause of the following exception:" in lines
    assert lines.count("Traceback (most recent call last):") == 2
    assert not any(re.match(r"\d\d:\d\d:\d\d ", line) for line in lines[1:])
    if fmt == "json":
        assert "\n" not in out


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_plain_traceback_is_laid_out_as_python_does(fmt):
    exc = chained_failure("registry said: no", "push failed")
    out = emit(fmt, "v1", exc=exc)
    text = json.loads(out)["error"] if fmt == "json" else out.split("\n", 1)[1]
    assert text == "".join(traceback.format_exception(exc)).rstrip("\n")


def chained_failure(inner: str, outer: str) -> RuntimeError:
    try:
        try:
            raise ValueError(inner)
        except ValueError as e:
            raise RuntimeError(outer) from e
    except RuntimeError as e:
        return e


def test_plain_values_and_shas_are_unchanged():
    sha = "0123456789abcdef" * 2 + "01234567"
    out = emit("text", "v1.2.3")
    assert out.endswith(" repo=acme/app tag=v1.2.3")
    assert escape_controls("schön v1") == "schön v1"  # printable non-ASCII is left alone
    stream = io.StringIO()
    setup_logging("text", stream=stream)
    try:
        log_event(logging.getLogger("test_logs.sha"), "build.planned", sha=sha, reason="new head")
    finally:
        setup_logging("text")
    assert f"sha={sha[:12]} reason=\"new head\"" in stream.getvalue()
