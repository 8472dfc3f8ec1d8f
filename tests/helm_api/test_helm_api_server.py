"""The `helm-api` command as it is run in the image: waitress, slow and idle clients, limits, --version, env file."""

from __future__ import annotations

import re
import select
import shutil
import socket
import subprocess
import threading
from importlib.metadata import version
from pathlib import Path

import pytest
import requests
from helm_api_testing import clean_env, helm_api_command

from helm_api import config as helm_api_config
from helm_api.app import MAX_BODY_BYTES, create_app
from helm_api.config import load_server_settings
from helm_api.errors import ConfigError
from helm_api.server import ServerSettings, create_server

REPO = Path(__file__).resolve().parents[2]
ENV_EXAMPLE = REPO / "config" / "helm-api.env.example"
TOKEN = "server-test-token"
SLOW_CLIENTS = 40


def offline_env(**extra: str) -> dict[str, str]:
    return clean_env(HELM_API_TOKEN=TOKEN, **extra)


def test_healthz_answers_while_40_slow_clients_hold_their_connections(run_helm_api, offline_manifest):
    # Two threads only: the slow clients outnumber them twenty to one, and must hold none of them.
    server = run_helm_api("--offline-cronjob", str(offline_manifest), env=offline_env(HELM_API_THREADS="2"))
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
    slow = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(SLOW_CLIENTS)]
    stop = threading.Event()
    two_rounds_sent = threading.Event()
    send_errors: list[OSError] = []

    def drip() -> None:
        # One header byte per connection every second, never the blank line that ends the headers.
        position = 0
        while not stop.is_set():
            byte = head[position : position + 1] or b"a"
            for sock in slow:
                try:
                    sock.sendall(byte)
                except OSError as e:
                    send_errors.append(e)
            position += 1
            if position == 2:
                two_rounds_sent.set()
            stop.wait(1)

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    try:
        assert two_rounds_sent.wait(30)
        answers = [requests.get(f"{server.url}/healthz", timeout=10) for _ in range(3)]
        # Still held: the server neither answered nor closed any slow connection.
        readable, _, _ = select.select(slow, [], [], 0)
    finally:
        stop.set()
        dripper.join(10)
        for sock in slow:
            sock.close()
    assert [(a.status_code, a.json()) for a in answers] == [(200, {"status": "ok"})] * 3
    assert send_errors == []
    assert readable == []
    # Not Flask's development server (which names itself), and no server banner at all.
    assert "Server" not in answers[0].headers


def test_idle_and_stalled_connections_are_closed_after_the_idle_timeout(run_helm_api, offline_manifest):
    env = offline_env(HELM_API_IDLE_TIMEOUT_SECONDS="2")
    server = run_helm_api("--offline-cronjob", str(offline_manifest), env=env)
    idle = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    stalled = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    stalled.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers begun, never finished
    try:
        for sock in (idle, stalled):
            sock.settimeout(60)  # a safety net: the server closes them after about 2 s
            assert sock.recv(1024) == b""  # closed by the server, without an answer
    finally:
        idle.close()
        stalled.close()
    assert requests.get(f"{server.url}/healthz", timeout=10).status_code == 200


def test_version_prints_the_package_version():
    done = subprocess.run(
        [*helm_api_command(), "--version"], env=clean_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"helm-api {version('helmsman-cd')}"


def test_server_settings_from_the_environment_reach_waitress(offline_manifest):
    settings = load_server_settings(
        {"HELM_API_THREADS": "3", "HELM_API_CONNECTION_LIMIT": "50", "HELM_API_IDLE_TIMEOUT_SECONDS": "7"},
        max_request_body_size=MAX_BODY_BYTES,
    )
    assert settings == ServerSettings(
        threads=3, connection_limit=50, idle_timeout_seconds=7, max_request_body_size=MAX_BODY_BYTES
    )
    app = create_app(
        {"HELM_API_TOKEN": TOKEN, "HELM_API_OFFLINE_CRONJOB_FILE": str(offline_manifest)}, start_reconciler=False
    )
    server = create_server(app, "127.0.0.1", 0, settings)
    try:
        adj = server.adj
        assert (adj.threads, adj.connection_limit, adj.channel_timeout) == (3, 50, 7)
        assert adj.max_request_body_size == MAX_BODY_BYTES == app.config["MAX_CONTENT_LENGTH"]
        assert adj.ident is None  # no Server header
        assert adj.cleanup_interval <= 7  # idle connections are looked for often enough
    finally:
        server.close()


def test_server_settings_defaults():
    assert load_server_settings({}, max_request_body_size=MAX_BODY_BYTES) == ServerSettings(
        threads=4, connection_limit=256, idle_timeout_seconds=30, max_request_body_size=MAX_BODY_BYTES
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("HELM_API_THREADS", "0"),
        ("HELM_API_THREADS", "many"),
        ("HELM_API_CONNECTION_LIMIT", "1"),
        ("HELM_API_CONNECTION_LIMIT", "2.5"),
        ("HELM_API_IDLE_TIMEOUT_SECONDS", "0"),
        ("HELM_API_IDLE_TIMEOUT_SECONDS", "99999"),
    ],
)
def test_bad_server_settings_name_the_variable(name, value):
    with pytest.raises(ConfigError) as e:
        load_server_settings({name: value}, max_request_body_size=MAX_BODY_BYTES)
    assert name in e.value.message and value in e.value.message


