"""The WSGI entry point for another WSGI server (``helm_api.wsgi:app``), built on first access of ``app``.

The supported way to serve helm_api is the ``helm-api`` command (waitress with the settings of helm_api.server);
this module is for embedding it elsewhere, where that server's own limits apply. Importing this module never
fails; reading ``app`` builds the application once. A configuration error is printed as one clear line and the
process exits with code 4 (gunicorn's "application could not be loaded"), so a server that restarts failed
workers stops instead of looping. Logging a host configured already is left alone.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

APP_LOAD_ERROR = 4

_lock = threading.Lock()
_app: Any = None


def get_app() -> Any:
    global _app
    with _lock:
        if _app is None:
            from helm_api.app import create_app
            from helm_api.config import load_log_format
            from helm_api.errors import ConfigError
            from helm_api.logs import configure_logging

            try:
                configure_logging(load_log_format(), force=False)
                _app = create_app()
            except ConfigError as e:
                print(f"helm-api: configuration error: {e.message}", file=sys.stderr)
                raise SystemExit(APP_LOAD_ERROR) from None
        return _app


def __getattr__(name: str) -> Any:
    if name in ("app", "application"):
        return get_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
