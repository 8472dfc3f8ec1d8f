"""The foundation works: a real image is built by the real engine and read back from the real registries."""

from __future__ import annotations

import io
import tarfile
import uuid

import docker.errors
import pytest

pytestmark = pytest.mark.engine


def _context(dockerfile: str) -> io.BytesIO:
    buf = io.BytesIO()
    data = dockerfile.encode()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def test_build_push_and_read_back(docker_client, registry, base_image):
    name = f"foundation/{uuid.uuid4().hex[:8]}"
    ref = f"{registry.host}/{name}"
    image, _ = docker_client.images.build(
        fileobj=_context(f"FROM {base_image}\nRUN echo built > /app/marker\nLABEL purpose=foundation\n"),
        custom_context=True,
        tag=f"{ref}:v1",
        rm=True,
    )
    errors = [line["error"] for line in docker_client.images.push(ref, tag="v1", stream=True, decode=True)
              if "error" in line]
    assert errors == []
    assert registry.tags(name) == ["v1"]
    digest, manifest = registry.manifest(name, "v1")
    assert digest.startswith("sha256:") and len(digest) == 71
    assert registry.labels(name, "v1")["purpose"] == "foundation"
    # The image really runs: the RUN step's file is inside it.
    out = docker_client.containers.run(image.id, ["cat", "/app/marker"], remove=True)
    assert out == b"built\n"


def test_auth_registry_refuses_wrong_password_and_accepts_right_one(docker_client, auth_registry, base_image):
    name = f"foundation/{uuid.uuid4().hex[:8]}"
    ref = f"{auth_registry.host}/{name}"
    docker_client.images.get(base_image).tag(ref, "v1")
    refused = [line for line in docker_client.images.push(
        ref, tag="v1", stream=True, decode=True, auth_config={"username": "ci-user", "password": "wrong"})
        if "error" in line]
    assert refused, "a push with a wrong password must report an error in the stream"
    assert auth_registry.tags(name) == []
    accepted = [line for line in docker_client.images.push(
        ref, tag="v1", stream=True, decode=True,
        auth_config={"username": auth_registry.username, "password": auth_registry.password})
        if "error" in line]
    assert accepted == []
    assert auth_registry.tags(name) == ["v1"]
    docker_client.images.remove(f"{ref}:v1")
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(f"{ref}:v1")
