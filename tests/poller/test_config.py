"""Configuration: validated once, errors name the file and the key, ${VAR} expansion, secrets masked."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from polling_server.config import branch_name_problem, load_settings, parse_settings
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
    ({"poll_interval_seconds": -1}, "poll_interval_seconds", "between 0.1 and 86400 seconds"),
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


# --- values that used to pass check-config and then crash or misbehave ------------------------------------------
def repo_with(**kw) -> dict:
    return {**MINIMAL, "repositories": [{"repo": "acme/app", "image": "acme/app", **kw}]}


@pytest.mark.parametrize("patch,where,what", [
    ({"poll_interval_seconds": float("inf")}, "poll_interval_seconds", "finite"),
    ({"poll_interval_seconds": float("nan")}, "poll_interval_seconds", "finite"),
    ({"reconcile_interval_seconds": float("-inf")}, "reconcile_interval_seconds", "finite"),
    ({"github": {"timeout_seconds": float("inf")}}, "github.timeout_seconds", "finite"),
    ({"helm_api": {"url": "http://h", "max_backoff_seconds": float("nan")}}, "helm_api.max_backoff_seconds",
     "finite"),
    ({"poll_interval_seconds": 10 ** 400}, "poll_interval_seconds", "too large"),
    ({"poll_interval_seconds": 0.001}, "poll_interval_seconds", "between 0.1 and 86400"),
    ({"poll_interval_seconds": 86401}, "poll_interval_seconds", "between 0.1 and 86400"),
    ({"reconcile_interval_seconds": 8 * 86400}, "reconcile_interval_seconds", "between 0.1 and 604800"),
    ({"builds": {"timeout_seconds": 1e12}}, "builds.timeout_seconds", "between 0 and 86400"),
    ({"builds": {"retry_backoff_seconds": -1}}, "builds.retry_backoff_seconds", "between 0 and 86400"),
    ({"state_path": ""}, "state_path", "must not be empty"),
    ({"state_path": "${STATE_PATH:-}"}, "state_path", "must not be empty"),
    ({"builds": {"concurrency": 65}}, "builds.concurrency", "between 1 and 64"),
    ({"builds": {"concurrency": 0}}, "builds.concurrency", "between 1 and 64"),
    (repo_with(branch="HEAD"), "repositories[0].branch", "not a valid git branch name: it names HEAD"),
    (repo_with(branch="@"), "repositories[0].branch", "not a valid git branch name: it names HEAD"),
    (repo_with(branch="main\x7f"), "repositories[0].branch", "contains '\\x7f'"),
    (repo_with(branch="feature/.x"), "repositories[0].branch", "starts with '.'"),
    (repo_with(branch="x.lock"), "repositories[0].branch", ".lock"),
    (repo_with(branch="v1."), "repositories[0].branch", "ends with '.'"),
    (repo_with(branch="a@{1}"), "repositories[0].branch", "'@{'"),
    ({"registry": {"host": "https://reg.example.com"}}, "registry.host", "give host[:port] only"),
    ({"registry": {"host": "http://10.0.0.5:5000"}}, "registry.host", "registry.insecure: true"),
    ({"registry": {"host": "reg.example.com/team"}}, "registry.host", "host[:port] only"),
    ({"registry": {"host": "reg.example.com:99999"}}, "registry.host", "port outside"),
    ({"registry": {"insecure": True}}, "registry.insecure", "needs host"),
    ({"registry": {"host": "reg:5000", "insecure": "yes"}}, "registry.insecure", "must be bool"),
    (repo_with(repo="../.."), "repositories[0].repo", "owner/name"),
    (repo_with(repo="acme/.."), "repositories[0].repo", "owner/name"),
    (repo_with(repo="acme/."), "repositories[0].repo", "owner/name"),
    (repo_with(repo="./app"), "repositories[0].repo", "owner/name"),
    (repo_with(repo="acme/a..b"), "repositories[0].repo", "owner/name"),
    (repo_with(repo="-acme/app"), "repositories[0].repo", "owner/name"),
    (repo_with(repo="acme/app/extra"), "repositories[0].repo", "owner/name"),
    (repo_with(repo="acme/app.git"), "repositories[0].repo", "without '.git'"),
])
def test_values_that_would_crash_later_are_refused(patch, where, what):
    with pytest.raises(ConfigError) as e:
        parse_settings({**MINIMAL, **patch}, source="/etc/poller.yaml", env={})
    message = str(e.value)
    assert message.startswith("/etc/poller.yaml: ") and "\n" not in message
    assert where in message and what in message


@pytest.mark.parametrize("repo", ["acme/app", "Acme-Corp/my.app_2", "octocat_emu/x", "a/.github", "a/b-c.d"])
def test_github_names_that_are_valid(repo):
    assert parse_settings(repo_with(repo=repo), env={}).repositories[0].repo == repo


def test_registry_host_and_insecure():
    s = parse_settings({**MINIMAL, "registry": {"host": "registry.cd-system.svc:5000", "insecure": True}}, env={})
    assert (s.registry.host, s.registry.insecure) == ("registry.cd-system.svc:5000", True)
    assert parse_settings(MINIMAL, env={}).registry.insecure is False
    for host in ("localhost:5000", "127.0.0.1:5000", "[::1]:5000", "ghcr.io"):
        assert parse_settings({**MINIMAL, "registry": {"host": host}}, env={}).registry.host == host
    trailing = parse_settings({**MINIMAL, "registry": {"host": "reg.example.com/"}}, env={})
    assert trailing.registry.host == "reg.example.com"


# --- ${VAR} for numbers and booleans --------------------------------------------------------------------------------
def test_a_whole_value_from_the_environment_is_read_as_a_yaml_scalar():
    data = {**MINIMAL, "poll_interval_seconds": "${POLL:-30}", "builds": {"concurrency": "${CONC}"},
            "http": {"port": "${PORT:-}", "enabled": "${HTTP_ON:-false}"},
            "registry": {"host": "reg:5000", "insecure": "${INSECURE}"},
            "repositories": [{"repo": "acme/app", "image": "acme/app", "floating_tags": "${FT:-true}"}]}
    s = parse_settings(data, env={"CONC": "4", "INSECURE": "yes"})
    assert s.poll_interval_seconds == 30.0 and isinstance(s.poll_interval_seconds, float)
    assert s.builds.concurrency == 4
    assert s.http.port == 8081  # `${PORT:-}` with PORT unset: as if not given
    assert s.http.enabled is False and s.registry.insecure is True
    assert s.repositories[0].floating_tags is True
    again = parse_settings(data, env={"POLL": "2.5", "CONC": "1", "INSECURE": "false", "FT": "false"})
    assert (again.poll_interval_seconds, again.repositories[0].floating_tags, again.registry.insecure) == \
        (2.5, False, False)


def test_strings_stay_strings_and_secrets_keep_the_raw_expansion():
    data = {**MINIMAL, "github": {"token": "${TOKEN}", "status_context_prefix": "cd-${N:-1}"},
            "helm_api": {"url": "http://h", "token": "${HELM_TOKEN}"},
            "repositories": [{"repo": "acme/app", "image": "acme/app", "branch": "${BRANCH}"}]}
    s = parse_settings(data, env={"TOKEN": "123", "HELM_TOKEN": "true", "BRANCH": "2024"})
    assert s.github.token == "123" and type(str(s.github.token)) is str
    assert s.helm_api.token == "true"
    assert s.github.status_context_prefix == "cd-1"
    assert s.repositories[0].branch == "2024"


@pytest.mark.parametrize("value,env,what", [
    ("${A:-1}0", {}, "must be float, got str '10'"),  # part of a longer string: stays a string
    ("x${A:-1}", {}, "must be float, got str 'x1'"),
    ("${POLL}", {"POLL": "[1, 2]"}, "must be float, got str '[1, 2]'"),  # not a scalar: stays text
    ("${POLL}", {"POLL": "soon"}, "must be float, got str 'soon'"),
    ("${POLL}", {"POLL": ".inf"}, "finite"),
    ("${POLL}", {"POLL": "true"}, "must be float, got bool"),
    ("${POLL}", {"POLL": "{a: 1"}, "must be float, got str"),  # not YAML at all
])
def test_an_expansion_is_type_checked(value, env, what):
    with pytest.raises(ConfigError, match="poll_interval_seconds") as e:
        parse_settings({**MINIMAL, "poll_interval_seconds": value}, env=env)
    assert what in str(e.value)


# --- duplicate keys -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,key,line,first", [
    ("state_path: a.db\nrepositories: []\nstate_path: b.db\n", "state_path", 3, 1),
    ("state_path: s.db\ngithub:\n  timeout_seconds: 5\n  token: x\n  timeout_seconds: 6\n", "timeout_seconds", 5,
     3),
    ('{"state_path": "s.db", "http": {"port": 1, "port": 2}}', "port", 1, 1),
    ("state_path: s.db\nrepositories:\n  - repo: a/b\n    image: a/b\n    branch: x\n    branch: y\n", "branch",
     6, 5),
])
def test_a_key_given_twice_is_an_error_naming_key_and_line(tmp_path, text, key, line, first):
    f = tmp_path / "dup.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_settings(f, env={})
    assert str(e.value) == (f"{f}: line {line}: the key {key!r} is given twice in one mapping "
                            f"(first at line {first})")


def test_merge_keys_may_override_what_they_merge(tmp_path):
    f = tmp_path / "merge.yaml"
    f.write_text("state_path: s.db\nrepositories:\n"
                 "  - &app {repo: acme/app, image: acme/app, branch: main}\n"
                 "  - <<: *app\n    repo: acme/web\n    image: acme/web\n")
    web = load_settings(f, env={}).repositories[1]
    assert (web.repo, web.image, web.branch) == ("acme/web", "acme/web", "main")


def test_invalid_yaml_is_one_line_with_the_position(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("state_path: s.db\nrepositories: [\n")
    with pytest.raises(ConfigError) as e:
        load_settings(bad)
    assert str(e.value).startswith(f"{bad}: not valid YAML at line 3") and "\n" not in str(e.value)


# --- branch names: the same answers as git itself ------------------------------------------------------------------
BRANCH_NAMES = [
    "main", "master", "feature/x", "release/1.2", "v1.2.3", "a-b_c", "héllo", "x@", "@x", "a@b", "a./b", "a.b",
    "refs/heads/x", "HEAD/x", "x/HEAD", "head", "a+b", "a,b", "#1", "a{b}", "a}b", "@{", "a@{b", "@{-1}",
    "HEAD", "@", "", "-x", "x-", ".x", "x.", "a..b", "a/.b", "/a", "a/", "a//b", "a.lock", "a.lock/b", "a/b.lock",
    "x.lock.y", "a b", "a\tb", "a~1", "a^", "a:b", "a?", "a*", "a[b", "a\\b", "a\x7fb", "a\x01b", "a\x1b[31m",
    ".", "..", "/", "a/./b", ".lock", "a.", "é.lock", "lock", "a/b/c/d",
]
# Stricter than `git check-ref-format --branch`: `@` is HEAD to every command that reads a revision.
STRICTER = {"@"}


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_branch_rules_agree_with_git_check_ref_format(tmp_path):
    assert len(BRANCH_NAMES) >= 40
    # Outside any repository, so git takes the name as written (no @{-1} or @ resolution).
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env["GIT_CEILING_DIRECTORIES"] = str(tmp_path.parent)
    disagree = []
    for name in BRANCH_NAMES:
        git_ok = subprocess.run(["git", "check-ref-format", "--branch", name], cwd=tmp_path, env=env,
                                capture_output=True, timeout=60).returncode == 0
        expected = git_ok and name not in STRICTER
        if (branch_name_problem(name) is None) != expected:
            disagree.append((name, git_ok, branch_name_problem(name)))
    assert not disagree
    assert all(branch_name_problem(n) for n in STRICTER)
