"""Shared constants and builders of the helm_api tests (the fixtures are in conftest.py)."""

from __future__ import annotations

import copy
import os
import socket
import sys
from pathlib import Path
from typing import Any

TOKEN = "s3cret-test-token"
NAMESPACE = "cd"
CRONJOB = "helmsman-cronjob"

HELMSMAN_CRONJOB: dict[str, Any] = {
    "apiVersion": "batch/v1",
    "kind": "CronJob",
    "metadata": {
        "name": CRONJOB,
        "namespace": NAMESPACE,
        "labels": {"app.kubernetes.io/name": "helmsman", "app.kubernetes.io/managed-by": "Helm"},
        "annotations": {"meta.helm.sh/release-name": "cd"},
    },
    "spec": {
        "schedule": "0 3 * * *",
        "suspend": True,
        "concurrencyPolicy": "Forbid",
        "jobTemplate": {
            "metadata": {
                "labels": {"app.kubernetes.io/name": "helmsman", "app.kubernetes.io/component": "apply"},
                "annotations": {"example.com/team": "platform"},
            },
            "spec": {
                "backoffLimit": 0,
                "ttlSecondsAfterFinished": 86400,
                "template": {
                    "metadata": {"labels": {"app.kubernetes.io/name": "helmsman"}},
                    "spec": {
                        "serviceAccountName": "helmsman",
                        "restartPolicy": "Never",
                        "containers": [
                            {
                                "name": "helmsman",
                                "image": "ghcr.io/mkubaczyk/helmsman:v3.17.1",
                                "command": ["helmsman", "--apply", "-f", "/dss/production.yaml"],
                                "volumeMounts": [{"name": "dss", "mountPath": "/dss"}],
                            }
                        ],
                        "volumes": [{"name": "dss", "configMap": {"name": "helmsman-dss"}}],
                    },
                },
            },
        },
    },
}


def helmsman_cronjob(**metadata: Any) -> dict[str, Any]:
    cronjob = copy.deepcopy(HELMSMAN_CRONJOB)
    cronjob["metadata"].update(metadata)
    return cronjob


def base_config(**extra: str) -> dict[str, str]:
    config = {"HELM_API_TOKEN": TOKEN, "HELM_API_NAMESPACE": NAMESPACE, "HELM_API_CRONJOB": CRONJOB}
    config.update(extra)
    return config


AUTH = {"Authorization": f"Bearer {TOKEN}"}


OFFLINE_MANIFEST = """\
---
# Source: helmsman/templates/serviceaccount.yaml
apiVersion: v1
kind: ServiceAccount
metadata:
  name: helmsman
---
# Source: helmsman/templates/configmap.yaml
apiVersion: v1
kind: ConfigMap
metadata:
  name: helmsman-dss
data:
  production.yaml: |
    namespaces: {}
---
# Source: helmsman/templates/cronjob.yaml
apiVersion: batch/v1
kind: CronJob
metadata:
  name: helmsman-cronjob
  labels:
    app.kubernetes.io/name: helmsman
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    metadata:
      labels:
        app.kubernetes.io/name: helmsman
    spec:
      backoffLimit: 0
      template:
        spec:
          restartPolicy: Never
          containers:
            - name: helmsman
              image: ghcr.io/mkubaczyk/helmsman:v3.17.1
              command: ["helmsman", "--apply", "-f", "/dss/production.yaml"]
"""


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any HELM_API_* or in-cluster variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HELM_API_", "KUBERNETES_"))}
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def helm_api_command() -> list[str]:
    """The installed ``helm-api`` command of this virtualenv (``python -m helm_api`` when not installed)."""
    script = Path(sys.executable).parent / "helm-api"
    return [str(script)] if script.exists() else [sys.executable, "-m", "helm_api"]
