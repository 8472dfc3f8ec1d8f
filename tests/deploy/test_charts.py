"""The charts lint cleanly, render with default and production-like values, and every rendered manifest
validates strictly against the newest Kubernetes schema kubernetes-validate knows."""

from __future__ import annotations

import kubernetes_validate
import pytest
from deploy_helpers import (
    CHART_NAMES,
    CHARTS_DIR,
    DSS_DIR,
    REPO_ROOT,
    VALUES_DIR,
    find,
    render,
    render_notes,
    run_helm,
)

pytestmark = pytest.mark.helm

K8S_VERSION = kubernetes_validate.latest_version()

VALUE_SETS = [(chart, ()) for chart in CHART_NAMES] + [
    ("polling-server", ("polling-server-production.yaml",)),
    ("polling-server", ("polling-server-production.yaml", "polling-server-external-docker.yaml")),
    ("helm-api", ("helm-api-production.yaml",)),
    ("helmsman-cronjob", ("helmsman-cronjob-production.yaml",)),
    ("helmsman-cronjob", ("helmsman-cronjob-production.yaml", "helmsman-cronjob-namespaced.yaml")),
    ("polling-server", ("polling-server-no-chart-watch.yaml",)),
    ("polling-server", ("polling-server-production.yaml", "polling-server-insecure-registry.yaml")),
    ("polling-server", ("polling-server-production.yaml", "keel-approvals.yaml")),
    ("helm-api", ("helm-api-production.yaml", "keel-approvals.yaml")),
    ("polling-server", ("polling-server-production.yaml", "polling-server-webhooks.yaml")),
    ("polling-server", ("polling-server-production.yaml", "polling-server-webhooks.yaml",
                        "polling-server-status-and-notifications.yaml")),
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
    assert containers["polling-server"]["readinessProbe"]["httpGet"]["path"] == "/readyz"
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


POLLER_CONFIG_CASES = {
    "defaults": (),
    "production": ("polling-server-production.yaml",),
    "external-docker": ("polling-server-production.yaml", "polling-server-external-docker.yaml"),
    "no-chart-watch": ("polling-server-no-chart-watch.yaml",),
    # Needs the poller's `registry.insecure` key (the lead adds it to polling_server/config.py).
    "insecure-registry": ("polling-server-production.yaml", "polling-server-insecure-registry.yaml"),
    "webhooks": ("polling-server-production.yaml", "polling-server-webhooks.yaml",
                 "polling-server-status-and-notifications.yaml"),
}

# What the Secrets read whole (envFrom) hold in these tests: their keys become the pod's variables.
ENV_FROM_SECRETS = {"polling-server-notifications": ("SLACK_WEBHOOK_URL", "AUDIT_WEBHOOK_URL", "AUDIT_WEBHOOK_SECRET")}


def _pod_env(container: dict, missing: tuple[str, ...] = ()) -> dict[str, str]:
    """The variables the pod would see, with plausible values: URLs for *_URL, secrets long enough for the hooks.

    `missing`: variables whose optional Secret key is absent (Kubernetes then leaves them unset).
    """
    names = [n for n in _env(container) if n not in missing]
    for source in container.get("envFrom", []):
        names += ENV_FROM_SECRETS[source["secretRef"]["name"]]
    return {n: f"https://hooks.example.com/{n.lower()}" if n.endswith("_URL") else f"{n.lower()}-test-value"
            for n in names}


def _poller_settings(docs: list[dict], missing: tuple[str, ...] = ()):
    import yaml

    from polling_server.config import parse_settings

    (cm,) = find(docs, "ConfigMap")
    (deploy,) = find(docs, "Deployment")
    container = next(c for c in deploy["spec"]["template"]["spec"]["containers"] if c["name"] == "polling-server")
    env = _pod_env(container, missing)
    return parse_settings(yaml.safe_load(cm["data"]["config.yaml"]), "ConfigMap config.yaml", env), env


@pytest.mark.parametrize("case", POLLER_CONFIG_CASES)
def test_polling_server_config_is_accepted_by_the_poller(case):
    """The rendered ConfigMap passes the poller's own validation, with every ${VAR} the Deployment provides."""
    docs = render("polling-server", *(VALUES_DIR / f for f in POLLER_CONFIG_CASES[case]))
    settings, env = _poller_settings(docs)
    assert settings.state_path.startswith("/var/lib/polling-server/")
    assert settings.http.port == 8081
    watching = case != "no-chart-watch"
    assert (settings.chart_repository is not None) is watching
    assert (settings.helm_api is not None) is watching
    if case == "insecure-registry":
        assert settings.registry.insecure is True
    hooks = case == "webhooks"
    assert settings.webhooks.port == (8082 if hooks else None)
    for secrets, var in ((settings.webhooks.github_secrets, "GITHUB_WEBHOOK_SECRET"),
                         (settings.webhooks.gitlab_tokens, "GITLAB_WEBHOOK_TOKEN"),
                         (settings.webhooks.gitea_secrets, "GITEA_WEBHOOK_SECRET"),
                         (settings.webhooks.charts_tokens, "CHARTS_WEBHOOK_TOKEN")):
        assert list(secrets) == ([env[var]] if hooks else [])
    assert settings.http.read_token == (env["STATUS_READ_TOKEN"] if hooks else None)
    assert settings.http.public_url == ("https://cd.example.com" if hooks else None)
    github = settings.github
    budget = (450.0, 20, True, True) if hooks else (600.0, 10, False, None)
    assert (github.max_requests_per_minute, github.max_concurrent_requests, github.org_feeds,
            github.commit_statuses) == budget
    if hooks:
        assert [(n.name, n.url, n.format, n.events, n.secret) for n in settings.notifications] == [
            ("team-chat", env["SLACK_WEBHOOK_URL"], "slack",
             ("build.failed", "apply.job_failed", "release.awaiting_approval"), None),
            ("audit", env["AUDIT_WEBHOOK_URL"], "json", ("build.failed", "build.superseded"),
             env["AUDIT_WEBHOOK_SECRET"]),
        ]
    else:
        assert settings.notifications == ()


def test_polling_server_without_chart_watching_renders_no_chart_repository_nor_helm_api():
    import yaml

    docs = render("polling-server", VALUES_DIR / "polling-server-no-chart-watch.yaml")
    (cm,) = find(docs, "ConfigMap")
    config = yaml.safe_load(cm["data"]["config.yaml"])
    assert "chart_repository" not in config
    assert "helm_api" not in config
    (deploy,) = find(docs, "Deployment")
    containers = {c["name"]: c for c in deploy["spec"]["template"]["spec"]["containers"]}
    env = _env(containers["polling-server"])
    # Their Secrets need not exist: a missing Secret would keep the pod from starting.
    assert "HELM_API_TOKEN" not in env and "CHART_REPO_PASSWORD" not in env
    assert "GITHUB_TOKEN" in env and "REGISTRY_PASSWORD" in env


def test_polling_server_default_chart_repository_is_where_the_dss_installs_chartmuseum():
    import yaml

    common = yaml.safe_load((DSS_DIR / "common.yaml").read_text())
    namespace = common["apps"]["chartmuseum"]["namespace"]
    expected = f"http://chartmuseum.{namespace}.svc:8080"
    (cm,) = find(render("polling-server"), "ConfigMap")
    assert yaml.safe_load(cm["data"]["config.yaml"])["chart_repository"]["url"] == expected
    dss_values = yaml.safe_load((DSS_DIR / "values-polling-server.yaml").read_text())
    assert dss_values["config"]["chartRepository"]["url"] == expected
    assert expected.split("//", 1)[1] in (REPO_ROOT / "README.md").read_text()


@pytest.mark.parametrize("insecure", [False, True], ids=["tls", "insecure"])
def test_polling_server_insecure_registry_reaches_config_and_dind(insecure):
    import yaml

    files = [VALUES_DIR / "polling-server-production.yaml"]
    if insecure:
        files.append(VALUES_DIR / "polling-server-insecure-registry.yaml")
    docs = render("polling-server", *files)
    (cm,) = find(docs, "ConfigMap")
    registry = yaml.safe_load(cm["data"]["config.yaml"])["registry"]
    (deploy,) = find(docs, "Deployment")
    containers = {c["name"]: c for c in deploy["spec"]["template"]["spec"]["containers"]}
    flags = [a for a in containers["dind"]["args"] if a.startswith("--insecure-registry")]
    if insecure:
        assert registry["insecure"] is True
        assert registry["host"] == "docker-registry.cd-infra.svc:5000"
        assert flags == ["--insecure-registry=docker-registry.cd-infra.svc:5000"]
    else:
        assert "insecure" not in registry
        assert flags == []
    assert "--mtu=1400" in containers["dind"]["args"]  # extraArgs still come through


@pytest.mark.parametrize("chart", ["polling-server", "helm-api"])
def test_keel_annotations_carry_approvals_notify_and_any_other(chart):
    production = VALUES_DIR / f"{chart}-production.yaml"
    docs = render(chart, production, VALUES_DIR / "keel-approvals.yaml", release=chart)
    (deploy,) = find(docs, "Deployment")
    assert deploy["metadata"]["annotations"] == {
        "keel.sh/policy": "minor",
        "keel.sh/trigger": "poll",
        "keel.sh/pollSchedule": "@every 5m",  # keel.annotations wins over keel.pollSchedule
        "keel.sh/approvals": "2",
        "keel.sh/approvalDeadline": "48",
        "keel.sh/notify": "cd-deploys",
        "keel.sh/releaseNotes": "https://github.com/example-org/helmsman-cd/releases",
        **({"keel.sh/match-tag": "true"} if chart == "helm-api" else {}),
    }


@pytest.mark.parametrize("chart", ["polling-server", "helm-api"])
def test_keel_disabled_renders_no_annotation(chart):
    (deploy,) = find(render(chart, release=chart), "Deployment")
    assert not deploy["metadata"].get("annotations")


@pytest.mark.parametrize("chart", ["polling-server", "helm-api"])
def test_helm_test_hook_asks_the_service_for_healthz_with_an_image_the_chart_uses(chart):
    docs = render(chart, VALUES_DIR / f"{chart}-production.yaml", release=chart)
    tests = [d for d in find(docs, "Pod") if d["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
    assert len(tests) == 1, "one helm test Pod"
    (pod,) = tests
    (service,) = find(docs, "Service")
    (deploy,) = find(docs, "Deployment")
    chart_images = {c["image"] for c in deploy["spec"]["template"]["spec"]["containers"]}
    (container,) = pod["spec"]["containers"]
    assert container["image"] in chart_images
    url = f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}/healthz"
    assert container["command"][-1] == url
    assert pod["spec"]["restartPolicy"] == "Never"
    # The Service must never send traffic to the test Pod.
    selector = service["spec"]["selector"]
    assert not all(pod["metadata"]["labels"].get(k) == v for k, v in selector.items())


def test_helm_test_hook_can_be_turned_off():
    docs = render("helm-api", release="helm-api")
    assert find(docs, "Pod")
    import yaml

    result = run_helm("template", "helm-api", str(CHARTS_DIR / "helm-api"), "--set", "tests.enabled=false")
    assert result.returncode == 0, result.stderr
    assert not [d for d in yaml.safe_load_all(result.stdout) if d and d["kind"] == "Pod"]


def test_helm_api_runs_the_image_command_never_gunicorn():
    docs = render("helm-api", VALUES_DIR / "helm-api-production.yaml", release="helm-api")
    (deploy,) = find(docs, "Deployment")
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert "command" not in container and "args" not in container  # the image's `helm-api --host ... --port 8080`
    assert container["ports"][0]["containerPort"] == 8080
    assert "gunicorn" not in (CHARTS_DIR / "helm-api" / "values.yaml").read_text()
    assert all("gunicorn" not in p.read_text() for p in (CHARTS_DIR / "helm-api" / "templates").rglob("*.*"))


TYPOS = [
    ("polling-server", "config.pollIntervalSecond=5", "pollIntervalSecond"),
    ("polling-server", "config.chartRepository.enable=false", "enable"),
    ("polling-server", "keel.aprovals=2", "aprovals"),
    ("polling-server", "docker.dind.extraArg={--mtu=1400}", "extraArg"),
    ("polling-server", "persistance.enabled=false", "persistance"),
    ("helm-api", "tokenSecret.nmae=x", "nmae"),
    ("helm-api", "replicas=2", "replicas"),
    ("helmsman-cronjob", "dss.fils.common=x", "fils"),
    ("helmsman-cronjob", "job.backofLimit=1", "backofLimit"),
    ("polling-server", "webhooks.ingres.enabled=true", "ingres"),
    ("polling-server", "webhooks.ingress.hosts={a.example.com}", "hosts"),
    ("polling-server", "config.github.orgFeed=true", "orgFeed"),
    ("polling-server", "config.http.publicURL=https://cd.example.com", "publicURL"),
    ("polling-server", "secrets.statusPage.nmae=x", "nmae"),
    ("polling-server", "secrets.webhooks.githubKey=x", "githubKey"),
    ("polling-server", "secrets.notifications.key=x", "key"),
]


@pytest.mark.parametrize("command", ["lint", "template"])
@pytest.mark.parametrize(("chart", "setting", "typo"), TYPOS, ids=[t[1].split("=")[0] for t in TYPOS])
def test_values_schema_rejects_a_typo(command, chart, setting, typo):
    result = run_helm(command, *(["x"] if command == "template" else []), str(CHARTS_DIR / chart), "--set", setting)
    assert result.returncode != 0, f"helm {command} accepted {setting}"
    assert f"Additional property {typo} is not allowed" in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("chart", "setting"),
    [("polling-server", "config.registry.insecure=maybe"), ("helm-api", "keel.trigger=sometimes"),
     ("helmsman-cronjob", "concurrencyPolicy=Parallel"),
     ("polling-server", "config.github.maxRequestsPerMinute=901"),
     ("polling-server", "config.github.maxConcurrentRequests=0"),
     ("polling-server", "config.github.commitStatuses=sometimes"),
     ("polling-server", "config.http.publicUrl=cd.example.com"),
     ("polling-server", "webhooks.port=70000"),
     ("polling-server", "webhooks.enabled=yes")],
)
def test_values_schema_rejects_a_wrong_type_or_value(chart, setting):
    result = run_helm("template", "x", str(CHARTS_DIR / chart), "--set", setting)
    assert result.returncode != 0, f"helm template accepted {setting}"
    assert "values don't meet the specifications of the schema" in result.stderr


@pytest.mark.parametrize("chart", CHART_NAMES)
def test_values_schema_accepts_the_dss_values(chart):
    result = run_helm("lint", "--strict", str(CHARTS_DIR / chart), "--values", str(DSS_DIR / f"values-{chart}.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_helmsman_cronjob_notes_name_the_cronjob_files_and_secrets():
    notes = render_notes("helmsman-cronjob", VALUES_DIR / "helmsman-cronjob-production.yaml",
                         release="helmsman-cronjob")
    assert 'CronJob "helmsman-cronjob" is installed in namespace cd-system and suspended' in notes
    assert notes.index("common.yaml") < notes.index("production.yaml") < notes.index("zz-in-cluster-settings.yaml")
    assert "  helmsman-env" in notes
    assert "--from=cronjob/helmsman-cronjob" in notes


def test_helmsman_cronjob_notes_when_scheduled():
    notes = render_notes("helmsman-cronjob", VALUES_DIR / "helmsman-cronjob-production.yaml",
                         VALUES_DIR / "helmsman-cronjob-namespaced.yaml", release="helmsman-cronjob")
    assert 'runs on schedule "*/30 * * * *"' in notes
    assert "suspended" not in notes


def test_polling_server_notes_list_only_the_secrets_it_reads():
    watching = render_notes("polling-server", VALUES_DIR / "polling-server-production.yaml")
    assert "/readyz" in watching and "helm-api-token" in watching and "chartmuseum-auth" in watching
    building_only = render_notes("polling-server", VALUES_DIR / "polling-server-no-chart-watch.yaml")
    assert "Chart watching is off" in building_only
    assert "helm-api-token" not in building_only and "chartmuseum-auth" not in building_only
    assert "polling-server-github" in building_only and "helm test polling-server" in building_only



# Webhooks, the status page, the GitHub budget and notifications.

WEBHOOKS = VALUES_DIR / "polling-server-webhooks.yaml"
STATUS_AND_NOTIFICATIONS = VALUES_DIR / "polling-server-status-and-notifications.yaml"
PRODUCTION = VALUES_DIR / "polling-server-production.yaml"
WEBHOOK_VARS = {"GITHUB_WEBHOOK_SECRET": "github-secret", "GITLAB_WEBHOOK_TOKEN": "gitlab-token",
                "GITEA_WEBHOOK_SECRET": "gitea-secret", "CHARTS_WEBHOOK_TOKEN": "charts-token"}


def _poller_container(docs: list[dict]) -> dict:
    (deploy,) = find(docs, "Deployment")
    return next(c for c in deploy["spec"]["template"]["spec"]["containers"] if c["name"] == "polling-server")


def _config(docs: list[dict]) -> dict:
    import yaml

    (cm,) = find(docs, "ConfigMap")
    return yaml.safe_load(cm["data"]["config.yaml"])


@pytest.mark.parametrize("files", [(), (PRODUCTION,), (PRODUCTION, STATUS_AND_NOTIFICATIONS)],
                         ids=["defaults", "production", "status-page"])
def test_polling_server_publishes_nothing_and_takes_no_hooks_by_default(files):
    docs = render("polling-server", *files)
    assert not find(docs, "Ingress")  # the status page and /metrics stay inside the cluster
    (service,) = find(docs, "Service")
    assert [p["name"] for p in service["spec"]["ports"]] == ["http"]
    container = _poller_container(docs)
    assert [p["name"] for p in container["ports"]] == ["http"]
    assert not set(_env(container)) & set(WEBHOOK_VARS)
    assert "webhooks" not in _config(docs)


def test_polling_server_hooks_have_their_own_port_and_the_ingress_routes_only_hooks():
    docs = render("polling-server", PRODUCTION, WEBHOOKS)
    container = _poller_container(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8081, "hooks": 8082}
    assert _config(docs)["webhooks"]["port"] == ports["hooks"]  # the listener the poller opens is the one exposed
    (service,) = find(docs, "Service")
    by_name = {p["name"]: p for p in service["spec"]["ports"]}
    assert by_name["hooks"] == {"name": "hooks", "port": 8082, "targetPort": "hooks", "protocol": "TCP"}
    assert by_name["http"]["targetPort"] == "http"
    (ingress,) = find(docs, "Ingress")
    spec = ingress["spec"]
    assert spec["ingressClassName"] == "nginx"
    assert spec["tls"] == [{"secretName": "cd-hooks-tls", "hosts": ["cd-hooks.example.com"]}]
    assert ingress["metadata"]["annotations"] == {"nginx.ingress.kubernetes.io/proxy-body-size": "25m"}
    assert "defaultBackend" not in spec
    (rule,) = spec["rules"]
    assert rule["host"] == "cd-hooks.example.com"
    assert rule["http"]["paths"] == [{
        "path": "/hooks/",
        "pathType": "Prefix",
        "backend": {"service": {"name": service["metadata"]["name"], "port": {"name": "hooks"}}},
    }]


def test_polling_server_webhooks_without_ingress_render_the_port_but_publish_nothing(tmp_path):
    no_ingress = tmp_path / "no-ingress.yaml"
    no_ingress.write_text("webhooks: {ingress: {enabled: false}}\n")
    docs = render("polling-server", PRODUCTION, WEBHOOKS, no_ingress)
    assert not find(docs, "Ingress")
    (service,) = find(docs, "Service")
    assert [p["name"] for p in service["spec"]["ports"]] == ["http", "hooks"]


def test_polling_server_webhook_secrets_come_from_optional_keys_of_one_secret():
    docs = render("polling-server", PRODUCTION, WEBHOOKS)
    env = _env(_poller_container(docs))
    for var, key in WEBHOOK_VARS.items():
        assert env[var]["valueFrom"] == {
            "secretKeyRef": {"name": "polling-server-webhooks", "key": key, "optional": True}}, var
    text = str(find(docs, "ConfigMap"))
    assert all(f"${{{var}:-}}" in text for var in WEBHOOK_VARS)


def test_polling_server_with_only_the_github_secret_configures_only_that_hook():
    """A key missing from the Secret leaves its variable unset: the config still loads, that hook stays off."""
    docs = render("polling-server", PRODUCTION, WEBHOOKS)
    others = ("GITLAB_WEBHOOK_TOKEN", "GITEA_WEBHOOK_SECRET", "CHARTS_WEBHOOK_TOKEN")
    settings, env = _poller_settings(docs, missing=others)
    assert list(settings.webhooks.github_secrets) == [env["GITHUB_WEBHOOK_SECRET"]]
    assert settings.webhooks.gitlab_tokens == settings.webhooks.gitea_secrets == settings.webhooks.charts_tokens == ()
    assert settings.webhooks.port == 8082


def test_polling_server_status_page_token_is_required_once_named_and_notification_urls_stay_out_of_the_configmap():
    docs = render("polling-server", PRODUCTION, STATUS_AND_NOTIFICATIONS)
    container = _poller_container(docs)
    env = _env(container)
    # Not optional: were the key missing, the pod must not start with an open page.
    assert env["STATUS_READ_TOKEN"]["valueFrom"] == {
        "secretKeyRef": {"name": "polling-server-status", "key": "read-token"}}
    assert container["envFrom"] == [{"secretRef": {"name": "polling-server-notifications"}}]
    config = _config(docs)
    assert config["http"]["read_token"] == "${STATUS_READ_TOKEN}"
    assert config["http"]["public_url"] == "https://cd.example.com"
    assert [n["url"] for n in config["notifications"]] == ["${SLACK_WEBHOOK_URL}", "${AUDIT_WEBHOOK_URL}"]
    assert config["notifications"][1]["secret"] == "${AUDIT_WEBHOOK_SECRET}"
    assert config["github"]["commit_statuses"] is True and config["github"]["org_feeds"] is True
    assert "commit_statuses" not in _config(render("polling-server", PRODUCTION))["github"]  # unset: the poller decides


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["webhooks.enabled=true", "webhooks.port=8081"], "webhooks.port must differ from 8081"),
        (["webhooks.enabled=true", "secrets.webhooks.name="], "webhooks.enabled needs secrets.webhooks.name"),
        (["webhooks.enabled=true", "webhooks.ingress.enabled=true", "service.enabled=false"],
         "webhooks.ingress needs service.enabled"),
        (["secrets.notifications.name=n", "config.notifications[0].url=https://hooks.slack.com/services/T/B/x"],
         "config.notifications[0].url must be ${VAR}"),
        (["secrets.notifications.name=n", "config.notifications[0].url=${URL}",
          "config.notifications[0].secret=plain-text-secret"], "config.notifications[0].secret must be ${VAR}"),
        (["config.notifications[0].url=${URL}"], "config.notifications needs secrets.notifications.name"),
    ],
    ids=["hooks-on-http-port", "no-webhook-secret", "ingress-without-service", "literal-url", "literal-secret",
         "no-notification-secret"],
)
def test_polling_server_refuses_unsafe_or_unworkable_hook_and_notification_values(settings, message):
    args = ["template", "x", str(CHARTS_DIR / "polling-server")]
    for setting in settings:
        args += ["--set-string" if "url=" in setting or "secret=" in setting else "--set", setting]
    result = run_helm(*args)
    assert result.returncode != 0, f"helm template accepted {settings}"
    assert message in result.stderr
    assert "hooks.slack.com" not in result.stderr and "plain-text-secret" not in result.stderr


