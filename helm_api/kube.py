"""The Kubernetes backend: talks to the API server with the official client and translates its errors.

Reads use ``_preload_content=False`` and plain JSON so the service sees exactly the API's objects. Every
kubernetes/urllib3 exception is translated here into helm_api.errors (``raise ... from e``); nothing of the
library leaks past this module.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from helm_api.config import Settings
from helm_api.errors import (
    AlreadyExistsError,
    BackendError,
    BackendUnavailableError,
    ConfigError,
    ConflictError,
    CronJobNotFoundError,
    ForbiddenError,
    JobNotFoundError,
)

# (connect, read) seconds for every API call.
REQUEST_TIMEOUT = (5.0, 20.0)
MERGE_PATCH = "application/merge-patch+json"
# Jobs are listed in pages of this size; past MAX_LIST_PAGES pages the namespace is too full to trust a plan.
LIST_PAGE_SIZE = 500
MAX_LIST_PAGES = 40


def build_api_client(settings: Settings) -> k8s.ApiClient:
    """An ApiClient for the cluster: in-cluster service account, else KUBECONFIG / ~/.kube/config."""
    configuration = k8s.Configuration()
    try:
        if settings.in_cluster:
            k8s_config.load_incluster_config(client_configuration=configuration)
        else:
            k8s_config.load_kube_config(config_file=settings.kubeconfig, client_configuration=configuration)
    except (ConfigException, OSError) as e:
        where = "in-cluster service account" if settings.in_cluster else (settings.kubeconfig or "~/.kube/config")
        raise ConfigError(f"cannot load the Kubernetes connection from {where} (KUBECONFIG): {e}") from e
    # Connection errors are retried by urllib3 (safe even for create: names are deterministic, so a
    # repeated POST answers AlreadyExists); HTTP statuses are never retried here.
    configuration.retries = urllib3.Retry(total=2, connect=2, read=0, status=0, backoff_factor=0.2)
    return k8s.ApiClient(configuration)


def _status_body(error: ApiException) -> dict[str, Any]:
    try:
        body = json.loads(error.body or "{}")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


class KubernetesBackend:
    """JobBackend over the Kubernetes API (batch/v1)."""

    offline = False

    def __init__(self, api_client: k8s.ApiClient, namespace: str, cronjob_name: str) -> None:
        self.api_client = api_client
        self.namespace = namespace
        self.cronjob_name = cronjob_name
        self._batch = k8s.BatchV1Api(api_client)
        self._version = k8s.VersionApi(api_client)

    def _call(
        self,
        permission: str,
        call: Callable[[], Any],
        *,
        not_found: Callable[[], Exception] | None = None,
    ) -> dict[str, Any]:
        """Run one API call; translate every library error. ``permission`` is e.g. 'create jobs.batch'."""
        where = f"in namespace {self.namespace}"
        try:
            response = call()
            data = response.data if hasattr(response, "data") else response
            return json.loads(data) if isinstance(data, (bytes, str)) else data
        except ApiException as e:
            status = _status_body(e)
            message = status.get("message") or e.reason or "no message"
            if e.status == 404 and not_found is not None:
                raise not_found() from e
            if e.status == 409:
                if status.get("reason") == "AlreadyExists":
                    raise AlreadyExistsError(message) from e
                raise ConflictError(message) from e
            if e.status == 403:
                raise ForbiddenError(
                    f"the Kubernetes API refused: the service account needs permission to {permission} {where}",
                    permission=f"{permission} {where}",
                    kubernetes_message=message,
                ) from e
            if e.status == 401:
                raise BackendUnavailableError(
                    "the Kubernetes API rejected the service's credentials (401)", kubernetes_message=message
                ) from e
            if e.status in (0, 429) or (e.status or 0) >= 500:
                raise BackendUnavailableError(
                    f"the Kubernetes API server is unavailable (HTTP {e.status})", kubernetes_message=message
                ) from e
            raise BackendError(
                f"the Kubernetes API answered HTTP {e.status} to {permission} {where}", kubernetes_message=message
            ) from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise BackendUnavailableError(
                f"cannot reach the Kubernetes API server at {self.api_client.configuration.host}: "
                f"{type(e).__name__}"
            ) from e
        except ValueError as e:
            raise BackendError(f"the Kubernetes API answered something that is not JSON to {permission}") from e

    def check_api(self) -> None:
        self._call(
            "get /version",
            lambda: self._version.get_code(_preload_content=False, _request_timeout=REQUEST_TIMEOUT),
        )

    def read_cronjob(self) -> dict[str, Any]:
        def missing() -> Exception:
            return CronJobNotFoundError(
                f"CronJob {self.cronjob_name} not found in namespace {self.namespace}",
                namespace=self.namespace,
                cronjob=self.cronjob_name,
            )

        return self._call(
            f"get cronjobs.batch {self.cronjob_name}",
            lambda: self._batch.read_namespaced_cron_job(
                self.cronjob_name, self.namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
            ),
            not_found=missing,
        )

    def list_jobs(self, label_selector: str) -> list[dict[str, Any]]:
        """Every matching Job, page by page (the namespace may hold many Jobs besides helmsman's)."""
        items: list[dict[str, Any]] = []
        token: str | None = None
        for _ in range(MAX_LIST_PAGES):
            kwargs: dict[str, Any] = {"label_selector": label_selector, "limit": LIST_PAGE_SIZE}
            if token:
                kwargs["_continue"] = token
            listed = self._call(
                "list jobs.batch",
                lambda kwargs=kwargs: self._batch.list_namespaced_job(
                    self.namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT, **kwargs
                ),
            )
            items.extend(listed.get("items") or [])
            token = (listed.get("metadata") or {}).get("continue")
            if not token:
                return items
        raise BackendError(
            f"more than {MAX_LIST_PAGES * LIST_PAGE_SIZE} Jobs in namespace {self.namespace}; "
            "delete finished ones (ttlSecondsAfterFinished)"
        )

    def _job_not_found(self, name: str) -> Callable[[], Exception]:
        return lambda: JobNotFoundError(f"Job {name} not found in namespace {self.namespace}", job=name)

    def read_job(self, name: str) -> dict[str, Any]:
        return self._call(
            "get jobs.batch",
            lambda: self._batch.read_namespaced_job(
                name, self.namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
            ),
            not_found=self._job_not_found(name),
        )

    def create_job(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return self._call(
            "create jobs.batch",
            lambda: self._batch.create_namespaced_job(
                self.namespace, dict(body), _preload_content=False, _request_timeout=REQUEST_TIMEOUT
            ),
        )

    def patch_job(self, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        return self._call(
            "patch jobs.batch",
            lambda: self._batch.patch_namespaced_job(
                name,
                self.namespace,
                dict(patch),
                _content_type=MERGE_PATCH,
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            ),
            not_found=self._job_not_found(name),
        )

    def close(self) -> None:
        self.api_client.close()
