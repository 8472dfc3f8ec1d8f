"""The offline backend: the CronJob comes from a YAML manifest file and Jobs are only recorded, never created.

Used by the local demo without a cluster. A Job "created" here is logged, kept in memory, written as YAML into
HELM_API_OFFLINE_JOBS_DIR when set, and treated as finished at once (no helmsman runs offline), so the next
/apply makes a new one.
"""

from __future__ import annotations

import copy
import logging
import threading
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from helm_api.errors import (
    AlreadyExistsError,
    BackendError,
    ConflictError,
    CronJobNotFoundError,
    JobNotFoundError,
)
from helm_api.logs import event_fields

log = logging.getLogger(__name__)

OFFLINE_CONDITION_MESSAGE = "offline mode: the Job was not created and helmsman did not run"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def load_cronjob_manifest(path: Path, name: str) -> dict[str, Any]:
    """The CronJob called ``name`` (or the only CronJob) from a possibly multi-document YAML file."""
    try:
        documents = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
    except OSError as e:
        raise BackendError(f"cannot read offline CronJob file {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise BackendError(f"offline CronJob file {path} is not valid YAML: {e}") from e
    cronjobs = [
        doc for doc in documents if isinstance(doc, dict) and doc.get("kind") == "CronJob"
    ]
    named = [doc for doc in cronjobs if (doc.get("metadata") or {}).get("name") == name]
    if named:
        return named[0]
    if len(cronjobs) == 1:
        return cronjobs[0]
    raise CronJobNotFoundError(
        f"CronJob {name} not found in offline file {path} (found {len(cronjobs)} CronJobs)",
        cronjob=name,
        file=str(path),
    )


def _matches(labels: Mapping[str, str], selector: str) -> bool:
    for requirement in filter(None, (part.strip() for part in selector.split(","))):
        key, _, value = requirement.partition("=")
        if labels.get(key.strip()) != value.strip():
            return False
    return True


class OfflineBackend:
    """JobBackend that never touches a cluster."""

    offline = True

    def __init__(
        self, cronjob_file: Path, namespace: str, cronjob_name: str, jobs_dir: Path | None = None
    ) -> None:
        self.cronjob_file = cronjob_file
        self.namespace = namespace
        self.cronjob_name = cronjob_name
        self.jobs_dir = jobs_dir
        self._jobs: dict[str, dict[str, Any]] = {}
        self._version = 0
        self._lock = threading.Lock()

    def check_api(self) -> None:
        return None

    def read_cronjob(self) -> dict[str, Any]:
        """Read from the file on every call, so the demo can edit the manifest without a restart."""
        cronjob = load_cronjob_manifest(self.cronjob_file, self.cronjob_name)
        metadata = cronjob.setdefault("metadata", {})
        metadata.setdefault("namespace", self.namespace)
        # A manifest has no uid; a stable one keeps Job names stable across restarts of the demo.
        metadata.setdefault(
            "uid", str(uuid.uuid5(uuid.NAMESPACE_URL, f"offline:{self.namespace}/{metadata.get('name')}"))
        )
        return cronjob

    def list_jobs(self, label_selector: str) -> list[dict[str, Any]]:
        with self._lock:
            return [
                copy.deepcopy(job)
                for job in self._jobs.values()
                if _matches(job["metadata"].get("labels") or {}, label_selector)
            ]

    def read_job(self, name: str) -> dict[str, Any]:
        with self._lock:
            if name not in self._jobs:
                raise JobNotFoundError(f"Job {name} not found (offline mode)", job=name)
            return copy.deepcopy(self._jobs[name])

    def _write_yaml(self, body: Mapping[str, Any]) -> None:
        if self.jobs_dir is None:
            return
        try:
            self.jobs_dir.mkdir(parents=True, exist_ok=True)
            path = self.jobs_dir / f"{body['metadata']['name']}.yaml"
            path.write_text(yaml.safe_dump(dict(body), sort_keys=False), encoding="utf-8")
        except OSError as e:
            raise BackendError(f"cannot write the offline Job into {self.jobs_dir}: {e.strerror}") from e

    def create_job(self, body: Mapping[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        with self._lock:
            if name in self._jobs:
                raise AlreadyExistsError(f'jobs.batch "{name}" already exists')
            self._write_yaml(body)
            self._version += 1
            job = copy.deepcopy(dict(body))
            job["metadata"].update(
                namespace=self.namespace,
                uid=str(uuid.uuid4()),
                creationTimestamp=_now(),
                resourceVersion=str(self._version),
            )
            answer = copy.deepcopy(job)
            # Nothing runs offline: the stored Job is finished at once so the next /apply makes a new one.
            job["status"] = {
                "conditions": [
                    {
                        "type": "Complete",
                        "status": "True",
                        "reason": "Offline",
                        "message": OFFLINE_CONDITION_MESSAGE,
                        "lastTransitionTime": job["metadata"]["creationTimestamp"],
                    }
                ]
            }
            self._jobs[name] = job
        log.info("offline: recorded Job %s (not created)", name, extra=event_fields("offline.recorded", job=name))
        return answer

    def patch_job(self, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        with self._lock:
            if name not in self._jobs:
                raise JobNotFoundError(f"Job {name} not found (offline mode)", job=name)
            job = self._jobs[name]
            expected = (patch.get("metadata") or {}).get("resourceVersion")
            if expected is not None and expected != job["metadata"]["resourceVersion"]:
                raise ConflictError(f'jobs.batch "{name}": the object has been modified')
            annotations = (patch.get("metadata") or {}).get("annotations") or {}
            job["metadata"].setdefault("annotations", {}).update(annotations)
            job["spec"].update(patch.get("spec") or {})
            self._version += 1
            job["metadata"]["resourceVersion"] = str(self._version)
            return copy.deepcopy(job)

    def close(self) -> None:
        return None
