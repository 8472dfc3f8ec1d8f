"""An in-process HTTP fake of the Kubernetes API (batch/v1 CronJobs and Jobs) for tests.

A threaded HTTP server on 127.0.0.1 (random port). Tests talk to it with the real ``kubernetes`` client
(``fake.new_api_client()``), so requests are serialised and answers parsed for real. It behaves like an API
server where it matters: metav1.Status error bodies (404 NotFound, 409 AlreadyExists, 409 Conflict on a
stale resourceVersion precondition, 422 Invalid names/labels/templates), uid, creationTimestamp, increasing
string resourceVersions, generateName, Job defaulting (labels from the pod template when empty, selector and
controller-uid/job-name labels, parallelism/completions/backoffLimit/suspend...), label selectors
(=, ==, !=, in, notin, exists), paged lists (limit/continue) and merge/strategic-merge patches. A tiny "job
controller" runs before every read: it stamps startTime on running Jobs and the Suspended condition on suspended
ones, and gives each running Job one pod (labels from the template, job-name, owned by the Job). Deleting a Job
(DELETE, with propagationPolicy) deletes its pods with Background/Foreground and orphans them otherwise, as the
garbage collector does; pods are listed by label and their logs served as text (pods/log).

Test hooks: ``add_cronjob``, ``add_job`` (optionally backdated), ``complete_job``/``fail_job``, ``fail_next``
(next N matching requests answer an error status), ``requests`` (every request: method, path, query, content
type, JSON body), ``jobs()``; for build Jobs ``on_job_created`` (play the Job as it is created), ``play_pod``
(phase and container states, termination messages included), ``set_pod_log``, ``pods()``, ``deletions``.
"""

from __future__ import annotations

