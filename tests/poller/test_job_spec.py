"""Table tests of the pure Job logic of the kubernetes build backend (polling_server/builds/job_spec.py): the Job of
a build, its name, its outcome, the digest in BuildKit's metadata; the rendered Job checked with
`kubernetes-validate --strict`; and the init container's source script run for real against git remotes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from polling_server.builds import job_spec as J
from polling_server.config import parse_settings
from polling_server.planning.model import BuildKind, BuildStatus
from polling_server.state import BuildRecord
from tests.git_http import AuthGitServer
from tests.gitrepo import GitRepo, git

SHA = "0123456789abcdef0123456789abcdef01234567"
DIGEST = "sha256:" + "ab" * 32
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABELS = {"org.opencontainers.image.revision": SHA, "org.opencontainers.image.version": "staging"}


def settings(repo: dict | None = None, kubernetes: dict | None = None, **top):
    data = {
        "state_path": "/var/lib/polling-server/state.db",
        "registry": {"host": "registry.example.com"},
        "builds": {"backend": "kubernetes", "timeout_seconds": 900, "kubernetes": kubernetes or {}},
        "repositories": [{"repo": "acme/web", "image": "acme/web", **(repo or {})}],
        **top,
    }
    return parse_settings(data, env={})


def record(build_id: int = 7, sha: str = SHA, attempts: int = 1, kind: BuildKind = BuildKind.STAGING,
           ref: str = "main", repo: str = "acme/web") -> BuildRecord:
    return BuildRecord(id=build_id, repo=repo, kind=kind, ref=ref, sha=sha, version=None, status=BuildStatus.RUNNING,
                       attempts=attempts, max_attempts=3, next_attempt_at=0.0, error=None, pushed_tags=(), digest=None,
                       superseded_by=None, created_at=0.0, started_at=0.0, finished_at=None)


def render(s=None, build=None, tags=("sha-0123456789ab",), labels=None, instance="inst1"):
    s = s or settings()
    repo = s.repositories[0]
    return J.job_for_build(build or record(repo=repo.name), repo, s, s.image_ref(repo), list(tags),
                           LABELS if labels is None else labels, instance=instance)


def containers(job):
    spec = job["spec"]["template"]["spec"]
    return spec["initContainers"][0], spec["containers"][0]


def env_of(container) -> dict:
    return {e["name"]: e for e in container.get("env", [])}


# --- the build's argv: what BuildKit is asked to do ------------------------------------------------------------
BASE_ARGS = ["build", "--progress", "plain", "--frontend", "dockerfile.v0",
             "--local", "context=/workspace/src", "--local", "dockerfile=/workspace/src",
             "--opt", "filename=Dockerfile",
             "--opt", f"label:org.opencontainers.image.revision={SHA}",
             "--opt", "label:org.opencontainers.image.version=staging"]
PUSH = "type=image,name=registry.example.com/acme/web:sha-0123456789ab,push=true"
CACHE = "type=registry,ref=registry.example.com/acme/web:buildcache"


@pytest.mark.parametrize(("repo", "tags", "expected_tail"), [
    pytest.param({}, ["sha-0123456789ab"], ["--output", PUSH, "--metadata-file", "/dev/termination-log"],
                 id="defaults"),
    pytest.param({"dockerfile": "docker/app.Dockerfile", "context": "services/web"}, ["sha-0123456789ab"],
                 ["--output", PUSH, "--metadata-file", "/dev/termination-log"], id="paths"),
    pytest.param({"build_args": {"B": "2", "A": "x,y=z"}}, ["sha-0123456789ab"],
                 ["--opt", "build-arg:A=x,y=z", "--opt", "build-arg:B=2", "--output", PUSH,
                  "--metadata-file", "/dev/termination-log"], id="build-args-sorted"),
    pytest.param({"platforms": ["linux/amd64", "linux/arm64"]}, ["sha-0123456789ab"],
                 ["--opt", "platform=linux/amd64,linux/arm64", "--output", PUSH,
                  "--metadata-file", "/dev/termination-log"], id="multi-arch"),
    pytest.param({"cache": "registry"}, ["sha-0123456789ab"],
                 ["--output", PUSH, "--export-cache", f"{CACHE},mode=max", "--import-cache", CACHE,
                  "--metadata-file", "/dev/termination-log"], id="registry-cache"),
    pytest.param({"build_secrets": {"npmrc": "npm-credentials", "aws": "aws-build"}}, ["sha-0123456789ab"],
                 ["--output", PUSH, "--secret", "id=aws,src=/run/build-secrets/0/aws",
                  "--secret", "id=npmrc,src=/run/build-secrets/1/npmrc", "--metadata-file", "/dev/termination-log"],
                 id="build-secrets"),
    pytest.param({}, ["1.2.3", "extra"],
                 ["--output", 'type=image,"name=registry.example.com/acme/web:1.2.3,registry.example.com/acme/web:'
                              'extra",push=true', "--metadata-file", "/dev/termination-log"],
                 id="several-names-quoted"),
])
def test_buildctl_args(repo, tags, expected_tail):
    s = settings(repo)
    args = J.buildctl_args(s.repositories[0], s.image_ref(s.repositories[0]), tags, LABELS)
    if "dockerfile" in repo:
        assert args[:11] == ["build", "--progress", "plain", "--frontend", "dockerfile.v0",
                             "--local", "context=/workspace/src/services/web",
                             "--local", "dockerfile=/workspace/src/docker", "--opt", "filename=app.Dockerfile"]
    else:
        assert args[:len(BASE_ARGS)] == BASE_ARGS
    assert args[len(BASE_ARGS):] == expected_tail


def test_insecure_registry_applies_to_push_and_cache():
    s = settings({"cache": "registry"})
    # registry.insecure (a plain-HTTP registry) is read where the configuration has it.
    insecure = J.buildctl_args(s.repositories[0], "reg.local:5000/acme/web", ["sha-1"], {}, insecure_registry=True)
    assert "type=image,name=reg.local:5000/acme/web:sha-1,push=true,registry.insecure=true" in insecure
    assert "type=registry,ref=reg.local:5000/acme/web:buildcache,registry.insecure=true,mode=max" in insecure
    assert "type=registry,ref=reg.local:5000/acme/web:buildcache,registry.insecure=true" in insecure


def test_registry_insecure_reaches_the_jobs_output():
    s = settings({"cache": "registry"}, registry={"host": "registry.cd-infra.svc:5000", "insecure": True})
    _, build = containers(render(s))
    assert ("type=image,name=registry.cd-infra.svc:5000/acme/web:sha-0123456789ab,push=true,registry.insecure=true"
            in build["args"])
    assert not any("registry.insecure" in a for a in containers(render())[1]["args"])


# --- the Job around it ---------------------------------------------------------------------------------------------
def test_the_job_runs_rootless_buildkit_as_buildkit_documents_it():
    job = render()
    spec = job["spec"]
    assert spec["backoffLimit"] == 0  # retries stay the worker's
    assert spec["activeDeadlineSeconds"] == 900
    assert spec["ttlSecondsAfterFinished"] == 3600
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert spec["template"]["metadata"]["annotations"] == {
        "container.apparmor.security.beta.kubernetes.io/build": "unconfined"}
    source, build = containers(job)
    assert build["image"] == "moby/buildkit:v0.33.1-rootless"
    assert build["command"] == ["buildctl-daemonless.sh"]
    assert build["args"] == [*BASE_ARGS, "--output", PUSH, "--metadata-file", "/dev/termination-log"]
    assert env_of(build)["BUILDKITD_FLAGS"]["value"] == "--oci-worker-no-process-sandbox"
    assert env_of(build)["DOCKER_CONFIG"]["value"] == "/home/user/.docker"
    assert build["securityContext"] == {"runAsUser": 1000, "runAsGroup": 1000,
                                        "seccompProfile": {"type": "Unconfined"},
                                        "appArmorProfile": {"type": "Unconfined"}}
    assert build["terminationMessagePath"] == "/dev/termination-log"
    assert build["resources"] == {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "4Gi"}}
    assert all(not c.get("securityContext", {}).get("privileged") for c in (source, build))
    mounts = {m["mountPath"]: m for m in build["volumeMounts"]}
    assert mounts["/workspace"]["readOnly"] is True
    assert mounts["/home/user/.docker"]["readOnly"] is True
    assert "/home/user/.local/share/buildkit" in mounts
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["docker-config"]["secret"]["secretName"] == "registry-push"
    assert volumes["docker-config"]["secret"]["items"] == [{"key": ".dockerconfigjson", "path": "config.json"}]
    assert volumes["workspace"]["emptyDir"] == {"sizeLimit": str(2 << 30)}
    assert "nodeSelector" not in pod and "tolerations" not in pod


def test_the_init_container_fetches_the_exact_commit_with_nothing_secret_in_its_spec():
    source, _ = containers(render())
    assert source["image"] == "alpine/git:v2.54.0"
    assert source["command"] == ["/bin/sh", "-c", J.SOURCE_SCRIPT]
    env = env_of(source)
    assert env["SOURCE_URL"]["value"] == "https://github.com/acme/web.git"
    assert env["SOURCE_SHA"]["value"] == SHA
    assert env["SOURCE_CONTEXT"]["value"] == "." and env["SOURCE_DOCKERFILE"]["value"] == "Dockerfile"
    assert "SOURCE_TOKEN" not in env  # public source: no token Secret configured
    assert source["securityContext"]["allowPrivilegeEscalation"] is False
    assert source["securityContext"]["runAsUser"] == 1000


@pytest.mark.parametrize(("repository", "github", "url"), [
    ({"repo": "acme/web"}, {}, "https://github.com/acme/web.git"),
    ({"repo": "acme/web"}, {"api_url": "https://ghe.example.com/api/v3"}, "https://ghe.example.com/acme/web.git"),
    ({"repo": None, "url": "https://bot:hunter2hunter2@git.example.com/acme/web.git", "name": "acme/web"}, {},
     "https://git.example.com/acme/web.git"),
])
def test_clone_url_never_carries_credentials(repository, github, url):
    s = settings(repository, github=github)
    source, _ = containers(render(s))
    assert env_of(source)["SOURCE_URL"]["value"] == url
    assert "hunter2" not in json.dumps(render(s))


def test_source_token_and_settings_come_from_the_configuration():
    s = settings({"build_secrets": {"npmrc": "npm-credentials"}}, kubernetes={
        "namespace": "builds", "image": "mirror.example.com/buildkit:v0.33.1-rootless",
        "init_image": "mirror.example.com/git:v2.54.0", "source_token_secret": "source-token",
        "docker_config_secret": "push-creds", "ttl_seconds_after_finished": 600,
        "resources": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "8Gi"}},
        "node_selector": {"pool": "builds"},
        "tolerations": [{"key": "builds", "operator": "Exists", "effect": "NoSchedule"}]})
    job = render(s)
    assert job["metadata"]["namespace"] == "builds"
    assert job["spec"]["ttlSecondsAfterFinished"] == 600
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "builds"}
    assert pod["tolerations"] == [{"key": "builds", "operator": "Exists", "effect": "NoSchedule"}]
    source, build = containers(job)
    assert (source["image"], build["image"]) == ("mirror.example.com/git:v2.54.0",
                                                 "mirror.example.com/buildkit:v0.33.1-rootless")
    assert build["resources"] == {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"memory": "8Gi"}}
    env = env_of(source)
    assert env["SOURCE_TOKEN"] == {"name": "SOURCE_TOKEN", "valueFrom": {"secretKeyRef": {"name": "source-token",
                                                                                           "key": "token"}}}
    assert env["SOURCE_USERNAME"]["valueFrom"]["secretKeyRef"]["optional"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["docker-config"]["secret"]["secretName"] == "push-creds"
    assert volumes["build-secret-0"]["secret"] == {"secretName": "npm-credentials", "defaultMode": 0o440,
                                                   "items": [{"key": "npmrc", "path": "npmrc"}]}
    assert {"name": "build-secret-0", "mountPath": "/run/build-secrets/0", "readOnly": True} in build["volumeMounts"]


def test_annotations_and_labels_name_the_build():
    job = render(build=record(build_id=41, attempts=2, kind=BuildKind.RELEASE, ref="v1.2.3"), tags=["1.2.3"])
    assert job["metadata"]["annotations"] == {
        "helmsman-cd.io/build-id": "41", "helmsman-cd.io/build-attempt": "2", "helmsman-cd.io/build-instance": "inst1",
        "helmsman-cd.io/repository": "acme/web", "helmsman-cd.io/ref": "v1.2.3", "helmsman-cd.io/commit": SHA,
        "helmsman-cd.io/image": "registry.example.com/acme/web:1.2.3"}
    labels = job["metadata"]["labels"]
    assert labels["helmsman-cd.io/build-instance"] == "inst1"
    assert labels["helmsman-cd.io/build-id"] == "41"
    assert labels["helmsman-cd.io/repository"] == "acme-web"
    assert job["spec"]["template"]["metadata"]["labels"] == labels
    assert J.belongs_to(job, record(build_id=41), "inst1")
    assert not J.belongs_to(job, record(build_id=41), "other-poller")
    assert not J.belongs_to(job, record(build_id=42), "inst1")
    assert not J.belongs_to(job, record(build_id=41, sha="f" * 40), "inst1")
    assert J.job_attempt(job) == 2


def test_the_job_is_a_copy_of_the_settings():
    s = settings(kubernetes={"resources": {"limits": {"memory": "1Gi"}}, "tolerations": [{"key": "a"}]})
    job = render(s)
    job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = "9Gi"
    job["spec"]["template"]["spec"]["tolerations"][0]["key"] = "changed"
    assert s.builds.kubernetes.resources == {"limits": {"memory": "1Gi"}}
    assert render(s)["spec"]["template"]["spec"]["tolerations"] == [{"key": "a"}]


# --- names -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["acme/web", "A" * 80, "---", "team.name/Service_X", "x"])
def test_job_names_are_short_dns1123_labels(name):
    s = settings({"name": name})
    for build_id in (1, 123456789012):
        job_name = J.job_name(record(build_id=build_id, repo=name), s.repositories[0], "inst1")
        assert len(job_name) <= 63 and DNS1123.match(job_name), job_name
        assert job_name.endswith(f"-{build_id}-" + job_name.rsplit("-", 1)[1])


def test_job_names_come_from_the_build_the_instance_and_the_commit():
    repo = settings().repositories[0]
    name = J.job_name(record(), repo, "inst1")
    assert name == J.job_name(record(attempts=3), repo, "inst1")  # a retry or a restart finds the same Job
    assert name.startswith("acme-web-7-")
    assert name != J.job_name(record(), repo, "inst2")
    assert name != J.job_name(record(sha="f" * 40), repo, "inst1")
    assert name != J.job_name(record(build_id=8), repo, "inst1")


def test_instance_id_differs_per_state_file_and_registry():
    a = J.instance_id(settings())
    assert a == J.instance_id(settings())
    assert a != J.instance_id(settings(state_path="/other/state.db"))
    assert a != J.instance_id(settings(registry={"host": "other.example.com"}))


# --- reading a Job back --------------------------------------------------------------------------------------------
def condition(kind: str, reason: str = "", status: str = "True") -> dict:
    return {"type": kind, "status": status, "reason": reason}


@pytest.mark.parametrize(("conditions", "expected"), [
    ([], ("running", None)),
    ([condition("Suspended", "JobSuspended", "False")], ("running", None)),
    ([condition("SuccessCriteriaMet", "CompletionsReached")], ("succeeded", None)),
    ([condition("SuccessCriteriaMet"), condition("Complete")], ("succeeded", None)),
    ([condition("FailureTarget", "DeadlineExceeded")], ("failed", "DeadlineExceeded")),
    ([condition("FailureTarget", "BackoffLimitExceeded"), condition("Failed", "BackoffLimitExceeded")],
     ("failed", "BackoffLimitExceeded")),
    ([condition("Failed", "DeadlineExceeded", "False")], ("running", None)),
])
def test_job_outcome(conditions, expected):
    assert J.job_outcome({"status": {"conditions": conditions}}) == expected


@pytest.mark.parametrize(("message", "digest"), [
    (json.dumps({"containerimage.digest": DIGEST, "image.name": "r/a:sha-1"}), DIGEST),
    (json.dumps({"containerimage.descriptor": {"size": 1}, "containerimage.digest": DIGEST}, indent=2), DIGEST),
    # The kubelet cuts a termination message at 4096 bytes: a cut document still names the digest.
    (json.dumps({"containerimage.digest": DIGEST, "x": "y" * 5000})[:4096], DIGEST),
    (json.dumps({"containerimage.digest": "sha256:short"}), None),
    (json.dumps({"image.name": "r/a"}), None),
    ("ERROR: failed to solve: process did not complete successfully", None),
    ("", None),
    (None, None),
])
def test_digest_from_metadata(message, digest):
    assert J.digest_from_metadata(message) == digest


@pytest.mark.parametrize(("statuses", "expected"), [
    ({}, None),
    ({"initContainerStatuses": [{"name": "source", "state": {"running": {}}}],
      "containerStatuses": [{"name": "build", "state": {"waiting": {"reason": "PodInitializing"}}}]}, None),
    ({"containerStatuses": [{"name": "build", "state": {"waiting": {"reason": "ImagePullBackOff",
                                                                    "message": "Back-off pulling image"}}}]},
     ("build", "ImagePullBackOff", "Back-off pulling image")),
    ({"initContainerStatuses": [{"name": "source", "state": {"waiting": {"reason": "CreateContainerConfigError",
                                                                         "message": 'secret "t" not found'}}}]},
     ("source", "CreateContainerConfigError", 'secret "t" not found')),
])
def test_waiting_reason(statuses, expected):
    assert J.waiting_reason({"status": statuses}) == expected


# --- validated as the API server would -----------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["defaults", "everything"])
def test_rendered_job_validates_strictly_for_kubernetes_1_32(tmp_path, variant):
    validate = shutil.which("kubernetes-validate") or str(Path(__file__).resolve().parents[2] / ".venv/bin/"
                                                            "kubernetes-validate")
    s = settings() if variant == "defaults" else settings(
        {"platforms": ["linux/amd64", "linux/arm64"], "cache": "registry", "build_secrets": {"npmrc": "npm"},
         "build_args": {"A": "1"}},
        kubernetes={"source_token_secret": "t", "node_selector": {"pool": "builds"},
                    "tolerations": [{"key": "builds", "operator": "Exists", "effect": "NoSchedule"}],
                    "resources": {"requests": {"cpu": "2"}, "limits": {"memory": "8Gi"}}})
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(render(s)))
    result = subprocess.run([validate, "--strict", "-k", "1.32.0", str(path)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" in result.stdout


# --- the init container's script, run for real ----------------------------------------------------------------------
SHELLS = [pytest.param(["busybox", "sh"], id="busybox-ash", marks=pytest.mark.skipif(
    not shutil.which("busybox"), reason="busybox is not installed")), pytest.param(["sh"], id="sh")]


def run_source(shell, workspace: Path, url: str, sha: str, context: str = ".", dockerfile: str = "Dockerfile",
               **extra: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(workspace), "WORKSPACE": str(workspace),
           "SOURCE_URL": url, "SOURCE_SHA": sha, "SOURCE_CONTEXT": context, "SOURCE_DOCKERFILE": dockerfile,
           "GIT_CONFIG_NOSYSTEM": "1", **extra}
    return subprocess.run([*shell, "-c", J.SOURCE_SCRIPT], env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def remote(tmp_path) -> tuple[GitRepo, str, str]:
    (tmp_path / "git").mkdir()
    repo = GitRepo(tmp_path / "git")
    first = repo.commit({"Dockerfile": "FROM scratch\n", "app/marker.txt": "first\n"}, "first")
    second = repo.commit({"app/marker.txt": "second\n"}, "second")
    return repo, first, second


@pytest.mark.parametrize("shell", SHELLS)
def test_source_script_checks_out_the_planned_commit_not_the_branch_head(tmp_path, remote, shell):
    repo, first, _second = remote
    workspace = tmp_path / "ws"
    workspace.mkdir()
    result = run_source(shell, workspace, repo.url, first)
    assert result.returncode == 0, result.stderr
    assert (workspace / "src/app/marker.txt").read_text() == "first\n"
    assert not (workspace / "src/.git").exists()  # the context is the tree only, as a GitHub tarball is
    assert f"the source of {first} is ready" in result.stdout


@pytest.mark.parametrize("shell", SHELLS)
def test_source_script_falls_back_to_a_full_fetch_when_the_remote_refuses_a_sha(tmp_path, remote, shell):
    repo, first, _second = remote
    workspace = tmp_path / "ws"
    workspace.mkdir()
    # Protocol v0 refuses a want that is not a ref tip, as some servers do.
    result = run_source(shell, workspace, repo.url, first, GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0="protocol.version",
                        GIT_CONFIG_VALUE_0="0")
    assert result.returncode == 0, result.stderr
    assert "fetching its branches and tags instead" in result.stdout
    assert (workspace / "src/app/marker.txt").read_text() == "first\n"


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize(("case", "message"), [
    ("unknown-commit", "is on no branch or tag of"),
    ("no-dockerfile", "there is no docker/Dockerfile at this commit"),
    ("no-context", "the build context missing is not a directory at this commit"),
    ("symlink-out", "leads outside the repository"),
])
def test_source_script_refuses(tmp_path, remote, shell, case, message):
    repo, first, _second = remote
    workspace = tmp_path / "ws"
    workspace.mkdir()
    kwargs: dict = {}
    sha = first
    if case == "unknown-commit":
        sha = "f" * 40
        kwargs = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "protocol.version", "GIT_CONFIG_VALUE_0": "0"}
    elif case == "no-dockerfile":
        kwargs = {"dockerfile": "docker/Dockerfile"}
    elif case == "no-context":
        kwargs = {"context": "missing"}
    else:
        (tmp_path / "outside").mkdir()
        (tmp_path / "outside/Dockerfile").write_text("FROM scratch\n")
        (repo.work / "ctx").symlink_to(tmp_path / "outside")
        sha = repo.commit({}, "a symlink out of the tree")
        kwargs = {"context": "ctx"}
    result = run_source(shell, workspace, repo.url, sha, **kwargs)
    assert result.returncode != 0
    assert message in result.stderr


def test_source_script_sends_the_token_as_a_header_and_never_prints_it(tmp_path, remote):
    repo, first, _second = remote
    token = "ghs_secret-token-value-123"
    served = tmp_path / "served"
    served.mkdir()
    git("clone", "-q", "--bare", str(repo.remote), str(served / "web.git"), cwd=tmp_path)
    with AuthGitServer(served, "x-access-token", token) as server:
        workspace = tmp_path / "ws"
        workspace.mkdir()
        denied = run_source(["sh"], workspace, server.url("web.git"), first)
        assert denied.returncode != 0
        workspace2 = tmp_path / "ws2"
        workspace2.mkdir()
        result = run_source(["sh"], workspace2, server.url("web.git"), first, SOURCE_TOKEN=token)
    assert result.returncode == 0, result.stderr
    assert (workspace2 / "src/app/marker.txt").read_text() == "first\n"
    assert server.expected in server.authorizations
    assert token not in result.stdout + result.stderr
