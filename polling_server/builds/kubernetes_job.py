"""The kubernetes build backend: one build is one Job running rootless BuildKit (builds/job_spec.py), created with
the `kubernetes` client and followed to its outcome; the pushed digest is then confirmed in the registry.

Following: the Job is read every `poll_seconds` until it succeeds or fails, a newer build of the same branch or tag
is planned (superseded), or builds.timeout_seconds has passed (the Job's own activeDeadlineSeconds is the same).
A superseded or timed-out Job is deleted with propagation Background, so its pod goes too and pushes nothing (the
API's default for a Job deletion orphans the pod, which would build on and push). The digest comes from BuildKit's
--metadata-file, written to the build container's termination message; the pod's log is copied into the build log
through `on_log` once the Job has ended (or before it is deleted).

Restart-safe: the Job's name is fixed by the build id, this poller's instance and the commit, and its annotations
name the build. Before creating, the poller looks for that Job: a running one (or one this very attempt started
before a crash) is adopted, never started twice; a finished one from an earlier attempt is removed and the attempt
starts afresh; a Job already gone (ttlSecondsAfterFinished, or deleted by hand) means the build runs again. At its
first build after a start, the backend deletes this poller's Jobs still running for builds that no longer run (a
build superseded while the poller was down is never followed again).

Every kubernetes/urllib3/registry error leaves as a BuildError (ClusterUnavailable, ImageBuildFailed,
SourceFetchError, PushFailed, BuildTimeout, BuildSuperseded), translated with `raise ... from e`.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from polling_server.builds import job_spec
from polling_server.builds.backend import BuildSuperseded, ClusterUnavailable
from polling_server.builds.docker_engine import BuildResult, image_labels, primary_tags
from polling_server.builds.registry import RegistryClient, confirm_push, registry_client_for
from polling_server.builds.source_fetch import scrub, source_url
from polling_server.config import KubernetesBuildSettings, RepositorySettings, Settings
from polling_server.errors import (
    BuildError,
    BuildTimeout,
    ImageBuildFailed,
    PushFailed,
    SourceFetchError,
    StateError,
)
from polling_server.logs import log_event
from polling_server.planning.model import BuildStatus
from polling_server.state import BuildRecord, StateStore

log = logging.getLogger(__name__)

POLL_SECONDS = 5.0
# (connect, read) seconds for every API call.
REQUEST_TIMEOUT = (5.0, 30.0)
# Waiting reasons that do not fix themselves (a bad image name, a missing Secret key): fail now, not at the deadline.
HOPELESS_WAITING = frozenset({"InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError",
                              "CreateContainerError"})
_START_TRIES = 3


class _AlreadyExists(Exception):
    """409 AlreadyExists on create: someone holds the name; look at what holds it."""


def load_api_client(concurrency: int = 1) -> k8s.ApiClient:
    """An ApiClient for the cluster: the in-cluster service account, else the kubeconfig (KUBECONFIG)."""
    configuration = k8s.Configuration()
    try:
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)
        except ConfigException:
            k8s_config.load_kube_config(client_configuration=configuration)
    except (ConfigException, OSError, TypeError, ValueError) as e:
        raise ClusterUnavailable("no Kubernetes connection for the build Jobs: not running in a cluster and no "
                                 f"usable kubeconfig ({type(e).__name__})", transient=False) from e
    # Connection errors are retried (a create is safe to repeat: the name is fixed, a repeat answers 409).
    configuration.retries = urllib3.Retry(total=2, connect=2, read=0, status=0, backoff_factor=0.2)
    # Every build worker follows its own Job; each needs a connection of its own.
    configuration.connection_pool_maxsize = max(4, 2 * concurrency)
    return k8s.ApiClient(configuration)


class KubernetesJobBuilder:
    """BuildBackend over the Kubernetes API. The API client is loaded once, at the first build (or injected)."""

    def __init__(self, settings: Settings, store: StateStore | None = None, *, api_client: k8s.ApiClient | None = None,
                 registry: RegistryClient | None = None, instance: str | None = None,
                 poll_seconds: float = POLL_SECONDS, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.kube: KubernetesBuildSettings = settings.builds.kubernetes or KubernetesBuildSettings()
        self.namespace = self.kube.namespace
        self.store = store
        self.instance = instance or job_spec.instance_id(settings)
        self.poll_seconds = poll_seconds
        self._sleep = sleep
        self._clock = clock
        self._api_client = api_client
        self._apis: tuple[k8s.BatchV1Api, k8s.CoreV1Api] | None = None
        self._lock = threading.Lock()
        self._swept = False
        self.registry = registry or registry_client_for(settings)
        self._secrets = list(settings.secret_values())  # never in an error message

    # --- the whole build --------------------------------------------------------------------------------------
    def build(self, build: BuildRecord, repo: RepositorySettings,
              on_log: Callable[[str], None] | None = None) -> BuildResult:
        try:
            return self._build(build, repo, on_log or (lambda _line: None))
        except BuildError as e:
            clean = scrub(str(e), self._secrets)
            if clean != str(e):
                raise type(e)(clean) from None
            raise

    def _build(self, build: BuildRecord, repo: RepositorySettings, on_log: Callable[[str], None]) -> BuildResult:
        deadline = self._clock() + self.settings.builds.timeout_seconds
        image = self.settings.image_ref(repo)
        tags = primary_tags(build)
        labels = image_labels(build, source_url(self.settings, repo), datetime.now(UTC))
        manifest = job_spec.job_for_build(build, repo, self.settings, image, tags, labels, instance=self.instance)
        name = manifest["metadata"]["name"]
        fields = {"repo": build.repo, "sha": build.sha, "build_id": build.id, "job": name,
                  "namespace": self.namespace}
        self._sweep_once()
        self._start(build, manifest, on_log, fields)
        job, pods = self._follow(build, name, deadline, on_log, fields)
        outcome, reason = job_spec.job_outcome(job)
        self._copy_logs(pods, on_log)
        if outcome == "failed":
            if reason == "DeadlineExceeded":
                self._delete(name, fields, "it ran past its deadline")
                raise BuildTimeout(f"Job {self.namespace}/{name} ran past builds.timeout_seconds "
                                   f"({self.settings.builds.timeout_seconds:g}s, its activeDeadlineSeconds)")
            raise self._failure(repo, name, reason, pods)
        digest = self._pushed_digest(name, pods)
        confirm_push(self.registry, image, repo.image, tags, digest)
        return BuildResult(image=image, tags=tuple(f"{image}:{t}" for t in tags), digest=digest)

    # --- starting or adopting the Job ---------------------------------------------------------------------------
    def _start(self, build: BuildRecord, manifest: dict[str, Any], on_log: Callable[[str], None],
               fields: dict[str, Any]) -> None:
        name = manifest["metadata"]["name"]
        where = f"{self.namespace}/{name}"
        for _ in range(_START_TRIES):
            existing = self._read_job(name)
            if existing is not None:
                if not job_spec.belongs_to(existing, build, self.instance):
                    raise ImageBuildFailed(f"Job {where} exists but its annotations name another build; it is left "
                                           f"alone and build {build.id} is not started")
                outcome, _ = job_spec.job_outcome(existing)
                earlier = job_spec.job_attempt(existing)
                if outcome == "running" or earlier == build.attempts:
                    self._remember(build.id, name)
                    # Started before a restart, or by an earlier try of this attempt: never a second Job.
                    log_event(log, "build.job_adopted", msg=f"following the existing Job {where}", state=outcome,
                              **fields)
                    on_log(f"following Job {where}, which already existed ({outcome})")
                    return
                on_log(f"removing Job {where}, left {outcome} by attempt {earlier}")
                self._delete(name, fields, f"it is what attempt {earlier} left {outcome}")
            # Intent first: the name is on record before the Job can exist, so a crash right after the create
            # still finds it.
            self._remember(build.id, name)
            try:
                _discard(self._call("create jobs", lambda batch, _core: batch.create_namespaced_job(
                    self.namespace, manifest, _preload_content=False, _request_timeout=REQUEST_TIMEOUT)))
            except _AlreadyExists:
                continue  # created meanwhile (an abandoned attempt of this build, or a slow delete): look again
            pushes = manifest["metadata"]["annotations"][job_spec.IMAGE_ANNOTATION]
            log_event(log, "build.job_created", msg=f"created the build Job {where}", image=pushes, **fields)
            on_log(f"created Job {where} ({self.kube.image})")
            return
        raise ClusterUnavailable(f"cannot start Job {where}: the name stays taken after {_START_TRIES} tries")

    def _sweep_once(self) -> None:
        """Once per process: delete this poller's Jobs still running for builds that no longer run (superseded or
        failed while the poller was down: a restart never follows those, so nothing else would stop them)."""
        with self._lock:
            if self._swept or self.store is None:
                return
        try:
            response = self._call("list jobs", lambda batch, _core: batch.list_namespaced_job(
                self.namespace, label_selector=job_spec.instance_selector(self.instance), _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT))
            jobs = _json(response, f"the build Jobs in {self.namespace}").get("items") or []
        except BuildError as e:
            log.warning("cannot list the build Jobs in %s to stop stale ones (tried again at the next build): %s",
                        self.namespace, e)
            return
        with self._lock:
            if self._swept:
                return  # another worker swept meanwhile
            self._swept = True
        for job in jobs:
            if not isinstance(job, dict) or job_spec.job_outcome(job)[0] != "running":
                continue
            name = (job.get("metadata") or {}).get("name") or ""
            value = ((job.get("metadata") or {}).get("annotations") or {}).get(job_spec.BUILD_ID_ANNOTATION, "")
            try:
                status = self.store.build(int(value)).status
            except (ValueError, IndexError):
                status = None  # not a build this state knows (pruned): nothing will ever follow it
            except StateError:
                continue
            if status in (BuildStatus.RUNNING, BuildStatus.QUEUED):
                continue  # its build runs again and adopts it
            why = f"build {value} is {status.value if status else 'no longer recorded'}"
            try:
                self._delete(name, {"build_id": value, "job": name, "namespace": self.namespace}, why)
            except BuildError as e:
                log.warning("cannot delete the stale build Job %s/%s: %s", self.namespace, name, e)

    def _remember(self, build_id: int, name: str) -> None:
        if self.store is None:
            return
        try:
            self.store.set_backend_ref(build_id, name)
        except StateError as e:
            # The name is a pure function of the build, so a restarted poller finds the Job without the record.
            log.warning("cannot record the Job %s of build %s: %s", name, build_id, e)

    # --- following it -------------------------------------------------------------------------------------------
    def _follow(self, build: BuildRecord, name: str, deadline: float, on_log: Callable[[str], None],
                fields: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Poll the Job until it has an outcome; stop (and delete) it when superseded, timed out or hopeless."""
        where = f"{self.namespace}/{name}"
        seen: dict[str, str] = {}
        pods: list[dict[str, Any]] = []
        starting = True  # until the pod runs: worth reporting, and it may be unable to start
        while True:
            try:
                job = self._read_job(name)
                if job is None:
                    raise ImageBuildFailed(f"Job {where} was deleted before it finished (by hand?); the build runs "
                                           f"again on its next attempt")
                outcome, _ = job_spec.job_outcome(job)
                if starting or outcome != "running":
                    pods = self._pods(name)
                    self._report(pods, seen, on_log)
                if outcome != "running":
                    return job, pods
                for pod in pods:
                    waiting = job_spec.waiting_reason(pod)
                    if waiting and waiting[1] in HOPELESS_WAITING:
                        container, reason, message = waiting
                        self._stop(name, pods, on_log, fields, f"container {container} cannot start ({reason})")
                        raise ImageBuildFailed(f"Job {where}: container {container} cannot start: {reason}: "
                                               f"{message[:300]}")
                # A running pod (restartPolicy Never) has nothing more to say until the Job ends: its pods are
                # listed again only then, which halves the poller's requests for a long build.
                starting = not pods or any((p.get("status") or {}).get("phase") in (None, "Pending") for p in pods)
            except ClusterUnavailable as e:
                if not e.transient or self._clock() >= deadline:
                    raise
                log_event(log, "build.job_unreadable", "warning", f"cannot read Job {where}; trying again: {e}",
                          reason=str(e), **fields)
            if self._superseded(build):
                self._stop(name, pods, on_log, fields, "a newer build of the same branch or tag was planned")
                raise BuildSuperseded(f"a newer build of {build.ref} was planned; Job {where} was deleted before "
                                      f"it could push")
            left = deadline - self._clock()
            if left <= 0:
                self._stop(name, pods, on_log, fields, "it ran past builds.timeout_seconds")
                raise BuildTimeout(f"Job {where} did not finish within {self.settings.builds.timeout_seconds:g}s; "
                                   f"it was deleted")
            self._sleep(min(self.poll_seconds, left))

    def _superseded(self, build: BuildRecord) -> bool:
        if self.store is None:
            return False
        try:
            latest = self.store.latest_build(build.repo, build.kind, build.ref)
        except StateError:
            return False  # unknown now; asked again at the next poll
        return latest is not None and latest.id > build.id

    def _report(self, pods: list[dict[str, Any]], seen: dict[str, str], on_log: Callable[[str], None]) -> None:
        """Say in the build log where the pod is (Pending, Running, waiting for an image...), once per change."""
        for pod in pods:
            pod_name = (pod.get("metadata") or {}).get("name", "?")
            phase = (pod.get("status") or {}).get("phase") or "Pending"
            waiting = job_spec.waiting_reason(pod)
            text = f"pod {pod_name}: {phase}"
            if waiting:
                text += f" (container {waiting[0]} waiting: {waiting[1]} {waiting[2][:200]})".rstrip()
            if seen.get(pod_name) != text:
                seen[pod_name] = text
                on_log(text)

    def _stop(self, name: str, pods: list[dict[str, Any]], on_log: Callable[[str], None], fields: dict[str, Any],
              why: str) -> None:
        """Keep what the pod has logged so far, then delete the Job and its pod."""
        try:
            self._copy_logs(pods, on_log)
        finally:
            try:
                self._delete(name, fields, why)
            except ClusterUnavailable as e:
                # The Job's own activeDeadlineSeconds still ends it.
                log_event(log, "build.job_delete_failed", "error", f"cannot delete Job {self.namespace}/{name}: {e}",
                          reason=str(e), **fields)
            else:
                on_log(f"deleted Job {self.namespace}/{name}: {why}")

    def _delete(self, name: str, fields: dict[str, Any], why: str) -> None:
        # Background: the pod is deleted with the Job. The API's default for Jobs orphans it, and it would push.
        _discard(self._call("delete jobs", lambda batch, _core: batch.delete_namespaced_job(
            name, self.namespace, propagation_policy="Background", _preload_content=False,
            _request_timeout=REQUEST_TIMEOUT), missing_ok=True))
        log_event(log, "build.job_deleted", msg=f"deleted Job {self.namespace}/{name}: {why}", reason=why, **fields)

    # --- reading the outcome ------------------------------------------------------------------------------------
    def _failure(self, repo: RepositorySettings, name: str, reason: str | None,
                 pods: list[dict[str, Any]]) -> BuildError:
        where = f"{self.namespace}/{name}"
        for pod in reversed(pods):
            for container, error in ((job_spec.SOURCE_CONTAINER, SourceFetchError),
                                     (job_spec.BUILD_CONTAINER, ImageBuildFailed)):
                ended = job_spec.terminated(pod, container)
                if ended and ended.get("exitCode", 0) != 0:
                    detail = _last_line(ended.get("message")) or ended.get("reason") or "no message"
                    what = "fetching the source" if container == job_spec.SOURCE_CONTAINER else "the image build"
                    return error(f"{repo.name}: {what} failed in Job {where} (exit {ended.get('exitCode')}): "
                                 f"{detail}")
            status = pod.get("status") or {}
            if status.get("reason") or status.get("message"):
                return ImageBuildFailed(f"{repo.name}: Job {where} failed: pod {status.get('reason') or ''} "
                                        f"{(status.get('message') or '')[:300]}".rstrip())
        return ImageBuildFailed(f"{repo.name}: Job {where} failed ({reason or 'no reason given'})")

    def _pushed_digest(self, name: str, pods: list[dict[str, Any]]) -> str:
        for pod in reversed(pods):
            ended = job_spec.terminated(pod, job_spec.BUILD_CONTAINER)
            if ended and ended.get("exitCode") == 0:
                digest = job_spec.digest_from_metadata(ended.get("message"))
                if digest:
                    return digest
        raise PushFailed(f"Job {self.namespace}/{name} succeeded, but its build container reported no pushed digest "
                         f"(BuildKit's metadata in the termination message)")

    # --- the pod's log ------------------------------------------------------------------------------------------
    def _copy_logs(self, pods: list[dict[str, Any]], on_log: Callable[[str], None]) -> None:
        """Hand the source and build containers' logs to `on_log`, line by line; at most the last
        builds.log_max_bytes of each (the build log keeps no more). A log that cannot be read is noted, not fatal."""
        for pod in pods:
            pod_name = (pod.get("metadata") or {}).get("name")
            for container in (job_spec.SOURCE_CONTAINER, job_spec.BUILD_CONTAINER):
                state = (job_spec.container_status(pod, container) or {}).get("state") or {}
                if not pod_name or not (state.get("running") or state.get("terminated")):
                    continue  # never started: no log
                on_log(f"--- {container} (pod {pod_name}) ---")
                try:
                    lines, dropped = self._read_log(pod_name, container)
                except (ClusterUnavailable, BuildError) as e:
                    on_log(f"(the log of {container} cannot be read: {e})")
                    continue
                if dropped:
                    on_log(f"(the first {dropped} bytes of the log are left out)")
                for line in lines:
                    on_log(line)

    def _read_log(self, pod_name: str, container: str) -> tuple[list[str], int]:
        """The log's lines, without the oldest ones past builds.log_max_bytes, and how many bytes were left out."""
        limit = self.settings.builds.log_max_bytes
        response = self._call("get pods/log", lambda _batch, core: core.read_namespaced_pod_log(
            pod_name, self.namespace, container=container, _preload_content=False,
            _request_timeout=REQUEST_TIMEOUT))
        kept: collections.deque[str] = collections.deque()
        size = dropped = 0

        def keep(raw: bytes) -> None:
            nonlocal size, dropped
            line = raw.decode("utf-8", "replace").rstrip("\r")
            kept.append(line)
            size += len(line) + 1
            while size > limit and len(kept) > 1:
                gone = len(kept.popleft()) + 1
                size -= gone
                dropped += gone

        pending = b""
        try:
            for chunk in response.stream(1 << 16):
                *complete, pending = (pending + chunk).split(b"\n")
                for raw in complete:
                    keep(raw)
            if pending:
                keep(pending)
        except (urllib3.exceptions.HTTPError, OSError) as e:
            kept.append(f"(the log broke off: {type(e).__name__})")
        finally:
            response.release_conn()
        return list(kept), dropped

    # --- the API ------------------------------------------------------------------------------------------------
    def _clients(self) -> tuple[k8s.BatchV1Api, k8s.CoreV1Api]:
        with self._lock:
            if self._apis is None:
                api_client = self._api_client or load_api_client(self.settings.builds.concurrency)
                self._apis = (k8s.BatchV1Api(api_client), k8s.CoreV1Api(api_client))
            return self._apis

    def _read_job(self, name: str) -> dict[str, Any] | None:
        response = self._call("get jobs", lambda batch, _core: batch.read_namespaced_job(
            name, self.namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT), missing_ok=True)
        return None if response is None else _json(response, f"Job {self.namespace}/{name}")

    def _pods(self, job_name: str) -> list[dict[str, Any]]:
        response = self._call("list pods", lambda _batch, core: core.list_namespaced_pod(
            self.namespace, label_selector=f"job-name={job_name}", _preload_content=False,
            _request_timeout=REQUEST_TIMEOUT))
        items = _json(response, f"the pods of Job {self.namespace}/{job_name}").get("items") or []
        return sorted((p for p in items if isinstance(p, dict)),
                      key=lambda p: ((p.get("metadata") or {}).get("creationTimestamp") or "",
                                     (p.get("metadata") or {}).get("name") or ""))

    def _call(self, permission: str, call: Callable[[k8s.BatchV1Api, k8s.CoreV1Api], Any], *,
              missing_ok: bool = False) -> Any:
        """Run one API call, translating every library error; `permission` is what the Role must allow."""
        batch, core = self._clients()
        where = f"in namespace {self.namespace}"
        try:
            return call(batch, core)
        except ApiException as e:
            status = _status_body(e)
            message = str(status.get("message") or e.reason or "no message")[:300]
            if e.status == 404 and missing_ok:
                return None
            if e.status == 409 and status.get("reason") == "AlreadyExists":
                raise _AlreadyExists(message) from e
            if e.status == 403:
                raise ClusterUnavailable(f"the Kubernetes API refused to {permission} {where} (403): the poller's "
                                         f"service account needs the build Role: {message}", transient=False) from e
            if e.status == 401:
                raise ClusterUnavailable("the Kubernetes API rejected the poller's credentials (401)",
                                         transient=False) from e
            if e.status in (0, 429) or (e.status or 0) >= 500:
                raise ClusterUnavailable(f"the Kubernetes API server is unavailable (HTTP {e.status}) to "
                                         f"{permission} {where}: {message}") from e
            raise ImageBuildFailed(f"the Kubernetes API answered HTTP {e.status} to {permission} {where}: "
                                   f"{message}") from e
        except (urllib3.exceptions.HTTPError, OSError) as e:
            host = batch.api_client.configuration.host
            raise ClusterUnavailable(f"cannot reach the Kubernetes API at {host} to {permission}: "
                                     f"{type(e).__name__}") from e


def _discard(response: Any) -> None:
    if response is not None:
        response.data  # noqa: B018 - read to the end, so the connection can go back to the pool
        response.release_conn()


def _last_line(message: str | None) -> str:
    lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _status_body(error: ApiException) -> dict[str, Any]:
    try:
        body = json.loads(error.body or "{}")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def _json(response: Any, what: str) -> dict[str, Any]:
    try:
        data = json.loads(response.data)
    except (TypeError, ValueError) as e:
        raise ClusterUnavailable(f"the Kubernetes API sent something that is not JSON for {what}") from e
    finally:
        response.release_conn()
    if not isinstance(data, Mapping):
        raise ClusterUnavailable(f"the Kubernetes API sent something that is not an object for {what}")
    return dict(data)