def test_a_bad_server_setting_stops_the_command_with_one_line():
    done = subprocess.run(
        [*helm_api_command(), "--port", "0"],
        env=clean_env(HELM_API_TOKEN=TOKEN, HELM_API_THREADS="lots"),
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "helm-api: configuration error: HELM_API_THREADS must be a whole number, got 'lots'"
    ]


# ----- config/helm-api.env.example -----------------------------------------------------------------------


def documented_run_line() -> str:
    """The `set -a; . FILE; set +a; helm-api ...` line of the example's usage comment."""
    [line] = [line for line in ENV_EXAMPLE.read_text().splitlines() if line.lstrip("# ").startswith("set -a;")]
    return line.lstrip("# ").strip()


def test_env_example_usage_runs_as_documented(tmp_path, run_helm_api, offline_manifest):
    # The documented steps: copy the file to .work/helm-api.env, set the token; without a cluster, uncomment the
    # two offline-mode lines and render the CronJob where they point (here the test manifest stands in for it).
    text = ENV_EXAMPLE.read_text()
    (tmp_path / ".work").mkdir()
    edited, tokens_set = re.subn(r"(?m)^HELM_API_TOKEN=$", f"HELM_API_TOKEN={TOKEN}", text)
    edited, offline_lines = re.subn(r"(?m)^#(HELM_API_OFFLINE_(?:CRONJOB_FILE|JOBS_DIR)=)", r"\1", edited)
    assert (tokens_set, offline_lines) == (1, 2)
    (tmp_path / ".work" / "helm-api.env").write_text(edited)
    shutil.copy(offline_manifest, tmp_path / ".work" / "helmsman-cronjob.yaml")

    line = documented_run_line()
    assert "helm-api --host 127.0.0.1 --port 8080" in line
    env = clean_env(PATH=f"{Path(helm_api_command()[0]).parent}:{clean_env()['PATH']}")
    server = run_helm_api(env=env, cwd=tmp_path, shell=line.replace("--port 8080", "--port {port}"))

    answer = requests.post(
        f"{server.url}/apply", json={"reason": "env example"}, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    )
    assert answer.status_code == 202, answer.text
    assert (answer.json()["offline"], answer.json()["created"]) == (True, False)
    assert [p.name for p in (tmp_path / ".work" / "jobs").glob("*.yaml")] == [f"{answer.json()['job']}.yaml"]


def test_env_example_as_shipped_refuses_to_start_for_want_of_a_token(tmp_path):
    (tmp_path / ".work").mkdir()
    shutil.copy(ENV_EXAMPLE, tmp_path / ".work" / "helm-api.env")
    env = clean_env(PATH=f"{Path(helm_api_command()[0]).parent}:{clean_env()['PATH']}")
    done = subprocess.run(
        ["bash", "-c", documented_run_line().replace("--port 8080", "--port 0")],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert "configuration error: no API token: set HELM_API_TOKEN" in done.stderr


def test_env_example_fits_docker_env_file_and_names_only_known_variables():
    lines = [line for line in ENV_EXAMPLE.read_text().splitlines() if line.strip() and not line.startswith("#")]
    # `docker run --env-file` takes VAR=value literally: no quotes, no spaces, no expansion.
    assert lines and all(re.fullmatch(r"[A-Z][A-Z0-9_]*=[^\s'\"$]*", line) for line in lines), lines
    named = set(re.findall(r"(?m)^#?(HELM_API_[A-Z_]+)=", ENV_EXAMPLE.read_text()))
    known = set(re.findall(r'"(HELM_API_[A-Z_]+)"', Path(helm_api_config.__file__).read_text()))
    assert named and named <= known, named - known
    assert known <= named, f"not in the example: {known - named}"
