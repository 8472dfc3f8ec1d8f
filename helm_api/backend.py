"""The interface the apply service uses to reach Jobs and the CronJob: the Kubernetes API or an offline store.

RBAC the Kubernetes backend needs, exactly (the Helm chart's Role is written from this list):
    - apiGroups: ["batch"], resources: ["cronjobs"], resourceNames: [<HELM_API_CRONJOB>], verbs: ["get"]
    - apiGroups: ["batch"], resources: ["jobs"], verbs: ["list", "get", "create", "patch"]
in the service's namespace. No watch, no delete. (GET /version, used by /readyz, is allowed to every
client by the default system:public-info-viewer ClusterRole.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

REQUIRED_RBAC_RULES: tuple[dict[str, Any], ...] = (
    {"apiGroups": ["batch"], "resources": ["cronjobs"], "resourceNames": ["<HELM_API_CRONJOB>"], "verbs": ["get"]},
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["list", "get", "create", "patch"]},
)


class JobBackend(Protocol):
    """Where apply Jobs live. Objects are plain dicts in the Kubernetes API's JSON shape.

    Errors are helm_api.errors classes only: AlreadyExistsError when creating an existing name,
    ConflictError when a patch's metadata.resourceVersion is stale, CronJobNotFoundError,
    JobNotFoundError, ForbiddenError, BackendUnavailableError, BackendError.
    """

    namespace: str
    cronjob_name: str
    offline: bool

    def check_api(self) -> None:
        """Raise BackendUnavailableError unless the API answers."""

    def read_cronjob(self) -> dict[str, Any]:
        """The configured CronJob."""

    def list_jobs(self, label_selector: str) -> list[dict[str, Any]]:
        """Jobs in the namespace matching the selector; every Job of the namespace for an empty selector."""

    def read_job(self, name: str) -> dict[str, Any]:
        """One Job by name."""

    def create_job(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create a Job; return it as stored."""

    def patch_job(self, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        """JSON merge-patch a Job (a metadata.resourceVersion in the patch is a precondition)."""

    def close(self) -> None:
        """Release connections."""
