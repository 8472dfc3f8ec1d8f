"""The helmsman desired state files in dss/: they parse, hold what helmsman requires, name charts that exist,
follow new versions of our charts through ranges, and contain no secret."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from deploy_helpers import CHARTS_DIR, DSS_DIR

OWN_REPO = "helmsman-cd"
ENVIRONMENTS = ("staging", "production")
DSS_FILES = sorted(DSS_DIR.glob("*.yaml"))
STATE_FILES = [p for p in DSS_FILES if not p.name.startswith("values-")]
EXACT_VERSION = re.compile(r"^v?\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.-]+)?$")
ENV_REF = re.compile(r"\$\{?[A-Z_][A-Z0-9_]*\}?")
SECRET_KEY = re.compile(r"(password|passwd|secret|token|htpasswd|credential|api[-_]?key|private[-_]?key)", re.I)
# Keys that name a Secret (or a key inside one) rather than hold a value; `secretKey`, `accessKey` and the like
# hold the value itself.
SECRET_REFERENCE_KEY = re.compile(
    r"^(?!.*(secret|access|private|api)[-_]?key$).*(name|key|existing(config)?secret|mappings?|secretname|secretref)$",
    re.I,
)
SECRET_LOOKING_TEXT = [
    re.compile(r"gh[pousr]_[A-Za-z0-9]{20,}"),
    re.compile(r"github_pat_[A-Za-z0-9_]{20,}"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{20,}"),  # a bcrypt hash, e.g. an htpasswd line
    re.compile(r"AKIA[0-9A-Z]{16}"),
]


def load(path: Path) -> dict:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path.name} is not a mapping"
    return data


def merged_state(env: str) -> dict:
    """What `helmsman -f common.yaml -f <env>.yaml` sees: later files override earlier ones."""
    state: dict = {}
    for name in ("common.yaml", f"{env}.yaml"):
        for key, value in load(DSS_DIR / name).items():
            if isinstance(value, dict) and isinstance(state.get(key), dict):
                state[key] = {**state[key], **value}
            else:
                state[key] = value
    return state


def plaintext_secrets(node, path: str = "") -> list[str]:
    """Paths of values that look like a pasted secret instead of a `$VAR` reference."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            found += plaintext_secrets(value, f"{path}.{key}" if path else str(key))
            last = str(key).rsplit(".", 1)[-1]
            # The values of a `...Mappings` map name keys inside a Secret (ChartMuseum's existingSecretMappings).
            in_mapping = bool(re.search(r"mappings?$", path.rsplit(".", 1)[-1], re.I))
            if (isinstance(value, str) and value and SECRET_KEY.search(last) and not in_mapping
                    and not SECRET_REFERENCE_KEY.search(last)):
                if ENV_REF.sub("", value).strip():
                    found.append(f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, item in enumerate(node):
            found += plaintext_secrets(item, f"{path}[{i}]")
    elif isinstance(node, str):
        match = re.search(r"://([^:/@\s]+):([^@/\s]+)@", node)
        if match and ENV_REF.sub("", match.group(2)):
            found.append(f"{path} (password in URL)")
        if any(p.search(node) for p in SECRET_LOOKING_TEXT):
            found.append(f"{path} (secret-looking text)")
    return found


def test_dss_directory_has_common_and_both_environments():
    names = {p.name for p in STATE_FILES}
    assert {"common.yaml", "staging.yaml", "production.yaml"} <= names


@pytest.mark.parametrize("path", DSS_FILES, ids=lambda p: p.name)
def test_every_file_parses(path):
    load(path)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_merged_state_holds_what_helmsman_requires(env):
    state = merged_state(env)
    assert state.get("namespaces"), "no namespaces"
    assert state.get("apps"), "no apps"
    assert all(isinstance(n, dict) and isinstance(n.get("protected"), bool) for n in state["namespaces"].values())
    repos = state.get("helmRepos", {})
    for name, app in state["apps"].items():
        for field in ("namespace", "enabled", "chart", "version"):
            assert field in app, f"{env}: app {name} has no {field}"
        assert isinstance(app["enabled"], bool), name
        assert app["namespace"] in state["namespaces"], f"{env}: {name} uses undeclared namespace {app['namespace']}"
        repo = app["chart"].split("/", 1)[0]
        assert repo in repos, f"{env}: {name} uses chart repository {repo!r}, not in helmRepos"
        for key in ("valuesFile", *(app.get("valuesFiles") or [])):
            ref = app.get(key) if key == "valuesFile" else key
            if ref:
                assert (DSS_DIR / ref).is_file(), f"{env}: {name} names missing values file {ref}"
        for ref in (app.get("setFile") or {}).values():
            assert (DSS_DIR / ref).is_file(), f"{env}: {name} names missing file {ref}"


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_whole_system_is_deployed(env):
    apps = merged_state(env)["apps"]
    charts = {app["chart"].split("/", 1)[1] for app in apps.values() if app["enabled"]}
    expected = {"docker-registry", "chartmuseum", "keel", "polling-server", "helm-api", "helmsman-cronjob"}
    assert expected <= charts


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_own_charts_exist_and_follow_new_versions(env):
    own = {n: a for n, a in merged_state(env)["apps"].items() if a["chart"].startswith(f"{OWN_REPO}/")}
    assert own, "no app uses our own charts"
    for name, app in own.items():
        chart = app["chart"].split("/", 1)[1]
        chart_yaml = CHARTS_DIR / chart / "Chart.yaml"
        assert chart_yaml.is_file(), f"{name}: chart {chart} is not in charts/"
        version = str(app["version"]).strip()
        assert version == "latest" or not EXACT_VERSION.match(version), (
            f"{env}: {name} pins {version}; use a range or latest so new chart versions deploy"
        )
        # The range must admit the chart version in the tree, or the first install fails.
        current = yaml.safe_load(chart_yaml.read_text())["version"]
        assert _admits(version, current), f"{env}: {name} range {version!r} rejects current version {current}"


def _admits(constraint: str, version: str) -> bool:
    import semver

    if constraint == "latest":
        return True
    v = semver.Version.parse(version.lstrip("v"))
    ops = {">=": lambda c: v >= c, ">": lambda c: v > c, "<=": lambda c: v <= c, "<": lambda c: v < c}
    for part in constraint.split():
        op = next(o for o in (">=", "<=", ">", "<") if part.startswith(o))
        bound = semver.Version.parse(part[len(op) :].lstrip("v"))
        if not ops[op](bound):
            return False
    return True


def test_production_protects_stateful_infrastructure_but_not_the_cd_namespace():
    state = merged_state("production")
    assert state["namespaces"]["cd-infra"]["protected"] is True
    own_namespaces = {a["namespace"] for a in state["apps"].values() if a["chart"].startswith(f"{OWN_REPO}/")}
    for ns in own_namespaces:
        assert state["namespaces"][ns]["protected"] is False, f"{ns} protected: new chart versions could not deploy"


@pytest.mark.parametrize("path", DSS_FILES, ids=lambda p: p.name)
def test_no_plaintext_secret(path):
    assert plaintext_secrets(load(path)) == []
    assert not any(p.search(path.read_text()) for p in SECRET_LOOKING_TEXT)


@pytest.mark.parametrize(
    "pasted",
    [
        {"apps": {"a": {"set": {"secrets.htpasswd": "admin:$2y$05$abcdefghijklmnopqrstuvwxyzABCDEFG"}}}},
        {"helmRepos": {"r": "https://user:hunter2@charts.example.com"}},
        {"apps": {"a": {"set": {"github.token": "ghp_abcdefghijklmnopqrstuvwxyz0123456789"}}}},
        {"apps": {"a": {"setString": {"registry.password": "s3cr3t"}}}},
        {"secrets": {"s3": {"secretKey": "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"}}},
    ],
)
def test_secret_detector_catches_a_pasted_secret(pasted):
    assert plaintext_secrets(pasted)


def test_secret_detector_accepts_env_references_and_secret_names():
    ok = {
        "helmRepos": {"r": "http://$CHART_REPO_USERNAME:$CHART_REPO_PASSWORD@$CHART_REPO_HOST"},
        "apps": {"a": {"set": {"secrets.htpasswd": "$REGISTRY_HTPASSWD", "tokenSecret.name": "helm-api-token"}}},
        "secrets": {"s3": {"secretRef": "registry-s3"}},
        "allInOne": {"s3": {"existingConfigSecret": "seaweedfs-s3-config"}},
    }
    assert plaintext_secrets(ok) == []


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_the_helmsman_job_gets_every_values_file(env):
    """The CronJob's ConfigMap (setFile) must carry every values file the DSS names, or the in-cluster apply
    fails on a file that the operator's apply found."""
    apps = merged_state(env)["apps"]
    named = {a["valuesFile"] for a in apps.values() if a.get("valuesFile")}
    carried = set(apps["helmsman-cronjob"]["setFile"].values())
    assert named <= carried, f"{env}: not given to the helmsman Job: {sorted(named - carried)}"


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_object_store_comes_first_pinned_and_in_cd_infra(env):
    apps = merged_state(env)["apps"]
    store = apps["seaweedfs"]
    assert store["namespace"] == "cd-infra" and store["group"] == "infra" and store["enabled"] is True
    # Third-party infrastructure is pinned: a new version is taken on purpose, not by the next apply.
    assert EXACT_VERSION.match(str(store["version"])), store["version"]
    assert store.get("wait") is True
    for user in ("docker-registry", "chartmuseum"):
        assert store["priority"] < apps[user]["priority"], f"{user} would start before its buckets exist"


def _secret_names_referenced_by_values() -> set[tuple[str, str]]:
    """(namespace, Secret) pairs the DSS values of third-party charts expect to exist."""
    ns = "cd-infra"
    registry = load(DSS_DIR / "values-docker-registry.yaml")
    chartmuseum = load(DSS_DIR / "values-chartmuseum.yaml")
    seaweedfs = load(DSS_DIR / "values-seaweedfs.yaml")
    return {
        (ns, registry["secrets"]["s3"]["secretRef"]),
        (ns, chartmuseum["env"]["existingSecret"]),
        (ns, seaweedfs["allInOne"]["s3"]["existingConfigSecret"]),
    }


def test_readme_secrets_step_creates_every_secret_the_infrastructure_reads():
    readme = (DSS_DIR.parent / "README.md").read_text()
    for namespace, name in sorted(_secret_names_referenced_by_values()):
        assert f"-n {namespace} create secret generic {name} " in readme, (
            f"README never creates Secret {name} in {namespace}"
        )
    chartmuseum = load(DSS_DIR / "values-chartmuseum.yaml")["env"]["existingSecretMappings"]
    for key in chartmuseum.values():
        assert f"--from-literal={key}=" in readme, f"README's chartmuseum-auth has no key {key}"
    assert "--from-literal=s3AccessKey=" in readme and "--from-literal=s3SecretKey=" in readme
    assert "--from-literal=seaweedfs_s3_config=" in readme


def test_readme_s3_identities_are_json_and_each_user_keeps_to_its_bucket():
    """Run the README's lines that build SeaweedFS's identities (with made-up keys) and read the result."""
    import json
    import subprocess

    readme = (DSS_DIR.parent / "README.md").read_text()
    lines = [line for line in readme.splitlines() if re.match(r"^S3_[A-Z_]+=", line)]
    assert any(line.startswith("S3_IDENTITIES=") for line in lines), "README builds no S3_IDENTITIES"
    fake = {f"S3_{who}_{what}_KEY": f"{who.lower()}-{what.lower()}-x"
            for who in ("REGISTRY", "CHARTS") for what in ("ACCESS", "SECRET")}
    script = "\n".join(line for line in lines if not re.match(r"^S3_[A-Z]+_(ACCESS|SECRET)_KEY=", line))
    done = subprocess.run(["bash", "-c", script + '\nprintf %s "$S3_IDENTITIES"'],
                          env={"PATH": "/usr/bin:/bin", **fake}, capture_output=True, text=True, check=True)
    identities = {i["name"]: i for i in json.loads(done.stdout)["identities"]}
    buckets = {
        "registry": load(DSS_DIR / "values-docker-registry.yaml")["s3"]["bucket"],
        "chartmuseum": load(DSS_DIR / "values-chartmuseum.yaml")["env"]["open"]["STORAGE_AMAZON_BUCKET"],
    }
    assert set(identities) == set(buckets)
    for name, bucket in buckets.items():
        assert {a.split(":", 1)[1] for a in identities[name]["actions"]} == {bucket}, f"{name} reaches beyond {bucket}"
        assert {a.split(":", 1)[0] for a in identities[name]["actions"]} >= {"Read", "Write", "List"}
    for name, who in (("registry", "registry"), ("chartmuseum", "charts")):
        assert identities[name]["credentials"] == [{"accessKey": f"{who}-access-x", "secretKey": f"{who}-secret-x"}]
