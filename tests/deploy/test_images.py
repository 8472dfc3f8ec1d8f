"""Dockerfile.poller and Dockerfile.helmapi build with the real Docker engine and their containers start.

Nothing can be pulled from Docker Hub, so the base image is made here: a Debian bookworm root filesystem
(debootstrap, with python3, venv, pip and git), cached as a tarball under .work/cache, imported into the engine,
plus this machine's CA bundle so pip trusts the same TLS roots as the host does.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests
import yaml
from deploy_helpers import REPO_ROOT, find, render, unavailable

pytestmark = [pytest.mark.slow, pytest.mark.engine, pytest.mark.timeout(1200)]

BASE_TARBALL = REPO_ROOT / ".work" / "cache" / "python-base-bookworm.tar"
BASE_IMPORTED = "local/python-base:bookworm"
BASE_IMAGE = "local/python-base:test"
DEBOOTSTRAP_PACKAGES = "python3,python3-venv,python3-pip,git,ca-certificates,passwd"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def _debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 sources first), else deb.debian.org."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        text = path.read_text()
        if "Suites: bookworm" in text and "security" not in path.name:
            for line in text.splitlines():
                if line.startswith("URIs:") and "/debian" in line and "security" not in line:
                    return line.split()[1]
    return "http://deb.debian.org/debian"


def _make_base_tarball() -> None:
    if os.geteuid() != 0:
        unavailable("building the base image's root filesystem needs root (debootstrap)")
    if not shutil.which("debootstrap"):
        subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=300", "debootstrap"],
            check=True,
            capture_output=True,
        )
    BASE_TARBALL.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=BASE_TARBALL.parent) as tmp:
        root = Path(tmp) / "root"
        subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={DEBOOTSTRAP_PACKAGES}", "bookworm", str(root)]
            + [_debian_mirror()],
            check=True,
            capture_output=True,
            timeout=900,
        )
        for leftovers in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man"):
            for item in (root / leftovers).glob("*"):
                if item.is_symlink() or item.is_file():
                    item.unlink()
                elif item.is_dir() and leftovers != "var/cache/apt/archives":
                    shutil.rmtree(item)
        partial = BASE_TARBALL.with_suffix(".partial")
        subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(partial), "."], check=True)
        partial.replace(BASE_TARBALL)


@pytest.fixture(scope="module")
def python_base_image(docker_client) -> str:
    import docker.errors

    try:
        docker_client.images.get(BASE_IMAGE)
        return BASE_IMAGE
    except docker.errors.ImageNotFound:
        pass
    if not BASE_TARBALL.is_file():
        _make_base_tarball()
    docker_client.api.import_image_from_file(str(BASE_TARBALL), repository="local/python-base", tag="bookworm")
    with tempfile.TemporaryDirectory() as ctx:
        lines = [f"FROM {BASE_IMPORTED}"]
        if HOST_CA_BUNDLE.is_file():
            shutil.copy(HOST_CA_BUNDLE, Path(ctx) / "ca-certificates.crt")
            lines.append("COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt")
        (Path(ctx) / "Dockerfile").write_text("\n".join(lines) + "\n")
        docker_client.images.build(path=ctx, tag=BASE_IMAGE, rm=True)
    return BASE_IMAGE


def _build(docker_client, dockerfile: str, tag: str, base: str):
    import docker.errors

    try:
        image, _ = docker_client.images.build(
            path=str(REPO_ROOT),
            dockerfile=dockerfile,
            tag=tag,
            buildargs={"BASE_IMAGE": base, "VERSION": "0.0.0-test", "REVISION": "test"},
            network_mode="host",  # the engine may run with --bridge=none: RUN steps reach PyPI this way
            rm=True,
            forcerm=True,
            timeout=900,
        )
    except docker.errors.BuildError as e:
        log = "".join(chunk.get("stream", "") or chunk.get("error", "") for chunk in e.build_log)
        pytest.fail(f"{dockerfile} failed to build: {e.msg}\n{log[-4000:]}")
    return image


def _assert_image_metadata(image, title: str) -> None:
    config = image.attrs["Config"]
    assert config["User"] not in ("", "0", "root", "0:0"), "image must not run as root"
    assert config["Healthcheck"]["Test"][0] in ("CMD", "CMD-SHELL")
    labels = config["Labels"]
    assert labels["org.opencontainers.image.title"] == title
    assert labels["org.opencontainers.image.version"] == "0.0.0-test"
    assert labels["org.opencontainers.image.revision"] == "test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_poller_image_builds_and_starts(docker_client, python_base_image):
    image = _build(docker_client, "Dockerfile.poller", "local/polling-server:test", python_base_image)
    _assert_image_metadata(image, "polling-server")
    out = docker_client.containers.run(image.id, ["run", "--help"], remove=True, network_mode="none")
    assert b"--config" in out
    git = docker_client.containers.run(image.id, ["--version"], entrypoint="git", remove=True, network_mode="none")
    assert git.startswith(b"git version")
    # The daemon as the image runs it serves the status page's static files: they ship in the wheel.
    port = _free_port()
    config_dir = Path(tempfile.mkdtemp(prefix="poller-image-"))
    config_dir.chmod(0o755)
    (config_dir / "config.yaml").write_text(yaml.safe_dump({
        "state_path": "/tmp/state.db", "http": {"host": "127.0.0.1", "port": port}, "repositories": []}))
    (config_dir / "config.yaml").chmod(0o644)
    container = docker_client.containers.run(
        image.id, ["--config", "/config/config.yaml"], detach=True, network_mode="host",
        volumes={str(config_dir): {"bind": "/config", "mode": "ro"}})
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                asset = requests.get(f"http://127.0.0.1:{port}/assets/status.js", timeout=2)
                if asset.status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, container.logs()[-2000:]
            time.sleep(0.3)
        assert "javascript" in asset.headers["Content-Type"] and len(asset.text) > 100
        assert requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
    finally:
        container.remove(force=True)
        shutil.rmtree(config_dir, ignore_errors=True)


def test_helm_api_image_builds_and_answers_healthz(docker_client, python_base_image):
    image = _build(docker_client, "Dockerfile.helmapi", "local/helm-api:test", python_base_image)
    _assert_image_metadata(image, "helm-api")
    # The image runs the documented command, which serves with waitress (never a development server).
    assert image.attrs["Config"]["Cmd"] == ["helm-api", "--host", "0.0.0.0", "--port", "8080"]
    port = _free_port()
    # Offline mode: the API reads the CronJob (rendered from our chart) from a file instead of a cluster.
    (cronjob,) = find(render("helmsman-cronjob", release="helmsman-cronjob"), "CronJob")
    offline_dir = Path(tempfile.mkdtemp(prefix="helm-api-offline-"))
    offline_dir.chmod(0o755)
    (offline_dir / "cronjob.yaml").write_text(yaml.safe_dump(cronjob))
    (offline_dir / "cronjob.yaml").chmod(0o644)
    container = docker_client.containers.run(
        image.id,
        ["helm-api", "--host", "127.0.0.1", "--port", str(port)],
        detach=True,
        network_mode="host",
        environment={
            "HELM_API_TOKEN": "test-token",
            "HELM_API_NAMESPACE": "default",
            "HELM_API_OFFLINE_CRONJOB_FILE": "/offline/cronjob.yaml",
        },
        volumes={str(offline_dir): {"bind": "/offline", "mode": "ro"}},
    )
    try:
        deadline = time.monotonic() + 60
        last = None
        response = None
        while time.monotonic() < deadline:
            try:
                response = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                if response.status_code == 200:
                    break
                last = response.status_code
            except requests.ConnectionError as e:
                last = e
            container.reload()
            if container.status == "exited":
                break
            time.sleep(0.5)
        logs = container.logs().decode(errors="replace")[-3000:]
        assert response is not None and response.status_code == 200, f"/healthz never answered 200 ({last}):\n{logs}"
    finally:
        container.remove(force=True)
        shutil.rmtree(offline_dir, ignore_errors=True)
