"""The charts lint cleanly, render with default and production-like values, and every rendered manifest
validates strictly against the newest Kubernetes schema kubernetes-validate knows."""

from __future__ import annotations

import kubernetes_validate
import pytest
from deploy_helpers import CHART_NAMES, CHARTS_DIR, VALUES_DIR, find, render, run_helm

pytestmark = pytest.mark.helm

K8S_VERSION = kubernetes_validate.latest_version()

VALUE_SETS = [(chart, ()) for chart in CHART_NAMES] + [
    ("polling-server", ("polling-server-production.yaml",)),
    ("polling-server", ("polling-server-production.yaml", "polling-server-external-docker.yaml")),
    ("helm-api", ("helm-api-production.yaml",)),
    ("helmsman-cronjob", ("helmsman-cronjob-production.yaml",)),
    ("helmsman-cronjob", ("helmsman-cronjob-production.yaml", "helmsman-cronjob-namespaced.yaml")),
]


def _ids(case):
    chart, files = case
    return "+".join([chart, *files]) if files else f"{chart}-defaults"


@pytest.mark.parametrize("chart", CHART_NAMES)
def test_helm_lint_strict(chart):
    result = run_helm("lint", "--strict", str(CHARTS_DIR / chart))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("chart", CHART_NAMES)
def test_helm_lint_strict_with_production_values(chart):
    values = VALUES_DIR / f"{chart}-production.yaml"
    result = run_helm("lint", "--strict", str(CHARTS_DIR / chart), "--values", str(values))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("case", VALUE_SETS, ids=_ids)
def test_rendered_manifests_validate_strictly(case):
    chart, files = case
    docs = render(chart, *(VALUES_DIR / f for f in files))
    assert docs, f"{chart} rendered nothing"
    for doc in docs:
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{chart} {name} is invalid for Kubernetes {K8S_VERSION}: {e.message} at {e.path}")


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def test_polling_server_single_replica_recreate_with_state_pvc():
    docs = render("polling-server", VALUES_DIR / "polling-server-production.yaml")
    (deploy,) = find(docs, "Deployment")
    assert deploy["spec"]["replicas"] == 1
    assert deploy["spec"]["strategy"] == {"type": "Recreate"}
    (pvc,) = find(docs, "PersistentVolumeClaim")
    volumes = {v["name"]: v for v in deploy["spec"]["template"]["spec"]["volumes"]}
    assert volumes["state"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert deploy["metadata"]["annotations"]["keel.sh/policy"] == "minor"
    assert deploy["metadata"]["annotations"]["keel.sh/trigger"] == "poll"


def test_polling_server_config_holds_placeholders_and_secret_refs_only():
    import yaml

    docs = render("polling-server", VALUES_DIR / "polling-server-production.yaml")
    (cm,) = find(docs, "ConfigMap")
    config = yaml.safe_load(cm["data"]["config.yaml"])
    assert config["state_path"] == "/var/lib/polling-server/state.db"
    assert config["http"]["port"] == 8081
    assert config["github"]["token"] == "${GITHUB_TOKEN}"
    assert config["registry"]["password"] == "${REGISTRY_PASSWORD}"
    assert config["helm_api"]["token"] == "${HELM_API_TOKEN}"
    assert config["chart_repository"]["password"] == "${CHART_REPO_PASSWORD}"
    assert config["repositories"][0]["repo"] == "example-org/example-app"

    (deploy,) = find(docs, "Deployment")
    containers = {c["name"]: c for c in deploy["spec"]["template"]["spec"]["containers"]}
    env = _env(containers["polling-server"])
    for var in ("GITHUB_TOKEN", "REGISTRY_USERNAME", "REGISTRY_PASSWORD", "HELM_API_TOKEN", "CHART_REPO_PASSWORD"):
        assert "secretKeyRef" in env[var]["valueFrom"], var
    assert env["DOCKER_HOST"]["value"] == "unix:///var/run/dind/docker.sock"
    assert containers["polling-server"]["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert containers["dind"]["securityContext"]["privileged"] is True
    assert "--host=unix:///var/run/dind/docker.sock" in containers["dind"]["args"]


def test_polling_server_external_docker_has_no_sidecar():
    docs = render(
        "polling-server",
        VALUES_DIR / "polling-server-production.yaml",
        VALUES_DIR / "polling-server-external-docker.yaml",
    )
    (deploy,) = find(docs, "Deployment")
    containers = deploy["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["polling-server"]
    env = _env(containers[0])
    assert env["DOCKER_HOST"]["value"] == "tcp://docker-builder.cd-system.svc:2376"
    assert env["DOCKER_TLS_VERIFY"]["value"] == "1"
    assert "CHART_REPO_PASSWORD" not in env
    assert not find(docs, "PersistentVolumeClaim")


def test_helm_api_role_grants_exactly_what_it_needs():
    docs = render("helm-api", VALUES_DIR / "helm-api-production.yaml", release="helm-api")
    (role,) = find(docs, "Role")
    assert role["metadata"]["namespace"] == "cd-system"
    assert role["rules"] == [
        {"apiGroups": ["batch"], "resources": ["cronjobs"], "resourceNames": ["helmsman-cronjob"], "verbs": ["get"]},
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["list", "get", "create", "patch"]},
    ]
    (binding,) = find(docs, "RoleBinding")
    (sa,) = find(docs, "ServiceAccount")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "cd-system"}]
    assert not find(docs, "ClusterRole") and not find(docs, "ClusterRoleBinding")