import copy
import json
import random
import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from kubernetes import client as k8s

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_GENERATE_CHARS = "bcdfghjklmnpqrstvwxz2456789"
_JOBS = re.compile(r"^/apis/batch/v1/namespaces/(?P<ns>[^/]+)/jobs$")
_JOB = re.compile(r"^/apis/batch/v1/namespaces/(?P<ns>[^/]+)/jobs/(?P<name>[^/]+)$")
_CRONJOB = re.compile(r"^/apis/batch/v1/namespaces/(?P<ns>[^/]+)/cronjobs/(?P<name>[^/]+)$")
_PODS = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods$")
_POD_LOG = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)/log$")
MERGE_PATCH_TYPES = ("application/merge-patch+json", "application/strategic-merge-patch+json")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    """An error answer: becomes a metav1.Status body."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
}


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str | None
    body: Any


@dataclass
class Fault:
    status: int
    count: int
    method: str | None
    path: str | None
    message: str


@dataclass
class KubeFake:
    """The fake API server's state and test hooks. Use as a context manager or call start()/stop()."""

    requests: list[RecordedRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lock = threading.RLock()
        self.cronjobs: dict[tuple[str, str], dict[str, Any]] = {}
        self._jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self._pods: dict[tuple[str, str], dict[str, Any]] = {}
        self._logs: dict[tuple[str, str, str], str] = {}
        # (namespace, name, propagationPolicy or None) of every Job deleted through the API.
        self.deletions: list[tuple[str, str, str | None]] = []
        # Called with each Job created through the API (a copy), under the fake's lock: a test plays the Job here.
        self.on_job_created: Any = None
        self._faults: list[Fault] = []
        self._rv = 1000
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ----- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> KubeFake:
        fake = self

        class Handler(_Handler):
            state = fake

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        server.request_queue_size = 256
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="kube-fake", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> KubeFake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "the fake is not running"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def new_api_client(self) -> k8s.ApiClient:
        """A real kubernetes ApiClient pointed at this fake (no auth, no retries)."""
        configuration = k8s.Configuration(host=self.url)
        configuration.retries = 0
        configuration.connection_pool_maxsize = 32
        return k8s.ApiClient(configuration)

    # ----- test hooks --------------------------------------------------------------------------------------

    def next_resource_version(self) -> str:
        with self.lock:
            self._rv += 1
            return str(self._rv)

    def add_cronjob(self, cronjob: dict[str, Any]) -> dict[str, Any]:
        """Store a CronJob manifest as the server would (uid, resourceVersion, creationTimestamp)."""
        with self.lock:
            obj = copy.deepcopy(cronjob)
            metadata = obj.setdefault("metadata", {})
            metadata.setdefault("namespace", "default")
            metadata.setdefault("uid", str(uuid.uuid4()))
            metadata.setdefault("creationTimestamp", now())
            metadata["resourceVersion"] = self.next_resource_version()
            metadata.setdefault("generation", 1)
            self.cronjobs[(metadata["namespace"], metadata["name"])] = obj
            return copy.deepcopy(obj)

    def remove_cronjob(self, name: str, namespace: str = "default") -> None:
        with self.lock:
            self.cronjobs.pop((namespace, name), None)

    def fail_next(
        self, status: int, count: int = 1, *, method: str | None = None, path: str | None = None, message: str = ""
    ) -> None:
        """The next ``count`` requests matching method and path (a substring) answer ``status``."""
        with self.lock:
            self._faults.append(Fault(status, count, method, path, message))

    def jobs(self, namespace: str = "default") -> list[dict[str, Any]]:
        with self.lock:
            return [copy.deepcopy(job) for (ns, _), job in sorted(self._jobs.items()) if ns == namespace]

    def job(self, name: str, namespace: str = "default") -> dict[str, Any]:
        with self.lock:
            return copy.deepcopy(self._jobs[(namespace, name)])

    def add_job(
        self, job: dict[str, Any], namespace: str = "default", *, created_at: str | None = None
    ) -> dict[str, Any]:
        """Create a Job directly (as another client would), with the server's defaulting; ``created_at``
        (RFC 3339) backdates its creationTimestamp."""
        with self.lock:
            created = self._create_job(namespace, copy.deepcopy(job))
            if created_at is not None:
                name = created["metadata"]["name"]
                self._jobs[(namespace, name)]["metadata"]["creationTimestamp"] = created_at
                created["metadata"]["creationTimestamp"] = created_at
            return created

    def _finish(self, name: str, namespace: str, condition_types: list[tuple[str, str]], counts: dict) -> None:
        with self.lock:
            job = self._jobs[(namespace, name)]
            self._controller_tick(job)
            status = job.setdefault("status", {})
            stamp = now()
            status.setdefault("conditions", [])
            for condition_type, reason in condition_types:
                status["conditions"].append(
                    {
                        "type": condition_type,
                        "status": "True",
                        "reason": reason,
                        "message": "",
                        "lastProbeTime": stamp,
                        "lastTransitionTime": stamp,
                    }
                )
            status.pop("active", None)
            status.update(counts)
            status["ready"] = 0
            if condition_types[-1][0] == "Complete":
                status["completionTime"] = stamp
            job["metadata"]["resourceVersion"] = self.next_resource_version()

    def complete_job(self, name: str, namespace: str = "default") -> None:
        """The Job succeeded: SuccessCriteriaMet and Complete conditions, completionTime, succeeded=1."""
        self._finish(
            name, namespace, [("SuccessCriteriaMet", "CompletionsReached"), ("Complete", "CompletionsReached")],
            {"succeeded": 1},
        )

    def fail_job(self, name: str, namespace: str = "default", reason: str = "BackoffLimitExceeded") -> None:
        """The Job failed: FailureTarget and Failed conditions (a failed Job has no completionTime); ``reason``
        e.g. DeadlineExceeded for a Job past its activeDeadlineSeconds."""
        self._finish(name, namespace, [("FailureTarget", reason), ("Failed", reason)], {"failed": 1})

    def posted_jobs(self) -> list[Any]:
        """The bodies of every POST of a Job, in arrival order."""
        with self.lock:
            return [r.body for r in self.requests if r.method == "POST" and _JOBS.match(r.path)]

    def patches(self) -> list[RecordedRequest]:
        with self.lock:
            return [r for r in self.requests if r.method == "PATCH"]

    # ----- pods of Jobs (the build backend's view) ------------------------------------------------------------

    def pods(self, namespace: str = "default") -> list[dict[str, Any]]:
        with self.lock:
            return [copy.deepcopy(pod) for (ns, _), pod in sorted(self._pods.items()) if ns == namespace]

    def job_pod(self, job_name: str, namespace: str = "default") -> dict[str, Any]:
        """The pod the fake job controller made for a Job (it makes one as soon as the Job runs)."""
        with self.lock:
            job = self._jobs[(namespace, job_name)]
            self._controller_tick(job)
            return copy.deepcopy(self._pod_of(namespace, job_name))

    def play_pod(self, job_name: str, namespace: str = "default", *, phase: str,
                 containers: dict[str, dict[str, Any]], reason: str | None = None,
                 message: str | None = None) -> None:
        """Set the pod's phase and its containers' states, e.g. ``{"build": {"terminated": {"exitCode": 0,
        "message": "..."}}}`` (init containers and containers alike, by name), as the kubelet reports them."""
        with self.lock:
            self._controller_tick(self._jobs[(namespace, job_name)])
            pod = self._pod_of(namespace, job_name)
            spec = pod["spec"]
            status = pod["status"]
            status["phase"] = phase
            for key, value in (("reason", reason), ("message", message)):
                if value is None:
                    status.pop(key, None)
                else:
                    status[key] = value
            for field_name, listed in (("initContainerStatuses", spec.get("initContainers") or []),
                                       ("containerStatuses", spec.get("containers") or [])):
                entries = []
                for container in listed:
                    state = containers.get(container["name"], {"waiting": {"reason": "PodInitializing"}})
                    entries.append({"name": container["name"], "image": container.get("image", ""),
                                    "imageID": "", "ready": "running" in state, "restartCount": 0,
                                    "started": "running" in state, "state": copy.deepcopy(state)})
                status[field_name] = entries
            pod["metadata"]["resourceVersion"] = self.next_resource_version()

    def set_pod_log(self, job_name: str, container: str, text: str, namespace: str = "default") -> None:
        with self.lock:
            self._controller_tick(self._jobs[(namespace, job_name)])
            pod = self._pod_of(namespace, job_name)
            self._logs[(namespace, pod["metadata"]["name"], container)] = text

    def _pod_of(self, namespace: str, job_name: str) -> dict[str, Any]:
        for (ns, _), pod in sorted(self._pods.items()):
            if ns == namespace and pod["metadata"]["labels"].get("job-name") == job_name:
                return pod
        raise KeyError(f"Job {namespace}/{job_name} has no pod")

    def _make_pod(self, job: dict[str, Any]) -> None:
        """What the job controller does for a running Job: one pod from the template, owned by the Job."""
        metadata = job["metadata"]
        namespace, name = metadata["namespace"], metadata["name"]
        if any(ns == namespace and pod["metadata"]["labels"].get("job-name") == name
               for (ns, _), pod in self._pods.items()):
            return
        template = copy.deepcopy(job["spec"]["template"])
        pod_name = f"{name}-" + "".join(random.choices(_GENERATE_CHARS, k=5))
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod_name,
                "namespace": namespace,
                "uid": str(uuid.uuid4()),
                "resourceVersion": self.next_resource_version(),
                "creationTimestamp": now(),
                "labels": dict((template.get("metadata") or {}).get("labels") or {}),
                "annotations": dict((template.get("metadata") or {}).get("annotations") or {}),
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": name,
                                     "uid": metadata["uid"], "controller": True, "blockOwnerDeletion": True}],
            },
            "spec": template.get("spec") or {},
            "status": {"phase": "Pending"},
        }
        self._pods[(namespace, pod_name)] = pod

    def _delete_job(self, key: tuple[str, str], policy: str | None) -> dict[str, Any]:
        """Delete a Job. Background or Foreground deletes its pods too; without a policy (the API's default for
        Jobs is orphan) or with Orphan the pods stay, without their owner."""
        job = self._jobs.pop(key)
        self.deletions.append((key[0], key[1], policy))
        uid = job["metadata"]["uid"]
        for pod_key, pod in list(self._pods.items()):
            owners = pod["metadata"].get("ownerReferences") or []
            if pod_key[0] != key[0] or not any(o.get("uid") == uid for o in owners):
                continue
            if policy in ("Background", "Foreground"):
                del self._pods[pod_key]
            else:
                pod["metadata"]["ownerReferences"] = [o for o in owners if o.get("uid") != uid]
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": {"name": key[1], "group": "batch", "kind": "jobs", "uid": uid}}

    def _list_pods(self, namespace: str, selector: str) -> dict[str, Any]:
        requirements = parse_selector(selector)
        items = []
        for (ns, _), pod in sorted(self._pods.items()):
            if ns == namespace and all(req(pod["metadata"].get("labels") or {}) for req in requirements):
                item = copy.deepcopy(pod)
                item.pop("kind", None)
                item.pop("apiVersion", None)
                items.append(item)
        return {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": str(self._rv)},
                "items": items}

    def _pod_log(self, namespace: str, pod_name: str, container: str | None) -> str:
        pod = self._pods.get((namespace, pod_name))
        if pod is None:
            raise ApiError(404, "NotFound", f'pods "{pod_name}" not found', {"name": pod_name, "kind": "pods"})
        spec = pod["spec"]
        names = [c["name"] for c in (spec.get("initContainers") or []) + (spec.get("containers") or [])]
        if container is None:
            if len(spec.get("containers") or []) != 1:
                raise ApiError(400, "BadRequest", f"a container name must be specified for pod {pod_name}, "
                                                  f"choose one of: {names}")
            container = spec["containers"][0]["name"]
        if container not in names:
            raise ApiError(400, "BadRequest", f"container {container} is not valid for pod {pod_name}")
        status = pod.get("status") or {}
        entry = next((e for e in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses")
                                                                                 or []) if e["name"] == container),
                     None)
        state = (entry or {}).get("state") or {}
        if not (state.get("running") or state.get("terminated")):
            reason = (state.get("waiting") or {}).get("reason") or "ContainerCreating"
            raise ApiError(400, "BadRequest",
                           f'container "{container}" in pod "{pod_name}" is waiting to start: {reason}')
        return self._logs.get((namespace, pod_name, container), "")

    # ----- server behaviour ---------------------------------------------------------------------------------

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self._faults:
                if (fault.method in (None, method)) and (fault.path is None or fault.path in path):
                    fault.count -= 1
                    if fault.count <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    def handle(self, method: str, path: str, query: dict[str, list[str]], content_type: str | None, body: Any):
        """(status code, JSON answer) for one request."""
        with self.lock:
            self.requests.append(RecordedRequest(method, path, query, content_type, copy.deepcopy(body)))
        fault = self._take_fault(method, path)
        if fault is not None:
            reason = _REASONS.get(fault.status, "InternalError")
            message = fault.message or f"injected {fault.status} for {method} {path}"
            return fault.status, ApiError(fault.status, reason, message).status()
        try:
            return self._route(method, path.rstrip("/") or "/", query, content_type, body)
        except ApiError as e:
            return e.code, e.status()

    def _route(self, method: str, path: str, query: dict[str, list[str]], content_type: str | None, body: Any):
        if path == "/version" and method == "GET":
            return 200, {"major": "1", "minor": "31", "gitVersion": "v1.31.0-fake", "platform": "linux/amd64"}
        with self.lock:
            if match := _CRONJOB.match(path):
                if method != "GET":
                    raise ApiError(405, "MethodNotAllowed", f"the fake does not support {method} on cronjobs")
                key = (match["ns"], match["name"])
                if key not in self.cronjobs:
                    raise _not_found("cronjobs", match["name"])
                return 200, copy.deepcopy(self.cronjobs[key])
            if match := _JOBS.match(path):
                if method == "GET":
                    return 200, self._list_jobs(
                        match["ns"],
                        (query.get("labelSelector") or [""])[0],
                        int((query.get("limit") or ["0"])[0] or 0),
                        (query.get("continue") or [""])[0],
                    )
                if method == "POST":
                    if not isinstance(body, dict):
                        raise ApiError(400, "BadRequest", "the body of the request was not a JSON object")
                    created = self._create_job(match["ns"], copy.deepcopy(body))
                    if self.on_job_created is not None:
                        self.on_job_created(copy.deepcopy(created))
                    return 201, created
            if match := _PODS.match(path):
                if method == "GET":
                    return 200, self._list_pods(match["ns"], (query.get("labelSelector") or [""])[0])
            if match := _POD_LOG.match(path):
                if method == "GET":
                    return 200, self._pod_log(match["ns"], match["name"], (query.get("container") or [None])[0])
            if match := _JOB.match(path):
                key = (match["ns"], match["name"])
                if key not in self._jobs:
                    raise _not_found("jobs", match["name"])
                if method == "GET":
                    self._controller_tick(self._jobs[key])
                    return 200, copy.deepcopy(self._jobs[key])
                if method == "PATCH":
                    return 200, self._patch_job(key, content_type, body)
                if method == "DELETE":
                    policy = (query.get("propagationPolicy") or [None])[0]
                    if policy is None and isinstance(body, dict):
                        policy = body.get("propagationPolicy")
                    return 200, self._delete_job(key, policy)
        raise ApiError(404, "NotFound", "the server could not find the requested resource")

    def _list_jobs(self, namespace: str, selector: str, limit: int = 0, continue_token: str = "") -> dict[str, Any]:
        """The matching Jobs; with ``limit``, one page, and metadata.continue (here: the offset) for the next."""
        requirements = parse_selector(selector)
        items = []
        for (ns, _), job in sorted(self._jobs.items()):
            if ns != namespace:
                continue
            self._controller_tick(job)
            if all(req(job["metadata"].get("labels") or {}) for req in requirements):
                item = copy.deepcopy(job)
                item.pop("kind", None)
                item.pop("apiVersion", None)
                items.append(item)
        metadata: dict[str, Any] = {"resourceVersion": str(self._rv)}
        if limit > 0:
            offset = int(continue_token or 0)
            if offset + limit < len(items):
                metadata["continue"] = str(offset + limit)
                metadata["remainingItemCount"] = len(items) - offset - limit
            items = items[offset : offset + limit]
        return {"kind": "JobList", "apiVersion": "batch/v1", "metadata": metadata, "items": items}

    def _controller_tick(self, job: dict[str, Any]) -> None:
        """What the job controller would have done by now."""
        status = job.setdefault("status", {})
        conditions = status.setdefault("conditions", [])
        if any(c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in conditions):
            return
        changed = False
        suspended = next((c for c in conditions if c["type"] == "Suspended"), None)
        if job["spec"].get("suspend"):
            if suspended is None or suspended["status"] != "True":
                conditions[:] = [c for c in conditions if c["type"] != "Suspended"]
                conditions.append(
                    {"type": "Suspended", "status": "True", "reason": "JobSuspended", "message": "Job suspended",
                     "lastProbeTime": now(), "lastTransitionTime": now()}
                )
                status.pop("startTime", None)
                changed = True
        else:
            if suspended is not None and suspended["status"] == "True":
                suspended.update(status="False", reason="JobResumed", message="Job resumed", lastTransitionTime=now())
                changed = True
            if not status.get("startTime"):
                status["startTime"] = now()
                status["active"] = 1
                changed = True
            self._make_pod(job)
        if not conditions:
            status.pop("conditions")
        if changed:
            job["metadata"]["resourceVersion"] = self.next_resource_version()

    def _create_job(self, namespace: str, job: dict[str, Any]) -> dict[str, Any]:
        metadata = job.setdefault("metadata", {})
        if metadata.get("namespace", namespace) != namespace:
            raise ApiError(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
            )
        if not metadata.get("name") and metadata.get("generateName"):
            metadata["name"] = metadata["generateName"] + "".join(random.choices(_GENERATE_CHARS, k=5))
        name = metadata.get("name") or ""
        _validate_job(job, name)
        if (namespace, name) in self._jobs:
            raise ApiError(
                409, "AlreadyExists", f'jobs.batch "{name}" already exists',
                {"name": name, "group": "batch", "kind": "jobs"},
            )
        uid = str(uuid.uuid4())
        metadata.update(
            namespace=namespace,
            uid=uid,
            resourceVersion=self.next_resource_version(),
            generation=1,
            creationTimestamp=now(),
        )
        job["apiVersion"], job["kind"] = "batch/v1", "Job"
        spec = job["spec"]
        template = spec["template"]
        template_labels = (template.get("metadata") or {}).get("labels")
        if template_labels and not metadata.get("labels"):
            metadata["labels"] = dict(template_labels)  # SetDefaults_Job, before the controller labels
        for key, value in (("parallelism", 1), ("completions", 1), ("backoffLimit", 6),
                           ("completionMode", "NonIndexed"), ("suspend", False),
                           ("podReplacementPolicy", "TerminatingOrFailed")):
            spec.setdefault(key, value)
        if not spec.get("manualSelector"):
            spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
            template.setdefault("metadata", {}).setdefault("labels", {}).update(
                {"batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name": name,
                 "controller-uid": uid, "job-name": name}
            )
        job["status"] = {}
        self._jobs[(namespace, name)] = job
        return copy.deepcopy(job)

    def _patch_job(self, key: tuple[str, str], content_type: str | None, patch: Any) -> dict[str, Any]:
        media = (content_type or "").split(";")[0].strip()
        if media not in MERGE_PATCH_TYPES:
            raise ApiError(415, "UnsupportedMediaType", f"the fake supports merge patches only, got {media!r}")
        if not isinstance(patch, dict):
            raise ApiError(400, "BadRequest", "a merge patch must be a JSON object")
        job = self._jobs[key]
        expected = (patch.get("metadata") or {}).get("resourceVersion")
        if expected is not None and expected != job["metadata"]["resourceVersion"]:
            raise ApiError(
                409, "Conflict",
                f'Operation cannot be fulfilled on jobs.batch "{key[1]}": the object has been modified; '
                "please apply your changes to the latest version and try again",
                {"name": key[1], "group": "batch", "kind": "jobs"},
            )
        patched = merge_patch(job, patch)
        for immutable in ("name", "namespace", "uid", "creationTimestamp"):
            if patched["metadata"].get(immutable) != job["metadata"].get(immutable):
                raise ApiError(422, "Invalid", f"metadata.{immutable}: field is immutable")
        if patched["spec"].get("template") != job["spec"].get("template"):
            raise ApiError(422, "Invalid", "spec.template: field is immutable")
        if patched["spec"] != job["spec"]:
            patched["metadata"]["generation"] = job["metadata"].get("generation", 1) + 1
        patched["metadata"]["resourceVersion"] = self.next_resource_version()
        self._jobs[key] = patched
        return copy.deepcopy(patched)


