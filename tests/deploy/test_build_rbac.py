"""The polling-server chart with the kubernetes build backend: a namespaced Role in the build namespace (and nothing
cluster-wide), the service-account token mounted only then, `docker.mode: none` without the Docker-in-Docker
sidecar, and a configuration the poller itself accepts. Rendered manifests validate strictly."""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml
from deploy_helpers import CHARTS_DIR, VALUES_DIR, find, render, run_helm

from polling_server.config import parse_settings

pytestmark = pytest.mark.helm

K8S = VALUES_DIR / "polling-server-kubernetes-builds.yaml"
PRODUCTION = VALUES_DIR / "polling-server-production.yaml"


def _containers(deploy: dict) -> dict[str, dict]:
    return {c["name"]: c for c in deploy["spec"]["template"]["spec"]["containers"]}


def _settings(docs: list[dict]):
    (cm,) = find(docs, "ConfigMap")
    (deploy,) = find(docs, "Deployment")
    env = {e["name"]: "x" for e in _containers(deploy)["polling-server"].get("env", [])}
    return parse_settings(yaml.safe_load(cm["data"]["config.yaml"]), "ConfigMap config.yaml", env)


def test_kubernetes_builds_get_a_namespaced_role_and_binding_only():
    docs = render("polling-server", PRODUCTION, K8S, release="cd", namespace="cd-system")
    assert not find(docs, "ClusterRole") and not find(docs, "ClusterRoleBinding")
    (role,) = find(docs, "Role")
    (binding,) = find(docs, "RoleBinding")
    (account,) = find(docs, "ServiceAccount")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "cd-builds"
    assert role["rules"] == [
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "get", "list", "watch", "delete"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
        {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    ]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account["metadata"]["name"],
                                    "namespace": "cd-system"}]


def test_kubernetes_builds_mount_the_token_and_drop_the_docker_engine():
    docs = render("polling-server", PRODUCTION, K8S)
    (deploy,) = find(docs, "Deployment")
    (account,) = find(docs, "ServiceAccount")
    assert deploy["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
    assert account["automountServiceAccountToken"] is True
    containers = _containers(deploy)
    assert set(containers) == {"polling-server"}  # no privileged dind sidecar
    env = {e["name"] for e in containers["polling-server"]["env"]}
    assert "DOCKER_HOST" not in env
    volumes = {v["name"] for v in deploy["spec"]["template"]["spec"]["volumes"]}
    assert not volumes & {"docker-socket", "docker-data", "docker-certs"}


def test_the_docker_backend_keeps_the_token_off_and_renders_no_role():
    docs = render("polling-server", PRODUCTION)
    assert not find(docs, "Role") and not find(docs, "RoleBinding")
    (deploy,) = find(docs, "Deployment")
    assert deploy["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    assert "dind" in _containers(deploy)
    assert _settings(docs).builds.backend == "docker"


def test_one_repository_on_kubernetes_gets_the_role_and_keeps_the_engine(tmp_path):
    values = tmp_path / "mixed.yaml"
    values.write_text(yaml.safe_dump({"config": {"repositories": [
        {"repo": "example-org/a", "image": "example-org/a"},
        {"repo": "example-org/b", "image": "example-org/b", "backend": "kubernetes"}]}}))
    docs = render("polling-server", PRODUCTION, values)
    assert find(docs, "Role") and find(docs, "RoleBinding")
    (deploy,) = find(docs, "Deployment")
    assert "dind" in _containers(deploy)
    assert deploy["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
    settings = _settings(docs)
    assert settings.repository("example-org/b").backend == "kubernetes"
    assert settings.builds.kubernetes.namespace == "cd-builds"


def test_the_poller_accepts_the_rendered_kubernetes_configuration():
    settings = _settings(render("polling-server", PRODUCTION, K8S))
    assert settings.builds.backend == "kubernetes"
    assert settings.builds.concurrency == 4
    k = settings.builds.kubernetes
    assert (k.namespace, k.docker_config_secret, k.source_token_secret) == ("cd-builds", "registry-push",
                                                                            "build-source-token")
    assert k.resources == {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "6Gi"}}
    assert k.node_selector == {"node-pool": "builds"}
    assert k.tolerations == ({"key": "builds", "operator": "Exists", "effect": "NoSchedule"},)
    assert settings.repositories[0].platforms == ("linux/amd64", "linux/arm64")


def test_docker_mode_none_with_a_docker_build_is_refused():
    result = run_helm("template", "x", str(CHARTS_DIR / "polling-server"), "--set", "docker.mode=none")
    assert result.returncode != 0
    assert "docker.mode none leaves no Docker engine" in result.stderr


def test_rendered_manifests_validate_strictly():
    version = kubernetes_validate.latest_version()
    for doc in render("polling-server", PRODUCTION, K8S):
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} is invalid for Kubernetes {version}: "
                        f"{e.message} at {e.path}")