def test_helm_api_deployment_probes_token_and_keel():
    docs = render("helm-api", VALUES_DIR / "helm-api-production.yaml", release="helm-api")
    (deploy,) = find(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    env = _env(container)
    assert env["HELM_API_CRONJOB"]["value"] == "helmsman-cronjob"
    assert env["HELM_API_NAMESPACE"]["value"] == "cd-system"
    assert env["HELM_API_ALLOW_ANONYMOUS"]["value"] == "false"
    assert "HELM_API_TOKEN" not in env  # the token is a mounted file, never a literal
    token_volume = next(v for v in pod["volumes"] if v["name"] == "token")
    assert token_volume["secret"]["secretName"] == "helm-api-token"
    assert env["HELM_API_TOKEN_FILE"]["value"] == "/var/run/secrets/helm-api/token"
    assert deploy["metadata"]["annotations"] == {
        "keel.sh/policy": "force",
        "keel.sh/trigger": "poll",
        "keel.sh/pollSchedule": "@every 1m",
        "keel.sh/match-tag": "true",
    }
    (service,) = find(docs, "Service")
    assert service["spec"]["ports"][0]["port"] == 8080


def test_helmsman_cronjob_defaults():
    docs = render("helmsman-cronjob", release="helmsman-cronjob")
    (cron,) = find(docs, "CronJob")
    assert cron["apiVersion"] == "batch/v1"
    assert cron["metadata"]["name"] == "helmsman-cronjob"  # helm-api's default HELM_API_CRONJOB
    spec = cron["spec"]
    assert spec["suspend"] is True
    assert spec["concurrencyPolicy"] == "Forbid"
    job = spec["jobTemplate"]["spec"]
    assert isinstance(job["backoffLimit"], int)
    assert isinstance(job["ttlSecondsAfterFinished"], int)
    (binding,) = find(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == "cluster-admin"
    (sa,) = find(docs, "ServiceAccount")
    assert job["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    assert binding["subjects"][0]["name"] == sa["metadata"]["name"]


def test_helmsman_cronjob_runs_apply_on_the_dss_files_in_order():
    docs = render("helmsman-cronjob", VALUES_DIR / "helmsman-cronjob-production.yaml", release="helmsman-cronjob")
    (cron,) = find(docs, "CronJob")
    (cm,) = find(docs, "ConfigMap")
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == [
        "helmsman", "--apply",
        "-f", "/etc/helmsman/dss/common.yaml",
        "-f", "/etc/helmsman/dss/production.yaml",
        "-f", "/etc/helmsman/dss/zz-in-cluster-settings.yaml",
        "--keep-untracked-releases",
    ]  # fmt: skip
    assert set(cm["data"]) == {"common.yaml", "production.yaml", "values-helm-api.yaml", "zz-in-cluster-settings.yaml"}
    mount = next(m for m in container["volumeMounts"] if m["name"] == "dss")
    assert mount["mountPath"] == "/etc/helmsman/dss"
    volume = next(v for v in pod["volumes"] if v["name"] == "dss")
    assert volume["configMap"]["name"] == cm["metadata"]["name"]
    assert container["envFrom"] == [{"secretRef": {"name": "helmsman-env"}}]


def test_helmsman_cronjob_namespaced_rbac():
    docs = render(
        "helmsman-cronjob",
        VALUES_DIR / "helmsman-cronjob-production.yaml",
        VALUES_DIR / "helmsman-cronjob-namespaced.yaml",
    )
    assert not find(docs, "ClusterRoleBinding")
    bindings = find(docs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["apps-staging", "cd-system"]


def test_helmsman_cronjob_rejects_unknown_dss_order():
    result = run_helm("template", "x", str(CHARTS_DIR / "helmsman-cronjob"), "--set", "dss.order={common,missing}")
    assert result.returncode != 0
    assert "missing" in result.stderr


@pytest.mark.parametrize("values", [(), (VALUES_DIR / "polling-server-production.yaml",)],
                         ids=["defaults", "production"])
def test_polling_server_config_is_accepted_by_the_poller(values):
    """The rendered ConfigMap passes the poller's own validation, with every ${VAR} the Deployment provides."""
    import yaml

    from polling_server.config import parse_settings

    docs = render("polling-server", *values)
    (cm,) = find(docs, "ConfigMap")
    (deploy,) = find(docs, "Deployment")
    container = next(c for c in deploy["spec"]["template"]["spec"]["containers"] if c["name"] == "polling-server")
    env = {name: "x" for name in _env(container)}
    settings = parse_settings(yaml.safe_load(cm["data"]["config.yaml"]), "ConfigMap config.yaml", env)
    assert settings.state_path.startswith("/var/lib/polling-server/")
    assert settings.http.port == 8081
