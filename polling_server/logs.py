"""Log output: one line per decision, as text for people or as one JSON object per line (`--log-format json`).

Every decision is logged through `log_event(logger, "build.planned", repo=..., sha=...)`: the event name goes in
the `event` field, the identifiers in their own fields. Values that look like secrets are never passed here.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any


def log_event(logger: logging.Logger, event: str, level: str | int = "info", msg: str | None = None,
              **fields: Any) -> None:
    """Log decision `event` with its identifiers as structured fields."""
    lvl = level if isinstance(level, int) else logging.getLevelName(level.upper())
    clean = {k: v for k, v in fields.items() if v is not None}
    logger.log(lvl, msg or event, extra={"event": event, "fields": clean})


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
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%H:%M:%S", time.localtime(record.created))
        event = getattr(record, "event", None)
        fields = getattr(record, "fields", {}) or {}
        parts = [ts, record.levelname.lower().ljust(7)]
        message = record.getMessage()
        parts.append(event or message)
        parts.extend(f"{k}={_short(v)}" for k, v in fields.items())
        if event and message != event:
            parts.append(f"- {message}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _short(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str)
    if isinstance(v, str) and len(v) == 40 and all(c in "0123456789abcdef" for c in v):
        return v[:12]
    return s if " " not in s else json.dumps(s)


def setup_logging(fmt: str = "text", level: int = logging.INFO, stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("urllib3", "apscheduler", "docker"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
