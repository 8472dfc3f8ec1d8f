"""Bearer-token auth, configuration from the environment, metrics, and the CLI/WSGI entry points."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from helm_api_testing import AUTH, NAMESPACE, TOKEN, base_config

from helm_api import errors
from helm_api.app import create_app
from helm_api.cli import main as cli_main
from helm_api.config import DEFAULT_CRONJOB, load_settings
from helm_api.errors import ConfigError
from helm_api.metrics import APPLY_ERRORS, CREATED_STATES, FINISHED_STATES

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"Authorization": "Bearer "},
    ],
)
def test_missing_or_wrong_token_is_401(client, kube, cronjob, headers):
    for method, path in (("POST", "/apply"), ("GET", "/apply"), ("GET", "/apply/x")):
        answer = client.open(path, method=method, headers=headers)
        assert answer.status_code == 401
        assert answer.headers["WWW-Authenticate"] == "Bearer"
        assert "token" in answer.get_json()["error"]
    assert kube.posted_jobs() == []


def test_right_token_and_open_endpoints(client, cronjob):
    assert client.post("/apply", headers=AUTH).status_code == 202
    assert client.post("/apply", headers={"Authorization": f"bearer {TOKEN}"}).status_code == 202
    for path in ("/healthz", "/readyz", "/metrics"):
        assert client.get(path).status_code == 200


def test_anonymous_access_when_explicitly_enabled(kube, cronjob):
    config = base_config(HELM_API_ALLOW_ANONYMOUS="true")
    del config["HELM_API_TOKEN"]
    app = create_app(config, api_client=kube.new_api_client(), start_reconciler=False)
    assert app.test_client().post("/apply").status_code == 202


def test_refuses_to_start_without_token(kube):
    config = base_config()
    del config["HELM_API_TOKEN"]
    with pytest.raises(ConfigError, match="HELM_API_TOKEN"):
        create_app(config, api_client=kube.new_api_client(), start_reconciler=False)
    with pytest.raises(ConfigError, match="HELM_API_ALLOW_ANONYMOUS"):
        create_app({**config, "HELM_API_ALLOW_ANONYMOUS": "maybe"}, api_client=kube.new_api_client())


def test_token_from_file_and_never_logged(tmp_path, kube, cronjob, caplog):
    token_file = tmp_path / "token"
    token_file.write_text("file-token-123\n")
    config = base_config(HELM_API_TOKEN_FILE=str(token_file))
    del config["HELM_API_TOKEN"]
    caplog.set_level(logging.DEBUG)
    app = create_app(config, api_client=kube.new_api_client(), start_reconciler=False)
    client = app.test_client()
    assert client.post("/apply", headers={"Authorization": "Bearer file-token-123"}).status_code == 202
    assert client.post("/apply", headers={"Authorization": "Bearer nope"}).status_code == 401
    settings = app.extensions["helm_api"].settings
    assert "file-token-123" not in repr(settings)
    assert "file-token-123" not in caplog.text


def test_settings_defaults(tmp_path):
    settings = load_settings({"HELM_API_TOKEN": "t"}, namespace_file=tmp_path / "missing")
    assert (settings.namespace, settings.cronjob_name, settings.reconcile_seconds) == ("default", DEFAULT_CRONJOB, 10)
    assert not settings.offline and not settings.in_cluster and not settings.allow_anonymous


def test_namespace_from_the_service_account_in_cluster(tmp_path):
    namespace_file = tmp_path / "namespace"
    namespace_file.write_text("helmsman-system\n")
    env = {"HELM_API_TOKEN": "t", "KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    assert load_settings(env, namespace_file=namespace_file).namespace == "helmsman-system"
    assert load_settings(env, namespace_file=namespace_file).in_cluster
    assert load_settings({**env, "HELM_API_NAMESPACE": "other"}, namespace_file=namespace_file).namespace == "other"
    # Outside a cluster the file is not consulted.
    assert load_settings({"HELM_API_TOKEN": "t"}, namespace_file=namespace_file).namespace == "default"


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"HELM_API_RECONCILE_SECONDS": "soon"}, "HELM_API_RECONCILE_SECONDS"),
        ({"HELM_API_RECONCILE_SECONDS": "0"}, "HELM_API_RECONCILE_SECONDS"),
        ({"HELM_API_RECONCILE_SECONDS": "-5"}, "HELM_API_RECONCILE_SECONDS"),
        ({"HELM_API_NAMESPACE": "Bad_Namespace"}, "HELM_API_NAMESPACE"),
        ({"HELM_API_CRONJOB": "UPPER"}, "HELM_API_CRONJOB"),
        ({"HELM_API_ALLOW_ANONYMOUS": "perhaps"}, "HELM_API_ALLOW_ANONYMOUS"),
        ({"HELM_API_TOKEN_FILE": "/nonexistent/token"}, "HELM_API_TOKEN_FILE"),
        ({"HELM_API_OFFLINE_CRONJOB_FILE": "/nonexistent.yaml"}, "HELM_API_OFFLINE_CRONJOB_FILE"),
    ],
)
def test_bad_values_name_the_variable(env, variable):
    with pytest.raises(ConfigError, match=variable):
        token = {} if "HELM_API_TOKEN_FILE" in env else {"HELM_API_TOKEN": "t"}
        load_settings({**token, **env})


def test_token_and_token_file_together_are_refused(tmp_path):
    (tmp_path / "t").write_text("x")
    with pytest.raises(ConfigError, match="only one"):
        load_settings({"HELM_API_TOKEN": "a", "HELM_API_TOKEN_FILE": str(tmp_path / "t")})


def test_no_kubeconfig_is_a_clear_config_error(tmp_path):
    config = base_config(KUBECONFIG=str(tmp_path / "missing-kubeconfig"))
    with pytest.raises(ConfigError, match="KUBECONFIG"):
        create_app(config, start_reconciler=False)


def test_metrics_count_applies(client, kube, cronjob):
    client.post("/apply", headers=AUTH)
    client.post("/apply", headers=AUTH)
    client.post("/apply", headers=AUTH)
    client.post("/apply", json={"request_id": "r1"}, headers=AUTH)
    client.post("/apply", json={"request_id": "r1"}, headers=AUTH)
    kube.fail_next(500, method="GET", path="/jobs")
    client.post("/apply", headers=AUTH)
    client.get("/apply", headers=AUTH)
    text = client.get("/metrics").get_data(as_text=True)
    expected = [
        "helm_api_applies_requested_total 6.0",
        'helm_api_applies_created_total{state="running"} 1.0',
        'helm_api_applies_created_total{state="queued"} 1.0',
        "helm_api_applies_coalesced_total 2.0",
        "helm_api_applies_duplicate_total 1.0",
        'helm_api_apply_failures_total{error="BackendUnavailableError"} 1.0',
        "helm_api_reconcile_runs_total 1.0",
    ]
    for line in expected:
        assert line in text, line


def test_fresh_metrics_have_no_created_series_and_every_known_outcome_at_zero(client):
    text = client.get("/metrics").get_data(as_text=True)
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert [s for s in samples if s.split("{")[0].split(" ")[0].endswith("_created")] == []
    expected = [f'helm_api_applies_created_total{{state="{state}"}} 0.0' for state in CREATED_STATES]
    expected += [f'helm_api_jobs_finished_total{{state="{state}"}} 0.0' for state in FINISHED_STATES]
    expected += [f'helm_api_apply_failures_total{{error="{error}"}} 0.0' for error in APPLY_ERRORS]
    for line in expected:
        assert line in samples, line
    assert {"running", "queued"} <= set(CREATED_STATES) and {"succeeded", "failed"} <= set(FINISHED_STATES)
    assert {"BackendUnavailableError", "ForbiddenError", "BusyError"} <= set(APPLY_ERRORS)
    assert all(issubclass(getattr(errors, name), errors.HelmApiError) for name in APPLY_ERRORS)


def test_each_app_has_its_own_metrics(make_app, cronjob):
    first, second = make_app(), make_app()
    first.test_client().post("/apply", headers=AUTH)
    assert "helm_api_applies_requested_total 0.0" in second.test_client().get("/metrics").get_data(as_text=True)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HELM_API_", "KUBERNETES_"))}
    env.update(extra)
    return env


def test_wsgi_with_a_config_error_prints_one_clear_line():
    done = subprocess.run(
        [sys.executable, "-c", "import helm_api.wsgi as w; w.app"],
        env=clean_env(), capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert done.returncode == 4
    assert "configuration error" in done.stderr and "HELM_API_TOKEN" in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_with_a_config_error_exits_2(capsys, monkeypatch):
    monkeypatch.delenv("HELM_API_TOKEN", raising=False)
    monkeypatch.delenv("HELM_API_TOKEN_FILE", raising=False)
    monkeypatch.delenv("HELM_API_ALLOW_ANONYMOUS", raising=False)
    assert cli_main(["--offline-cronjob", "/nonexistent.yaml"]) == 2
    assert "configuration error" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen) -> None:
    for _ in range(100):
        if process.poll() is not None:
            raise AssertionError(process.communicate()[1])
        try:
            if requests.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            time.sleep(0.1)
    raise AssertionError("the server did not start")


# The WSGI module is served here by waitress-serve, standing for any other WSGI server that embeds helm_api.
@pytest.mark.parametrize("how", ["cli", "wsgi"])
def test_entry_points_serve_offline(tmp_path, how, offline_manifest):
    port = free_port()
    env = clean_env(HELM_API_TOKEN="e2e-token", HELM_API_OFFLINE_JOBS_DIR=str(tmp_path / "jobs"))
    if how == "cli":
        command = [sys.executable, "-m", "helm_api", "--host", "127.0.0.1", "--port", str(port),
                   "--offline-cronjob", str(offline_manifest)]
    else:
        env["HELM_API_OFFLINE_CRONJOB_FILE"] = str(offline_manifest)
        command = [str(Path(sys.executable).parent / "waitress-serve"), f"--listen=127.0.0.1:{port}",
                   "helm_api.wsgi:app"]
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, process)
        answer = requests.post(f"{url}/apply", json={"reason": "e2e"},
                               headers={"Authorization": "Bearer e2e-token"}, timeout=10)
        assert answer.status_code == 202
        assert (answer.json()["created"], answer.json()["offline"]) == (False, True)
        assert requests.post(f"{url}/apply", timeout=10).status_code == 401
        assert len(list((tmp_path / "jobs").glob("*.yaml"))) == 1
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=20)
    assert "e2e-token" not in stderr
    assert "apply recorded" in stderr


def test_a_wsgi_server_stops_on_a_config_error():
    port = free_port()
    command = [str(Path(sys.executable).parent / "waitress-serve"), f"--listen=127.0.0.1:{port}", "helm_api.wsgi:app"]
    done = subprocess.run(command, env=clean_env(), cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 4
    assert "configuration error" in done.stderr and "HELM_API_TOKEN" in done.stderr


def test_namespace_in_answers(client, cronjob):
    assert client.post("/apply", headers=AUTH).get_json()["namespace"] == NAMESPACE
