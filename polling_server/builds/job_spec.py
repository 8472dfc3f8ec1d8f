"""Pure Kubernetes Job logic for the kubernetes build backend: the Job of one build, its name, and reading it back.

Nothing here does I/O; objects are plain dicts shaped like the Kubernetes API's JSON. `job_for_build` is to this
backend what `job_from_cronjob` is to helm-api: one build in, one Job manifest out, table-tested without a cluster.

The Job runs rootless BuildKit as BuildKit documents it (examples/kubernetes/job.rootless.yaml, docs/rootless.md):
`buildctl-daemonless.sh` as UID/GID 1000, BUILDKITD_FLAGS=--oci-worker-no-process-sandbox, seccomp and AppArmor
Unconfined (the securityContext field on 1.30+, the annotation for older clusters), nothing privileged. An init
container fetches the planned commit with git into an emptyDir and checks that HEAD is that commit; BuildKit then
pushes the immutable tags only and writes its metadata (the pushed digest) to the termination message.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import posixpath
import re
from collections.abc import Mapping, Sequence
from typing import Any

from polling_server.builds.source_fetch import github_web_url, public_url
from polling_server.config import KubernetesBuildSettings, RepositorySettings, Settings
from polling_server.state import BuildRecord

SOURCE_CONTAINER = "source"
BUILD_CONTAINER = "build"
WORKSPACE = "/workspace"
SOURCE_DIR = f"{WORKSPACE}/src"
BUILDKIT_HOME = "/home/user"  # the rootless image's user (UID 1000)
DOCKER_CONFIG_DIR = f"{BUILDKIT_HOME}/.docker"
SECRETS_DIR = "/run/build-secrets"
TERMINATION_LOG = "/dev/termination-log"
BUILD_UID = 1000
CACHE_TAG = "buildcache"

# Our annotations: they name the build, so a restarted poller adopts only a Job that is really its own.
BUILD_ID_ANNOTATION = "helmsman-cd.io/build-id"
ATTEMPT_ANNOTATION = "helmsman-cd.io/build-attempt"
INSTANCE_ANNOTATION = "helmsman-cd.io/build-instance"
REPOSITORY_ANNOTATION = "helmsman-cd.io/repository"
REF_ANNOTATION = "helmsman-cd.io/ref"
COMMIT_ANNOTATION = "helmsman-cd.io/commit"
IMAGE_ANNOTATION = "helmsman-cd.io/image"
APPARMOR_ANNOTATION = f"container.apparmor.security.beta.kubernetes.io/{BUILD_CONTAINER}"
# Our labels: what `kubectl get jobs -l` and a cleanup select on.
INSTANCE_LABEL = "helmsman-cd.io/build-instance"
BUILD_ID_LABEL = "helmsman-cd.io/build-id"
REPOSITORY_LABEL = "helmsman-cd.io/repository"
COMPONENT_LABELS = {"app.kubernetes.io/name": "helmsman-cd-build", "app.kubernetes.io/managed-by": "polling-server"}

# Used when builds.kubernetes.resources is empty: build pods always carry requests and limits.
DEFAULT_RESOURCES: Mapping[str, Any] = {
    "requests": {"cpu": "500m", "memory": "1Gi"},
    "limits": {"memory": "4Gi"},
}
# git needs far less than BuildKit; the init container's requests do not add to the pod's (the max counts).
SOURCE_RESOURCES: Mapping[str, Any] = {
    "requests": {"cpu": "100m", "memory": "128Mi"},
    "limits": {"memory": "1Gi"},
}

MAX_NAME_LENGTH = 63
HASH_LENGTH = 10
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_DIGEST_IN_TEXT = re.compile(r'"containerimage\.digest"\s*:\s*"(sha256:[0-9a-f]{64})"')
_NOT_LABEL = re.compile(r"[^a-z0-9-]+")

# The init container's program: a constant. Everything it works on comes in through the environment (the URL,
# the commit, the paths and, from a Secret, the token), so no input is ever spliced into a shell string.
# The token becomes an HTTP header through GIT_CONFIG_* variables: never an argument, a URL or a log line.
# On failure the last lines of its log become the container's termination message (FallbackToLogsOnError).
SOURCE_SCRIPT = r"""set -eu
fail() { printf '%s\n' "$*" >&2; exit 2; }
if [ -n "${SOURCE_TOKEN:-}" ]; then
  basic=$(printf '%s:%s' "${SOURCE_USERNAME:-x-access-token}" "$SOURCE_TOKEN" | base64 | tr -d '\n')
  export GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=http.extraHeader GIT_CONFIG_VALUE_0="Authorization: Basic $basic"
  unset SOURCE_TOKEN basic
