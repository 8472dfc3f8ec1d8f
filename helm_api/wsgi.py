"""The WSGI entry point for gunicorn (``gunicorn helm_api.wsgi:app``), built on first access of ``app``.

Importing this module never fails; reading ``app`` builds the application once. A configuration error is
printed as one clear line and the process exits with gunicorn's "application could not be loaded" code (4),
so gunicorn stops instead of restarting workers forever.
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
            from helm_api.app import configure_logging, create_app
            from helm_api.errors import ConfigError

            configure_logging()
            try:
                _app = create_app()
            except ConfigError as e:
                print(f"helm-api: configuration error: {e.message}", file=sys.stderr)
                raise SystemExit(APP_LOAD_ERROR) from None
        return _app


def __getattr__(name: str) -> Any:
    if name in ("app", "application"):
        return get_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