def _not_found(resource: str, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{resource}.batch "{name}" not found',
                    {"name": name, "group": "batch", "kind": resource})


def _validate_job(job: dict[str, Any], name: str) -> None:
    def invalid(message: str) -> ApiError:
        return ApiError(422, "Invalid", f'Job.batch "{name}" is invalid: {message}',
                        {"name": name, "group": "batch", "kind": "Job"})

    if not name:
        raise invalid("metadata.name: Required value: name or generateName is required")
    if len(name) > 63:
        raise invalid(f'metadata.name: Invalid value: "{name}": must be no more than 63 characters')
    if not _DNS1123_LABEL.match(name):
        raise invalid(f'metadata.name: Invalid value: "{name}": a lowercase RFC 1123 label must consist of '
                      "lower case alphanumeric characters or '-'")
    metadata = job["metadata"]
    for key, value in (metadata.get("labels") or {}).items():
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            raise invalid(f'metadata.labels: Invalid value: "{value}": not a valid label value')
        if not key or len(key.split("/")[-1]) > 63:
            raise invalid(f'metadata.labels: Invalid value: "{key}": not a valid label key')
    for key, value in (metadata.get("annotations") or {}).items():
        if not isinstance(value, str):
            raise invalid(f"metadata.annotations.{key}: annotation values must be strings")
    for ref in metadata.get("ownerReferences") or []:
        for required in ("apiVersion", "kind", "name", "uid"):
            if not ref.get(required):
                raise invalid(f"metadata.ownerReferences.{required}: Required value")
    spec = job.get("spec")
    template = (spec or {}).get("template")
    if not isinstance(template, dict) or not (template.get("spec") or {}).get("containers"):
        raise invalid("spec.template.spec.containers: Required value")
    if template["spec"].get("restartPolicy") not in ("Never", "OnFailure"):
        raise invalid('spec.template.spec.restartPolicy: Required value: valid values: "OnFailure", "Never"')


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (null deletes a key); maps merge, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def parse_selector(selector: str) -> list:
    """Label selector requirements as predicates: k=v, k==v, k!=v, k in (a,b), k notin (a,b), k, !k."""
    requirements = []
    for part in re.findall(r"[^,(]+(?:\([^)]*\))?", selector):
        part = part.strip()
        if not part:
            continue
        if m := re.fullmatch(r"(\S+)\s+(in|notin)\s+\(([^)]*)\)", part):
            key, op, values = m[1], m[2], {v.strip() for v in m[3].split(",")}
            if op == "in":
                requirements.append(lambda labels, k=key, vs=values: labels.get(k) in vs)
            else:
                requirements.append(lambda labels, k=key, vs=values: labels.get(k) not in vs)
        elif "!=" in part:
            key, value = (s.strip() for s in part.split("!=", 1))
            requirements.append(lambda labels, k=key, v=value: labels.get(k) != v)
        elif "=" in part:
            key, value = (s.strip() for s in re.split(r"==?", part, maxsplit=1))
            requirements.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif part.startswith("!"):
            absent = part[1:].strip()
            requirements.append(lambda labels, k=absent: k not in labels)
        else:
            requirements.append(lambda labels, k=part: k in labels)
    return requirements


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes; avoid 40 ms delayed ACKs
    state: KubeFake

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's signature
        return None

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            code, answer = 400, ApiError(400, "BadRequest", "the request body is not JSON").status()
        else:
            split = urlsplit(self.path)
            code, answer = self.state.handle(
                self.command, split.path, parse_qs(split.query), self.headers.get("Content-Type"), body
            )
        # pods/log answers text; everything else is JSON.
        text = isinstance(answer, str)
        data = answer.encode() if text else json.dumps(answer).encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain" if text else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve


__all__ = ["KubeFake", "RecordedRequest", "merge_patch", "parse_selector"]
