"""Log output: one line per decision, as text for people or as one JSON object per line (`--log-format json`).

Every decision is logged through `log_event(logger, "build.planned", repo=..., sha=...)`: the event name goes in
the `event` field, the identifiers in their own fields. Values that look like secrets are never passed here.

Much of what is logged comes from outside: chart names and versions from a Helm repository, tags and branch names
from git remotes, request ids, the error texts servers answer with. So no formatter here writes a control character
as it is: C0, DEL, C1, the Unicode line and paragraph separators, the bidirectional controls and lone surrogates
come out as JSON-style escapes (`\\n`, `\\u001b`). A value can neither start a line that looks like a record of
its own nor send escape sequences to the terminal of whoever reads the log.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import traceback
from typing import Any

# Line breaks of every kind, terminal controls, characters that reorder what a viewer shows, and surrogates
# (which would make the stream's encoder fail and lose the record).
_UNSAFE_CLASS = "\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff"
_UNSAFE = re.compile(f"[{_UNSAFE_CLASS}]")
# A text value is quoted when it could otherwise be misread as the end of the value or a field of its own.
_NEEDS_QUOTES = re.compile(rf'[\s"{_UNSAFE_CLASS}]')
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_SHA = re.compile(r"[0-9a-f]{40}")


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    return _NAMED.get(char) or f"\\u{ord(char):04x}"


def escape_controls(text: str) -> str:
    """`text` with every unsafe character written as a visible escape, the way JSON writes it (`\\u001b`)."""
    return _UNSAFE.sub(_escape_char, text)


def log_event(logger: logging.Logger, event: str, level: str | int = "info", msg: str | None = None,
              **fields: Any) -> None:
    """Log decision `event` with its identifiers as structured fields."""
    lvl = level if isinstance(level, int) else logging.getLevelName(level.upper())
    clean = {k: v for k, v in fields.items() if v is not None}
    logger.log(lvl, msg or event, extra={"event": event, "fields": clean})


def _exception_lines(exc_info) -> list[str]:
    """A traceback as Python lays it out, except that each exception's own text is escaped onto one line.

    The frames are ours (file names and source lines); the exception's message may quote a server or a remote,
    so a newline in it must not start a line of its own.
    """
    outermost = traceback.TracebackException(*exc_info, compact=True)
    chain: list[tuple[traceback.TracebackException, str | None]] = []
    current: traceback.TracebackException | None = outermost
    link: str | None = None
    while current is not None:
        chain.append((current, link))
        if current.__cause__ is not None:
            current, link = current.__cause__, "The above exception was the direct cause of the following exception:"
        elif current.__context__ is not None and not current.__suppress_context__:
            current, link = current.__context__, "During handling of the above exception, another exception occurred:"
        else:
            current = None
    lines: list[str] = []
    for exc, link_to_outer in reversed(chain):  # innermost first, as Python prints it
        if exc.stack:
            lines.append("Traceback (most recent call last):")
            for frame in exc.stack.format():
                lines.extend(escape_controls(line) for line in frame.rstrip("\n").split("\n"))
        lines.append(escape_controls("".join(exc.format_exception_only()).rstrip("\n")))
        if link_to_outer:
            lines.extend(["", link_to_outer, ""])
    return lines


def _trailer_lines(record: logging.LogRecord) -> list[str]:
    lines = _exception_lines(record.exc_info) if record.exc_info else []
    if record.stack_info:
        lines.extend(escape_controls(line) for line in record.stack_info.splitlines())
    return lines


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, "event", None) or "log",
        }
        out.update(getattr(record, "fields", {}) or {})
        message = record.getMessage()
        if message != out["event"]:
            out["message"] = message
        trailer = _trailer_lines(record)
        if trailer:
            out["error"] = "\n".join(trailer)
        # json.dumps escapes C0 but writes DEL, C1 and U+2028 as they are. Outside strings JSON is plain ASCII, so
        # escaping those in the serialised text keeps it valid and decodes back to the same values.
        return escape_controls(json.dumps(out, default=str, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%H:%M:%S", time.localtime(record.created))
        event = getattr(record, "event", None)
        fields = getattr(record, "fields", {}) or {}
        parts = [ts, record.levelname.lower().ljust(7)]
        message = escape_controls(record.getMessage())
        parts.append(escape_controls(event) if event else message)
        parts.extend(f"{escape_controls(str(k))}={_text_value(v)}" for k, v in fields.items())
        if event and message != event:
            parts.append(f"- {message}")
        return "\n".join([" ".join(parts), *_trailer_lines(record)])


def _text_value(v: Any) -> str:
    """A field value as written in the text format: bare when that is unambiguous, else a JSON string literal."""
    if isinstance(v, str) and _SHA.fullmatch(v):
        return v[:12]
    s = v if isinstance(v, str) else json.dumps(v, default=str, ensure_ascii=False)
    if not _NEEDS_QUOTES.search(s):
        return s
    return escape_controls(json.dumps(s, ensure_ascii=False))


def setup_logging(fmt: str = "text", level: int = logging.INFO, stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("urllib3", "apscheduler", "docker"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
