"""The ``helm-api`` command: parse flags, load settings, and serve the app with a threaded werkzeug server."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from helm_api.errors import ConfigError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="helm-api",
        description="Start helmsman as a one-off Job from the helmsman CronJob, over HTTP.",
        epilog="Configuration comes from HELM_API_* environment variables; see the README.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    parser.add_argument(
        "--offline-cronjob",
        type=Path,
        metavar="FILE",
        help="offline mode: read the CronJob from this YAML file and create no Job "
        "(same as HELM_API_OFFLINE_CRONJOB_FILE)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from helm_api.app import configure_logging, create_app
    from helm_api.config import load_settings

    configure_logging()
    try:
        overrides = {"HELM_API_OFFLINE_CRONJOB_FILE": str(args.offline_cronjob) if args.offline_cronjob else None}
        app = create_app(settings=load_settings(overrides=overrides))
    except ConfigError as e:
        print(f"helm-api: configuration error: {e.message}", file=sys.stderr)
        return 2
    from werkzeug.serving import run_simple

    run_simple(args.host, args.port, app, threaded=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
