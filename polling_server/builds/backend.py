"""The build backend seam: the protocol both backends satisfy, and which backend builds a given repository.

A backend turns one claimed build into a pushed image: `build(record, repo, on_log) -> BuildResult`, raising one of
the BuildError classes. Two exist: the Docker engine (builds/docker_engine.py, the default) and a Kubernetes Job
running rootless BuildKit (builds/kubernetes_job.py). `builds.backend` chooses globally and a repository's
`backend:` overrides it; the worker asks `backend_for` on every attempt.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol, runtime_checkable

from polling_server.builds.docker_engine import BuildResult
from polling_server.config import RepositorySettings, Settings
from polling_server.errors import BuildError, EngineUnavailable
from polling_server.state import BuildRecord

BACKENDS = ("docker", "kubernetes")


@runtime_checkable
class BuildBackend(Protocol):
    def build(self, build: BuildRecord, repo: RepositorySettings,
              on_log: Callable[[str], None] | None = None) -> BuildResult:
        """Build `build` of `repo` at its exact commit, push its immutable tags, return what the registry serves."""
        ...


class BuildSuperseded(BuildError):
    """A newer build of the same branch or tag was planned while this one ran; it was stopped before pushing."""


class ClusterUnavailable(EngineUnavailable):
    """The Kubernetes API does not answer, or refuses the poller (credentials, RBAC)."""

    def __init__(self, message: str, transient: bool = True):
        super().__init__(message)
        self.transient = transient  # worth asking again in a moment (5xx, 429, a broken connection)


def backend_name(settings: Settings, repo: RepositorySettings) -> str:
    """`docker` or `kubernetes`: the repository's own `backend:`, else `builds.backend`."""
    return repo.backend or settings.builds.backend


def backend_for(builders: BuildBackend | Mapping[str, BuildBackend], settings: Settings,
                repo: RepositorySettings) -> BuildBackend:
    """The backend that builds `repo`. `builders` is one backend for every repository (tests, a single-backend
    daemon) or a mapping by backend name."""
    if not isinstance(builders, Mapping):
        return builders
    name = backend_name(settings, repo)
    try:
        return builders[name]
    except KeyError:
        raise BuildError(f"{repo.name}: no {name} build backend is configured") from None


def backends_for(settings: Settings, store, *, github_budget=None) -> dict[str, BuildBackend]:
    """The backends the configuration uses, by name; the docker one only when some repository builds with it."""
    used = {backend_name(settings, r) for r in settings.repositories} or {settings.builds.backend}
    backends: dict[str, BuildBackend] = {}
    if "docker" in used:
        from polling_server.builds.docker_engine import ImageBuilder

        backends["docker"] = ImageBuilder(settings, github_budget=github_budget)
    if "kubernetes" in used:
        from polling_server.builds.kubernetes_job import KubernetesJobBuilder

        backends["kubernetes"] = KubernetesJobBuilder(settings, store)
    return backends
