"""Shared pytest fixtures: the real Docker engine, the loopback registries and a busybox base image.

The engine and registries are started by scripts/test (scripts/lib/engine.sh), which exports DOCKER_HOST,
CD_REGISTRY, CD_AUTH_REGISTRY, CD_AUTH_REGISTRY_USER and CD_AUTH_REGISTRY_PASSWORD. When they are missing, tests
that need them are skipped on a developer machine and fail under CI=true: CI must prove the real thing.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

IN_CI = os.environ.get("CI") == "true"
BASE_IMAGE = "local/busybox-base:1"
BUSYBOX_APPLETS = ("sh", "ls", "cat", "echo", "true", "false", "mkdir", "cp", "rm", "sleep", "test", "wget", "env")


def _unavailable(reason: str):
    if IN_CI:
        pytest.fail(f"CI=true and {reason}: engine tests must run in CI, not skip", pytrace=False)
    pytest.skip(reason)


@dataclass(frozen=True)
class Registry:
    """A loopback registry: `host` is host:port, as used in image references."""

    host: str
    username: str | None = None
    password: str | None = None

    @property
    def auth(self) -> tuple[str, str] | None:
        return (self.username, self.password) if self.username else None

    def tags(self, name: str) -> list[str]:
        r = requests.get(f"http://{self.host}/v2/{name}/tags/list", auth=self.auth, timeout=10)
        if r.status_code == 404:
            return []
        r.raise_for_status()
        return sorted(r.json().get("tags") or [])

    def manifest(self, name: str, tag: str) -> tuple[str, dict]:
        """Return (Docker-Content-Digest, manifest) of name:tag."""
        r = requests.get(
            f"http://{self.host}/v2/{name}/manifests/{tag}",
            auth=self.auth,
            timeout=10,
            headers={
                "Accept": "application/vnd.docker.distribution.manifest.v2+json, "
                "application/vnd.oci.image.manifest.v1+json"
            },
        )
        r.raise_for_status()
        return r.headers["Docker-Content-Digest"], r.json()

    def labels(self, name: str, tag: str) -> dict[str, str]:
        """The image config's labels of name:tag, read from the registry's blob store."""
        _, manifest = self.manifest(name, tag)
        digest = manifest["config"]["digest"]
        r = requests.get(f"http://{self.host}/v2/{name}/blobs/{digest}", auth=self.auth, timeout=10)
        r.raise_for_status()
        return (r.json().get("config") or {}).get("Labels") or {}


@pytest.fixture(scope="session")
def docker_client():
    if not os.environ.get("DOCKER_HOST"):
        _unavailable("DOCKER_HOST is not set (run the tests through scripts/test)")
    import docker

    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except Exception as e:  # noqa: BLE001 - any failure means: no engine
        _unavailable(f"the Docker engine at {os.environ['DOCKER_HOST']} does not answer: {e}")
    yield client
    client.close()


@pytest.fixture(scope="session")
def registry() -> Registry:
    host = os.environ.get("CD_REGISTRY")
    if not host:
        _unavailable("CD_REGISTRY is not set (run the tests through scripts/test)")
    return Registry(host)


@pytest.fixture(scope="session")
def registry_url(registry: Registry) -> str:
    return registry.host


@pytest.fixture(scope="session")
def auth_registry() -> Registry:
    host = os.environ.get("CD_AUTH_REGISTRY")
    if not host:
        _unavailable("CD_AUTH_REGISTRY is not set (run the tests through scripts/test)")
    return Registry(host, os.environ["CD_AUTH_REGISTRY_USER"], os.environ["CD_AUTH_REGISTRY_PASSWORD"])


def _busybox_binary() -> Path:
    out = subprocess.run(["dpkg", "-L", "busybox-static"], capture_output=True, text=True, check=False).stdout
    for line in out.splitlines():
        if line.endswith("/bin/busybox"):
            return Path(line)
    _unavailable("Debian's busybox-static is not installed (scripts/test installs it as root)")
    raise AssertionError("unreachable")


def busybox_rootfs_tar() -> bytes:
    """A root filesystem holding a static busybox and symlinks for its common applets, as a tar."""
    binary = _busybox_binary().read_bytes()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "tmp", "etc", "app"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        info = tarfile.TarInfo("bin/busybox")
        info.size = len(binary)
        info.mode = 0o755
        tar.addfile(info, io.BytesIO(binary))
        for applet in BUSYBOX_APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
    return buf.getvalue()


@pytest.fixture(scope="session")
def base_image(docker_client) -> str:
    """`local/busybox-base:1`, imported from Debian's busybox-static (nothing can be pulled)."""
    import docker.errors

    try:
        docker_client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        docker_client.api.import_image_from_data(
            busybox_rootfs_tar(), repository=BASE_IMAGE.split(":")[0], tag=BASE_IMAGE.split(":")[1]
        )
    return BASE_IMAGE
