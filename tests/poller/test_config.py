"""Configuration: validated once, errors name the file and the key, ${VAR} expansion, secrets masked."""

from __future__ import annotations

import pytest

from polling_server.config import load_settings, parse_settings
from polling_server.errors import ConfigError

MINIMAL = {"state_path": "s.db", "repositories": [{"repo": "acme/app", "image": "acme/app"}]}


def test_defaults():
    s = parse_settings(MINIMAL, env={})
    r = s.repositories[0]
    assert (r.name, r.branch, r.dockerfile, r.context, r.kind) == ("acme/app", "master", "Dockerfile", ".", "github")
    assert s.github.api_url == "https://api.github.com"
    assert s.poll_interval_seconds == 60 and s.reconcile_interval_seconds == 600
    assert s.builds.retries == 2 and s.builds.concurrency == 1
    assert s.chart_repository is None and s.helm_api is None


def test_example_file_is_valid(monkeypatch):
    env = {"GITHUB_TOKEN": "t", "REGISTRY_USERNAME": "u", "REGISTRY_PASSWORD": "p", "HELM_API_TOKEN": "h",
           "CHART_REPO_USERNAME": "cu", "CHART_REPO_PASSWORD": "cp"}
    s = load_settings("config/poller.example.yaml", env=env)
    assert s.repositories and s.chart_repository and s.helm_api


def test_env_expansion_and_masking():
    data = {**MINIMAL, "github": {"token": "${GH_TOKEN}", "api_url": "https://ghe.example.com/api/v3/"},
            "registry": {"host": "reg:5000", "username": "ci", "password": "${REG_PW:-fallback}"}}
    s = parse_settings(data, env={"GH_TOKEN": "ghp_secret123"})
    assert s.github.token == "ghp_secret123"
    assert s.github.api_url == "https://ghe.example.com/api/v3"
    assert s.registry.password == "fallback"
    assert "ghp_secret123" not in repr(s) and "fallback" not in repr(s)


@pytest.mark.parametrize("patch,where,what", [
    ({"state_path": None}, "state_path", "is required"),
    ({"poll_interval_seconds": -1}, "poll_interval_seconds", "greater than 0"),
    ({"poll_interval_seconds": "soon"}, "poll_interval_seconds", "must be float"),
    ({"surprise": 1}, "(top level)", "unknown key(s) surprise"),
    ({"github": {"token": "${MISSING}"}}, "github.token", "MISSING is not set"),
    ({"github": {"api_url": "ftp://x"}}, "github.api_url", "http(s)"),
    ({"repositories": [{"repo": "acme/app", "image": "acme/app", "brnch": "x"}]}, "repositories[0]", "brnch"),
    ({"repositories": [{"repo": "acme/app", "image": "acme/app", "branch": "a..b"}]}, "repositories[0].branch",
     "not a valid git branch"),
    ({"repositories": [{"repo": "acme", "image": "acme/app"}]}, "repositories[0].repo", "owner/name"),
    ({"repositories": [{"image": "acme/app"}]}, "repositories[0]", "exactly one of"),
    ({"repositories": [{"repo": "a/b", "url": "/x", "image": "acme/app"}]}, "repositories[0]", "exactly one of"),
    ({"repositories": [{"repo": "a/b", "image": "Acme/App:1"}]}, "repositories[0].image", "without tag"),
    ({"repositories": [{"repo": "a/b", "image": "a/b", "context": "../x"}]}, "repositories[0].context", "relative"),
    ({"repositories": [{"repo": "a/b", "image": "a/b"}, {"repo": "a/b", "image": "a/c"}]}, "repositories",
     "two repositories"),
    ({"repositories": [{"url": "--upload-pack=evil", "image": "a/b"}]}, "repositories[0].url", "must not start"),
    ({"chart_repository": {"url": "http://charts"}}, "helm_api", "required"),
    ({"registry": {"password": "x"}}, "registry.username", "password is set"),
    ({"chart_repository": {"url": "http://c", "password": "x"}, "helm_api": {"url": "http://h"}},
     "chart_repository.username", "password is set"),
    ({"log_format": "xml"}, "log_format", "text or json"),
])
def test_errors_name_file_key_and_problem(patch, where, what):
    data = {**MINIMAL, **patch}
    with pytest.raises(ConfigError) as e:
        parse_settings(data, source="/etc/poller.yaml", env={})
    message = str(e.value)
    assert message.startswith("/etc/poller.yaml: ")
    assert where in message and what in message


def test_unreadable_and_invalid_yaml_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("repositories: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad)


def test_state_path_relative_to_the_config_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("state_path: data/state.db\nrepositories: []\n")
    assert load_settings(f, env={}).state_path == str(tmp_path / "data/state.db")
