"""helm-api's log output: one record per line, as text for people or one JSON object per line, never forgeable.

Client-supplied values (request ids, reasons, User-Agent, paths) reach log messages, so every formatter here
escapes control characters: a newline becomes the two characters ``\\n``, ESC becomes ``\\x1b``. Nobody can start a
fake log line or send escape sequences to an operator's terminal through a request.

Records may carry an event name and identifiers, passed as ``extra=event_fields("apply.created", job=...)``; the
JSON formatter writes them as their own fields, with the same shape as the poller's logs (ts, level, logger, event,
then the identifiers, then message). This module imports nothing of the poller: each service owns its own logs.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any, TextIO

LOG_FORMATS = ("text", "json")

# C0 and C1 controls and DEL, plus the Unicode line/paragraph separators and the bidirectional overrides,
# which some viewers also honour (a line break, or text shown in another order than it was written).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_control(text: str) -> str:
    """``text`` with every control character written as a visible escape (``\\n``, ``\\x1b``, ``\\u2028``)."""
    return _UNSAFE.sub(_escape_char, text)


def _escape_value(value: Any) -> Any:
    if isinstance(value, str):
        return escape_control(value)
    if isinstance(value, list | tuple):
        return [_escape_value(v) for v in value]
    if isinstance(value, dict):
        return {escape_control(str(k)): _escape_value(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float):
        return value
    return escape_control(str(value))


def event_fields(event: str, **fields: Any) -> dict[str, Any]:
    """The ``extra=`` of a log call: its event name and identifiers (None values are left out)."""
    return {"event": event, "fields": {k: v for k, v in fields.items() if v is not None}}


def _traceback_lines(formatter: logging.Formatter, record: logging.LogRecord) -> list[str]:
    """The record's traceback, one escaped line per line (an exception message may hold client values)."""
    parts: list[str] = []
    if record.exc_info:
        parts.append(formatter.formatException(record.exc_info))
    if record.stack_info:
        parts.append(formatter.formatStack(record.stack_info))
    return [escape_control(line) for part in parts for line in part.splitlines()]


class TextFormatter(logging.Formatter):
    """``<time> <LEVEL> <logger>: <message>``; a traceback follows on lines indented by four spaces, so no
    line that starts at the margin can come from anything but a new record."""

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{self.formatTime(record)} {record.levelname} {escape_control(record.name)}: "
            f"{escape_control(record.getMessage())}"
        )
        return "\n".join([line, *(f"    {tb}" for tb in _traceback_lines(self, record))])


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, event, the record's fields, message, error (traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        out: dict[str, Any] = {
            "ts": ts,
            "level": record.levelname.lower(),
            "logger": escape_control(record.name),
            "event": escape_control(str(getattr(record, "event", None) or "log")),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                # The fixed keys above always mean the same thing, whatever a caller passed.
                out.setdefault(escape_control(str(key)), _escape_value(value))
        out["message"] = escape_control(record.getMessage())
        traceback = _traceback_lines(self, record)
        if traceback:
            out["error"] = "\n".join(traceback)
        return json.dumps(out, default=str)


def configure_logging(
    fmt: str = "text", level: int = logging.INFO, stream: TextIO | None = None, *, force: bool = True
) -> None:
    """Send every logger's records to ``stream`` (stderr) in ``fmt``. With ``force=False`` logging that a host
    (another WSGI server) configured already is left alone."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
    root = logging.getLogger()
    if root.handlers and not force:
        logging.getLogger("helm_api").setLevel(level)
        return
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("helm_api").setLevel(level)
    # The kubernetes client logs each request at debug level; urllib3 warns about retries on its own.
    logging.getLogger("urllib3").setLevel(logging.WARNING)
