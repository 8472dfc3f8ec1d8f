"""The command line: --once --dry-run against a local git repository, check-config, status, JSON logs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from polling_server.cli import main
from tests.gitrepo import GitRepo


@pytest.fixture
def setup(tmp_path):
    repo = GitRepo(tmp_path)
    repo.commit({"Dockerfile": "FROM scratch\n"}, "first")
    repo.tag("v1.0.0", annotated=True)
    cfg = tmp_path / "poller.yaml"
    cfg.write_text(f"state_path: state.db\nhttp: {{enabled: false}}\n"
                   f"repositories:\n  - url: {repo.url}\n    name: app\n    image: team/app\n")
    return repo, cfg


def run(*args):
    return subprocess.run([sys.executable, "-m", "polling_server", *args], capture_output=True, text=True,
                          timeout=60)


def test_once_dry_run_plans_exactly_the_expected_builds(setup, tmp_path):
    repo, cfg = setup
    # A real (non-dry) first cycle records the baseline; nothing to build yet.
    first = run("--config", str(cfg), "--once", "--log-format", "json")
    assert first.returncode == 0, first.stderr
    events = [json.loads(line) for line in first.stderr.splitlines() if line.startswith("{")]
    assert [e["event"] for e in events if e["event"] == "baseline.recorded"] == ["baseline.recorded"]
    assert all(e["repo"] == "app" for e in events if e["event"] == "baseline.recorded")

    new = repo.commit({"x": "1"})
    repo.tag("v1.1.0")
    repo.tag("not-a-version")
    out = run("--config", str(cfg), "--once", "--dry-run", "--log-format", "json")
    assert out.returncode == 0, out.stderr
    assert f"would build: app staging master {new[:12]}" in out.stdout
    assert f"would build: app release v1.1.0 {new[:12]} version 1.1.0" in out.stdout
    assert "2 build(s) would build" in out.stdout
    events = [json.loads(line) for line in out.stderr.splitlines() if line.startswith("{")]
    planned = [(e["kind"], e["ref"], e["sha"]) for e in events if e["event"] == "build.planned"]
    assert planned == [("staging", "master", new), ("release", "v1.1.0", new)]
    assert [e["ref"] for e in events if e["event"] == "tag.ignored"] == ["not-a-version"]
    # Dry run saved nothing: status still shows no build.
    assert main(["status", "--config", str(cfg), "--json"]) == 0


def test_status_shows_head_tag_and_last_build(setup, capsys):
    repo, cfg = setup
    assert main(["--config", str(cfg), "--once", "--dry-run"]) == 0
    capsys.readouterr()
    assert main(["status", "--config", str(cfg), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["repositories"][0]["repository"] == "app"
    assert data["repositories"][0]["last_build"] is None


def test_check_config(setup, tmp_path, capsys):
    _, cfg = setup
    assert main(["check-config", "--config", str(cfg)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("state_path: s.db\nrepositories:\n  - url: /x\n    image: a/b\n    branchh: main\n")
    assert main(["check-config", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "repositories[0]" in err and "branchh" in err


def test_bad_config_exits_non_zero_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("state_path: s.db\npoll_interval_seconds: -5\n")
    out = run("--config", str(bad), "--once")
    assert out.returncode == 2
    assert "poll_interval_seconds" in out.stderr and "Traceback" not in out.stderr


def test_help_lists_the_commands_and_each_takes_config():
    out = run("--help")
    assert out.returncode == 0
    for command in ("run", "check-config", "status"):
        assert command in out.stdout
        sub = run(command, "--help")
        assert sub.returncode == 0 and "--config" in sub.stdout
    assert "--dry-run" in run("run", "--help").stdout


def test_version():
    out = run("--version")
    assert out.returncode == 0 and out.stdout.startswith("polling-server ")


@pytest.mark.parametrize("args", [[], ["run"], ["--config"], ["status"], ["bogus", "--config", "x.yaml"],
                                  ["run", "--config", "x.yaml", "--no-such-flag"]])
def test_usage_errors_exit_2_with_one_line(args):
    out = run(*args)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and "error:" in out.stderr


def test_once_exits_1_when_a_build_it_ran_failed(tmp_path):
    repo = GitRepo(tmp_path)
    repo.commit({"Dockerfile": "FROM scratch\n"}, "first")
    cfg = tmp_path / "failing.yaml"
    cfg.write_text(json.dumps({
        "state_path": str(tmp_path / "f.db"), "http": {"enabled": False},
        "builds": {"retries": 2, "retry_backoff_seconds": 60},
        "repositories": [{"url": repo.url, "name": "app", "image": "team/app", "initial_build": True}]}))
    env = {**__import__("os").environ, "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    out = subprocess.run([sys.executable, "-m", "polling_server", "--config", str(cfg), "--once"],
                         capture_output=True, text=True, timeout=120, env=env)
    # The build failed and has retries left, but none in this run: that is a failure of this run.
    assert out.returncode == 1, out.stderr
    assert "build queued: app master" in out.stdout and "EngineUnavailable" in out.stdout
    # Nothing due any more: the next --once ran no build and is ok.
    again = subprocess.run([sys.executable, "-m", "polling_server", "--config", str(cfg), "--once"],
                           capture_output=True, text=True, timeout=120, env=env)
    assert again.returncode == 0, again.stderr
