"""The ``helm-api`` command: parse flags, load settings, set up logging, and serve the app with waitress."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import FrameType

from helm_api.errors import ConfigError
from helm_api.logs import LOG_FORMATS

DISTRIBUTION = "helmsman-cd"


def package_version() -> str:
    """The installed version of the distribution that ships helm_api (see pyproject.toml)."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown (not installed)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="helm-api",
        description="Start helmsman as a one-off Job from the helmsman CronJob, over HTTP.",
        epilog="Configuration comes from HELM_API_* environment variables; see the README.",
    )
    parser.add_argument("--version", action="version", version=f"helm-api {package_version()}")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    parser.add_argument(
        "--offline-cronjob",
        type=Path,
        metavar="FILE",
        help="offline mode: read the CronJob from this YAML file and create no Job "
        "(same as HELM_API_OFFLINE_CRONJOB_FILE)",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help="text (default) or json, one object per line (same as HELM_API_LOG_FORMAT)",
    )
    return parser.parse_args(argv)


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # The server loop ends on SystemExit, so Kubernetes' SIGTERM stops helm-api the same way as Ctrl-C.
    raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from helm_api.app import MAX_BODY_BYTES, create_app
    from helm_api.config import load_log_format, load_server_settings, load_settings
    from helm_api.logs import configure_logging
    from helm_api.server import serve

    try:
        log_format = load_log_format(override=args.log_format)
        server_settings = load_server_settings(max_request_body_size=MAX_BODY_BYTES)
        overrides = {"HELM_API_OFFLINE_CRONJOB_FILE": str(args.offline_cronjob) if args.offline_cronjob else None}
        settings = load_settings(overrides=overrides)
        # Only once every setting is read: a configuration error leaves the caller's logging as it was.
        configure_logging(log_format)
        app = create_app(settings=settings)
    except ConfigError as e:
        print(f"helm-api: configuration error: {e.message}", file=sys.stderr)
        return 2
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop_on_sigterm)
    state = app.extensions["helm_api"]
    try:
        serve(app, args.host, args.port, server_settings)
    except OSError as e:
        print(f"helm-api: cannot listen on {args.host}:{args.port}: {e.strerror or e}", file=sys.stderr)
        return 1
    finally:
        if state.schedule is not None:
            state.schedule.stop()
        state.reconciler.stop()
        state.backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
