"""Command line: `polling-server [run] --config FILE [--once] [--dry-run]`, `check-config`, `status`.

Every command is a subcommand and takes `--config`; a bare `polling-server --config FILE` means `run` (the chart's
args use it). Exit codes, the same for every command (README, "Exit codes"):
  0  ok;
  1  a build or apply that `--once` ran failed for good (no retry left in this run);
  2  configuration, usage, state or operator error (one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from importlib import metadata

from polling_server.config import Settings, load_settings
from polling_server.errors import ConfigError, PollerError
from polling_server.logs import setup_logging
from polling_server.planning.model import BuildStatus
from polling_server.planning.versions import parse_release_tag

EXIT_OK, EXIT_FAILED, EXIT_ERROR = 0, 1, 2
COMMANDS = ("run", "check-config", "status", "logs", "rollback", "hold", "unhold", "approve", "reject")
FOLLOW_POLL_SECONDS = 0.5


def version() -> str:
    try:
        return metadata.version("helmsman-cd")
    except metadata.PackageNotFoundError:
        return "unknown"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # usage errors exit 2 with one line, as every other operator error
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="polling-server",
        description="Poll GitHub / git remotes and a Helm repository; build images and request helmsman applies.",
    )
    p.add_argument("--version", action="version", version=f"polling-server {version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_text, description=help_text)
        c.add_argument("--config", "-c", required=True, help="YAML configuration file")
        c.add_argument("-v", "--verbose", action="store_true", help="debug logging")
        c.add_argument("--log-format", choices=["text", "json"], help="overrides log_format of the configuration")
        return c

    run = command("run", "run the daemon (the default command)")
    run.add_argument("--once", action="store_true", help="run one full cycle (poll, build, apply) and exit")
    run.add_argument("--dry-run", action="store_true",
                     help="plan and report from a copy of the state in memory: save, build, push and post nothing")
    command("check-config", "validate the configuration and exit")
    status = command("status", "what is stored: per repository head, latest tag, last build; recent applies")
    status.add_argument("--json", action="store_true", help="print JSON")
    logs = command("logs", "print a build's log (its output, secrets masked)")
    logs.add_argument("build_id", type=int, metavar="BUILD_ID", help="the build's number (see status)")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing while the build runs")
    rb = command("rollback", "move staging (or another mutable tag) back to an earlier build's image, and hold")
    rb.add_argument("--repo", required=True, help="the repository's name in the configuration")
    rb.add_argument("--to", required=True, metavar="TARGET",
                    help="a commit SHA (or 7+ hex digits), a git tag name, or build:ID")
    rb.add_argument("--tag", default="staging", help="the mutable tag to move (default: staging)")
    rb.add_argument("--by", help="who does this (default: the user)")
    rb.add_argument("--dry-run", action="store_true", help="say what would be done, change nothing")
    h = command("hold", "stop the repository's mutable tags (staging, 1.2, 1) from moving")
    h.add_argument("--repo", required=True)
    h.add_argument("--reason")
    h.add_argument("--by")
    u = command("unhold", "end a hold: the mutable tags go to the newest built head and release")
    u.add_argument("--repo", required=True)
    for name, text in (("approve", "let a gated major release build"), ("reject", "drop a gated major release")):
        c = command(name, text)
        c.add_argument("--repo", required=True)
        c.add_argument("--tag", required=True, help="the git tag, e.g. v2.0.0")
        c.add_argument("--by")
        if name == "reject":
            c.add_argument("--reason")
    return p


def _normalise(argv: list[str]) -> list[str]:
    """A bare `--config F [--once]` (no subcommand) means `run`."""
    if any(a in ("-h", "--help", "--version") for a in argv[:1]):
        return argv
    first = next((a for a in argv if not a.startswith("-")), None)
    if first in COMMANDS and argv.index(first) == _first_positional_index(argv):
        return argv
    return ["run", *argv]


def _first_positional_index(argv: list[str]) -> int:
    takes_value = {"--config", "-c", "--log-format"}
    i = 0
    while i < len(argv):
        if argv[i] in takes_value:
            i += 2
            continue
        if not argv[i].startswith("-"):
            return i
        i += 1
    return -1


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(_normalise(list(sys.argv[1:] if argv is None else argv)))
    try:
        return _dispatch(args)
    except PollerError as e:
        print(f"polling-server: {e}", file=sys.stderr)
        return EXIT_ERROR


def _dispatch(args) -> int:
    try:
        settings = load_settings(args.config)
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return EXIT_ERROR
    if args.command == "check-config":
        print(f"{args.config}: OK ({len(settings.repositories)} repositories"
              f"{', chart repository ' + settings.chart_repository.url if settings.chart_repository else ''})")
        return EXIT_OK
    if args.command == "status":
        return _status(settings, args.json)
    if args.command == "logs":
        return _logs(settings, args.build_id, args.follow)
    if args.command in ("rollback", "hold", "unhold", "approve", "reject"):
        return _operate(settings, args)

    setup_logging(args.log_format or settings.log_format, logging.DEBUG if args.verbose else logging.INFO)
    from polling_server.daemon import Daemon

    daemon = Daemon(settings, dry_run=args.dry_run)
    if not args.once:
        try:
            daemon.run_forever()
        except PollerError:
            daemon.stop()
            raise
        return EXIT_OK
    try:
        report = daemon.run_once()
    finally:
        daemon.stop()
    _print_once(report, args.dry_run)
    return EXIT_FAILED if report.failed else EXIT_OK


def _operate(settings: Settings, args) -> int:
    from polling_server import operate
    from polling_server.builds.registry import registry_client_for
    from polling_server.state import StateStore

    store = StateStore(settings.state_path)
    try:
        if args.command == "rollback":
            result = operate.rollback(settings, store, registry_client_for(settings), args.repo, args.to, args.tag,
                                      args.by, args.dry_run)
            b = result.build
            was = f" (was build #{result.previous.build_id} {result.previous.sha[:12]})" if result.previous else ""
            verb = "would move" if args.dry_run else "moved"
            print(f"{verb} {args.repo} :{result.tag} to build #{b.id} {b.kind.value} {b.ref} {b.sha[:12]} "
                  f"{result.digest}{was}")
            if not args.dry_run:
                print(f"{args.repo} is held: merges are built and tagged sha-..., but move no tag until "
                      f"`polling-server unhold --repo {args.repo}`")
        elif args.command == "hold":
            hold = operate.hold(settings, store, args.repo, args.reason, args.by)
            print(f"{hold.repo} held by {hold.by}" + (f": {hold.reason}" if hold.reason else ""))
        elif args.command == "unhold":
            operate.unhold(settings, store, args.repo)
            moved = _move_tags_now(settings, store, args.repo)
            print(f"{args.repo} is no longer held" + (": moved " + ", ".join(
                f":{m.tag} to {m.sha[:12]}" for m in moved) if moved else ""))
        else:
            build = operate.decide(settings, store, args.repo, args.tag, args.command == "approve", args.by,
                                   getattr(args, "reason", None))
            print(f"{args.repo} {args.tag}: {build.status.value}" + (f" ({build.error})" if build.error else ""))
    finally:
        store.close()
    return EXIT_OK


def _move_tags_now(settings: Settings, store, repo: str) -> list:
    """After a hold ends, bring the tags where they belong at once (the daemon would at its next step)."""
    from polling_server.builds.registry import registry_client_for
    from polling_server.builds.tag_mover import TagMover
    from polling_server.metrics import Metrics

    return TagMover(settings, store, registry_client_for(settings), Metrics()).reconcile(repo)


def _print_once(report, dry_run: bool) -> None:
    c = report.cycle
    verb = "would build" if dry_run else "planned"
    print(f"cycle: {c.polled} polled, {c.skipped} not due, {len(c.failed)} failed; "
          f"{len(c.planned)} build(s) {verb}")
    for b in c.planned:
        version = f" version {b.version}" if b.version else ""
        print(f"  {verb}: {b.repo} {b.kind.value} {b.ref} {b.sha[:12]}{version}")
    for name, why in c.failed.items():
        print(f"  failed: {name}: {why}")
    for b in report.builds:
        print(f"  build {b.status.value}: {b.repo} {b.ref} {b.sha[:12]} "
              + (" ".join(b.pushed_tags) + f" {b.digest}" if b.digest else (b.error or "")))
    if report.chart_plan is not None and report.chart_plan.changes:
        print("  charts changed: " + ", ".join(ch.describe() for ch in report.chart_plan.changes))
    if report.chart_error:
        print(f"  chart poll failed: {report.chart_error}")
    for a in report.applies:
        print(f"  apply {a.status}: job={a.job} state={a.job_state}" + (f" ({a.last_error})" if a.last_error else ""))


def _status(settings: Settings, as_json: bool) -> int:
    from polling_server.state import StateStore

    # A copy in memory: `status` never creates, migrates or changes the state file.
    store = StateStore.in_memory_copy(settings.state_path)
    store.check_rows()
    rows = []
    for repo in settings.repositories:
        state = store.repo_state(repo.name)
        releases = sorted((v, t) for t, v in ((t, parse_release_tag(t)) for t in state.tags) if v is not None)
        builds = store.builds(repo=repo.name, limit=1)
        last = builds[0] if builds else None
        rows.append({
            "repository": repo.name,
            "branch": repo.branch,
            "baseline": state.baseline,
            "head": state.branch_head,
            "latest_tag": releases[-1][1] if releases else None,
            "last_build": None if last is None else {
                "id": last.id, "kind": last.kind.value, "ref": last.ref, "sha": last.sha,
                "status": last.status.value, "attempts": last.attempts, "error": last.error,
                "tags": list(last.pushed_tags), "digest": last.digest,
                "finished": _when(last.finished_at)},
        })
    applies = [{"id": a.id, "status": a.status, "job": a.job, "state": a.job_state, "error": a.last_error,
                "charts": [c.describe() for c in a.changes]} for a in store.applies(limit=5)]
    holds = [{"repository": h.repo, "by": h.by, "since": _when(h.at), "reason": h.reason,
              "rollback": h.rollback_id} for h in store.holds()]
    rollbacks = [{"id": r["id"], "repository": r["repo"], "tag": r["tag"], "by": r["by"], "at": _when(r["at"]),
                  "from": r["from_sha"], "to": r["to_sha"], "to_digest": r["to_digest"]}
                 for r in store.rollbacks(limit=10)]
    gated = [{"repository": b.repo, "tag": b.ref, "sha": b.sha, "version": b.version, "since": _when(b.created_at)}
             for b in store.builds(status=BuildStatus.AWAITING_APPROVAL, limit=50)]
    store.close()
    if as_json:
        print(json.dumps({"repositories": rows, "applies": applies, "holds": holds, "rollbacks": rollbacks,
                          "awaiting_approval": gated}, indent=2))
        return EXIT_OK
    print(f"{'REPOSITORY':30} {'BRANCH':12} {'HEAD':13} {'LATEST TAG':12} LAST BUILD")
    for r in rows:
        b = r["last_build"]
        build = "-" if b is None else (f"#{b['id']} {b['kind']} {b['ref']} {b['sha'][:12]} {b['status']}"
                                       + (f" ({b['error'][:60]})" if b["error"] else ""))
        print(f"{r['repository'][:30]:30} {r['branch'][:12]:12} {(r['head'] or '-')[:12]:13} "
              f"{(r['latest_tag'] or '-')[:12]:12} {build}")
    for a in applies:
        print(f"apply #{a['id']} {a['status']} job={a['job'] or '-'} {', '.join(a['charts'])}"
              + (f" ({a['error']})" if a["error"] else ""))
    for h in holds:
        print(f"held: {h['repository']} since {h['since']} by {h['by']}" + (f": {h['reason']}" if h["reason"] else ""))
    for r in rollbacks:
        print(f"rollback #{r['id']}: {r['repository']} :{r['tag']} {(r['from'] or '-')[:12]} -> {r['to'][:12]} "
              f"by {r['by']} at {r['at']}")
    for g in gated:
        print(f"awaiting approval: {g['repository']} {g['tag']} ({g['sha'][:12]}) since {g['since']}")
    return EXIT_OK


def _logs(settings: Settings, build_id: int, follow: bool) -> int:
    from pathlib import Path

    from polling_server.errors import OperatorError
    from polling_server.state import StateStore
    from polling_server.web.views import CUT_MARKER, log_chunk

    if not Path(settings.state_path).exists():
        raise OperatorError(f"there is no build {build_id} (no state database at {settings.state_path} yet)")
    # A snapshot is enough to print a log; following one needs the file itself, which the daemon keeps writing.
    store = StateStore(settings.state_path) if follow else StateStore.in_memory_copy(settings.state_path)
    offset = 0
    try:
        while True:
            chunk = log_chunk(store, build_id, offset, settings.secret_values())
            if chunk["cut"]:
                sys.stdout.write(CUT_MARKER.format(max_bytes=settings.builds.log_max_bytes))
            sys.stdout.write(chunk["text"])
            sys.stdout.flush()
            offset = chunk["next_offset"]
            if not follow or chunk["complete"]:
                return EXIT_OK
            time.sleep(FOLLOW_POLL_SECONDS)
    except KeyboardInterrupt:
        return 130
    finally:
        store.close()


def _when(ts: float | None) -> str | None:
    return None if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


if __name__ == "__main__":
    sys.exit(main())