fi
export GIT_TERMINAL_PROMPT=0
src="$WORKSPACE/src"
mkdir -p "$src"
cd "$src"
git init -q .
echo "fetching commit $SOURCE_SHA from $SOURCE_URL"
if ! git fetch -q --no-tags --depth 1 -- "$SOURCE_URL" "$SOURCE_SHA"; then
  echo "the remote does not serve $SOURCE_SHA by its id; fetching its branches and tags instead"
  git fetch -q --no-tags -- "$SOURCE_URL" '+refs/heads/*:refs/remotes/origin/*' '+refs/tags/*:refs/tags/*' \
    || fail "cannot fetch from $SOURCE_URL"
  git cat-file -e "$SOURCE_SHA^{commit}" 2>/dev/null || fail "commit $SOURCE_SHA is on no branch or tag of $SOURCE_URL"
fi
git -c advice.detachedHead=false checkout -q --detach "$SOURCE_SHA"
head=$(git rev-parse HEAD)
[ "$head" = "$SOURCE_SHA" ] || fail "the checkout is at $head, not the planned commit $SOURCE_SHA"
rm -rf .git
[ -d "$SOURCE_CONTEXT" ] || fail "the build context $SOURCE_CONTEXT is not a directory at this commit"
[ -f "$SOURCE_DOCKERFILE" ] || fail "there is no $SOURCE_DOCKERFILE at this commit"
root=$(pwd -P)
for path in "$SOURCE_CONTEXT" "$SOURCE_DOCKERFILE"; do
  case "$(realpath "$path")/" in
    "$root"/*) ;;
    *) fail "$path leads outside the repository" ;;
  esac
done
echo "the source of $SOURCE_SHA is ready"
"""


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:HASH_LENGTH]


def instance_id(settings: Settings) -> str:
    """A short, stable name of this poller: its state file and its registry. It survives restarts (the Job names
    a restarted poller looks for are the ones it created) and differs between pollers sharing a namespace."""
    return _short_hash(f"{settings.state_path}\0{settings.registry.host}")


def _label_value(text: str) -> str:
    """`text` as a label value (at most 63 characters of [a-z0-9-]), with a hash when it had to be shortened."""
    value = _NOT_LABEL.sub("-", text.lower()).strip("-")
    if len(value) > MAX_NAME_LENGTH:
        value = f"{value[:MAX_NAME_LENGTH - HASH_LENGTH - 1].rstrip('-')}-{_short_hash(text)}"
    return value


def job_name(build: BuildRecord, repo: RepositorySettings, instance: str) -> str:
    """`<repository>-<build id>-<hash of instance and commit>`: a DNS-1123 label of at most 63 characters.

    The same build of the same poller always gets the same name: a second create answers 409, never a second Job.
    """
    suffix = f"{build.id}-{_short_hash(instance + chr(0) + build.sha)}"
    prefix = _NOT_LABEL.sub("-", repo.name.lower()).strip("-")[: MAX_NAME_LENGTH - len(suffix) - 1].strip("-")
    return f"{prefix}-{suffix}" if prefix else f"build-{suffix}"[:MAX_NAME_LENGTH]


def build_annotations(build: BuildRecord, repo: RepositorySettings, instance: str, image: str) -> dict[str, str]:
    return {
        BUILD_ID_ANNOTATION: str(build.id),
        ATTEMPT_ANNOTATION: str(build.attempts),
        INSTANCE_ANNOTATION: instance,
        REPOSITORY_ANNOTATION: repo.name,
        REF_ANNOTATION: build.ref,
        COMMIT_ANNOTATION: build.sha,
        IMAGE_ANNOTATION: image,
    }


def build_labels(build: BuildRecord, repo: RepositorySettings, instance: str) -> dict[str, str]:
    return {
        **COMPONENT_LABELS,
        INSTANCE_LABEL: instance,
        BUILD_ID_LABEL: str(build.id),
        REPOSITORY_LABEL: _label_value(repo.name),
    }


def instance_selector(instance: str) -> str:
    """The label selector of every build Job of one poller."""
    return f"{INSTANCE_LABEL}={instance}"


def clone_url(settings: Settings, repo: RepositorySettings) -> str:
    """Where the init container fetches from: the GitHub web host's `.git` URL, or the remote without userinfo
    (credentials never go into a Job: they come from builds.kubernetes.source_token_secret)."""
    if repo.repo:
        return f"{github_web_url(settings.github.api_url, repo.repo)}.git"
    return public_url(repo.url or "")


def _csv_field(value: str) -> str:
    """One field of buildctl's comma-separated --output/--export-cache syntax, quoted when it needs to be."""
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow([value])
    return out.getvalue()


def _secret_mounts(repo: RepositorySettings) -> list[tuple[str, str, str, str]]:
    """(secret id, Secret name, volume name, mount directory) of each build secret, in a stable order."""
    return [(sid, secret, f"build-secret-{i}", f"{SECRETS_DIR}/{i}")
            for i, (sid, secret) in enumerate(sorted(repo.build_secrets.items()))]


def buildctl_args(repo: RepositorySettings, image_ref: str, tags: Sequence[str], labels: Mapping[str, str],
                  *, insecure_registry: bool = False) -> list[str]:
    """The argv of `buildctl build` (after `buildctl-daemonless.sh`): an argv list, never a shell string."""
    context = posixpath.normpath(posixpath.join(SOURCE_DIR, repo.context))
    dockerfile_dir, dockerfile_name = posixpath.split(posixpath.normpath(posixpath.join(SOURCE_DIR, repo.dockerfile)))
    args = ["build", "--progress", "plain", "--frontend", "dockerfile.v0",
            "--local", f"context={context}", "--local", f"dockerfile={dockerfile_dir}",
            "--opt", f"filename={dockerfile_name}"]
    for key, value in labels.items():
        args += ["--opt", f"label:{key}={value}"]
    for key, value in sorted(repo.build_args.items()):
        args += ["--opt", f"build-arg:{key}={value}"]
    if repo.platforms:
        args += ["--opt", f"platform={','.join(repo.platforms)}"]
    insecure = ",registry.insecure=true" if insecure_registry else ""
    names = ",".join(f"{image_ref}:{t}" for t in tags)
    args += ["--output", f"type=image,{_csv_field(f'name={names}')},push=true{insecure}"]
    if repo.cache == "registry":
        cache = f"type=registry,ref={image_ref}:{CACHE_TAG}{insecure}"
        args += ["--export-cache", f"{cache},mode=max", "--import-cache", cache]
    for sid, _secret, _volume, directory in _secret_mounts(repo):
        args += ["--secret", f"id={sid},src={directory}/{sid}"]
    args += ["--metadata-file", TERMINATION_LOG]
    return args


def _source_env(settings: Settings, repo: RepositorySettings, build: BuildRecord,
                k8s: KubernetesBuildSettings) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "WORKSPACE", "value": WORKSPACE},
        {"name": "HOME", "value": "/tmp"},
        {"name": "SOURCE_URL", "value": clone_url(settings, repo)},
        {"name": "SOURCE_SHA", "value": build.sha},
        {"name": "SOURCE_CONTEXT", "value": repo.context},
        {"name": "SOURCE_DOCKERFILE", "value": repo.dockerfile},
    ]
    if k8s.source_token_secret:
        env += [
            {"name": "SOURCE_TOKEN",
             "valueFrom": {"secretKeyRef": {"name": k8s.source_token_secret, "key": "token"}}},
            {"name": "SOURCE_USERNAME",
             "valueFrom": {"secretKeyRef": {"name": k8s.source_token_secret, "key": "username", "optional": True}}},
        ]
    return env


def job_for_build(build: BuildRecord, repo: RepositorySettings, settings: Settings, image_ref: str,
                  tags: Sequence[str], labels: Mapping[str, str], *, instance: str) -> dict[str, Any]:
    """The Job that builds `build` of `repo` and pushes `image_ref:<tag>` for each of `tags` (the immutable ones),
    with the OCI `labels`. Retries stay the worker's (backoffLimit 0); the time limit is builds.timeout_seconds."""
    k8s = settings.builds.kubernetes or KubernetesBuildSettings()
    insecure = settings.registry.insecure
    name = job_name(build, repo, instance)
    job_labels = build_labels(build, repo, instance)
    resources = json.loads(json.dumps(dict(k8s.resources) or DEFAULT_RESOURCES))  # a copy, never shared
    secret_mounts = _secret_mounts(repo)

    source = {
        "name": SOURCE_CONTAINER,
        "image": k8s.init_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/bin/sh", "-c", SOURCE_SCRIPT],
        "env": _source_env(settings, repo, build, k8s),
        "resources": json.loads(json.dumps(SOURCE_RESOURCES)),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": BUILD_UID,
            "runAsGroup": BUILD_UID,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "workspace", "mountPath": WORKSPACE}],
    }
    build_mounts = [
        {"name": "workspace", "mountPath": WORKSPACE, "readOnly": True},
        # BuildKit's state: an emptyDir, since the image's VOLUME does not work rootless on every node OS.
        {"name": "buildkitd", "mountPath": f"{BUILDKIT_HOME}/.local/share/buildkit"},
        {"name": "docker-config", "mountPath": DOCKER_CONFIG_DIR, "readOnly": True},
    ]
    build_mounts += [{"name": volume, "mountPath": directory, "readOnly": True}
                     for _sid, _secret, volume, directory in secret_mounts]
    buildkit = {
        "name": BUILD_CONTAINER,
        "image": k8s.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["buildctl-daemonless.sh"],
        "args": buildctl_args(repo, image_ref, tags, labels, insecure_registry=insecure),
        "env": [
            {"name": "BUILDKITD_FLAGS", "value": "--oci-worker-no-process-sandbox"},
            {"name": "DOCKER_CONFIG", "value": DOCKER_CONFIG_DIR},
        ],
        "resources": resources,
        # Rootless BuildKit needs its user namespace: no privileged, but seccomp and AppArmor unconfined, and
        # privilege escalation allowed (newuidmap/newgidmap are setuid).
        "securityContext": {
            "runAsUser": BUILD_UID,
            "runAsGroup": BUILD_UID,
            "seccompProfile": {"type": "Unconfined"},
            "appArmorProfile": {"type": "Unconfined"},
        },
        # BuildKit's --metadata-file lands here, so the digest comes back in the container status. On a failure
        # the file is empty and the end of the log is the message instead.
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": build_mounts,
    }
    volumes: list[dict[str, Any]] = [
        {"name": "workspace", "emptyDir": {"sizeLimit": str(settings.builds.max_source_bytes)}},
        {"name": "buildkitd", "emptyDir": {}},
        {"name": "docker-config",
         # Optional: without it BuildKit pushes anonymously (a registry that wants credentials answers 401,
         # in the build log), where a missing required Secret would leave the pod pending until the deadline.
         "secret": {"secretName": k8s.docker_config_secret, "defaultMode": 0o440, "optional": True,
                    "items": [{"key": ".dockerconfigjson", "path": "config.json"}]}},
    ]
    volumes += [{"name": volume, "secret": {"secretName": secret, "defaultMode": 0o440,
                                           "items": [{"key": sid, "path": sid}]}}
                for sid, secret, volume, _directory in secret_mounts]

    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": BUILD_UID,
            "runAsGroup": BUILD_UID,
            "fsGroup": BUILD_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "initContainers": [source],
        "containers": [buildkit],
        "volumes": volumes,
    }
    if k8s.node_selector:
        pod_spec["nodeSelector"] = dict(k8s.node_selector)
    if k8s.tolerations:
        pod_spec["tolerations"] = json.loads(json.dumps(list(k8s.tolerations)))
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": k8s.namespace,
            "labels": job_labels,
            "annotations": build_annotations(build, repo, instance, f"{image_ref}:{tags[0]}" if tags else image_ref),
        },
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": max(1, math.ceil(settings.builds.timeout_seconds)),
            "ttlSecondsAfterFinished": k8s.ttl_seconds_after_finished,
            "template": {
                "metadata": {
                    "labels": dict(job_labels),
                    # Clusters before 1.30 read AppArmor from this annotation, not from the securityContext field.
                    "annotations": {APPARMOR_ANNOTATION: "unconfined"},
                },
                "spec": pod_spec,
            },
        },
    }


# --- reading a Job back ----------------------------------------------------------------------------------------
def _true_condition(job: Mapping[str, Any], *types: str) -> Mapping[str, Any] | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") in types and condition.get("status") == "True":
            return condition
    return None


def job_outcome(job: Mapping[str, Any]) -> tuple[str, str | None]:
    """(`running` | `succeeded` | `failed`, the failure's reason such as DeadlineExceeded or BackoffLimitExceeded).

    The terminal conditions count, and so do the ones 1.31+ sets first (SuccessCriteriaMet, FailureTarget) while
    the pods are still terminating: the outcome is decided then.
    """
    if _true_condition(job, "Complete", "SuccessCriteriaMet"):
        return "succeeded", None
    failed = _true_condition(job, "Failed", "FailureTarget")
    if failed:
        return "failed", failed.get("reason") or None
    return "running", None


def belongs_to(job: Mapping[str, Any], build: BuildRecord, instance: str) -> bool:
    """True when `job` was created by this poller for this build (its annotations name the build and commit)."""
    annotations = (job.get("metadata") or {}).get("annotations") or {}
    return (annotations.get(BUILD_ID_ANNOTATION) == str(build.id)
            and annotations.get(COMMIT_ANNOTATION) == build.sha
            and annotations.get(INSTANCE_ANNOTATION) == instance)


def job_attempt(job: Mapping[str, Any]) -> int | None:
    value = ((job.get("metadata") or {}).get("annotations") or {}).get(ATTEMPT_ANNOTATION)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def digest_from_metadata(message: str | None) -> str | None:
    """The pushed digest in BuildKit's --metadata-file JSON (`containerimage.digest`). The kubelet cuts a
    termination message at 4096 bytes; the digest comes early, so a cut document is searched as text."""
    if not message:
        return None
    try:
        data = json.loads(message)
    except ValueError:
        data = None
    if isinstance(data, dict):
        digest = data.get("containerimage.digest")
        return digest if isinstance(digest, str) and _DIGEST.match(digest) else None
    m = _DIGEST_IN_TEXT.search(message)
    return m.group(1) if m else None


def container_status(pod: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    status = pod.get("status") or {}
    for entry in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        if entry.get("name") == name:
            return entry
    return None


def terminated(pod: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    """The `terminated` state of container `name` (exitCode, reason, message), or None while it has not ended."""
    entry = container_status(pod, name)
    return ((entry or {}).get("state") or {}).get("terminated")


def waiting_reason(pod: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """(container, reason, message) of the first container waiting for something other than its turn."""
    status = pod.get("status") or {}
    for entry in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        waiting = (entry.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason and reason not in ("PodInitializing", "ContainerCreating"):
            return entry.get("name", "?"), reason, waiting.get("message") or ""
    return None