def test_polling_server_notes_name_the_webhook_secret_and_payload_url_only_when_taking_hooks():
    notes = render_notes("polling-server", PRODUCTION, WEBHOOKS, STATUS_AND_NOTIFICATIONS)
    assert "polling-server-webhooks, each key optional: github-secret (GITHUB_WEBHOOK_SECRET)" in notes
    assert "polling-server-status: read-token (STATUS_READ_TOKEN)" in notes
    assert "polling-server-notifications: every key" in notes
    assert "https://cd-hooks.example.com/hooks/github" in notes
    plain = render_notes("polling-server", PRODUCTION)
    assert "polling-server-webhooks" not in plain and "STATUS_READ_TOKEN" not in plain and "/hooks/" not in plain


def test_readme_deploy_section_creates_the_webhook_secret_the_chart_reads():
    import yaml

    readme = (REPO_ROOT / "README.md").read_text()
    deploy = readme[readme.index("## Deploy to a cluster"):]
    secrets = yaml.safe_load((CHARTS_DIR / "polling-server" / "values.yaml").read_text())["secrets"]["webhooks"]
    assert f"kubectl -n cd-system create secret generic {secrets['name']}" in deploy
    for key in ("githubSecretKey", "gitlabTokenKey", "giteaSecretKey", "chartsTokenKey"):
        assert f"--from-literal={secrets[key]}=" in deploy, key
    assert "https://<host>/hooks/github" in deploy

