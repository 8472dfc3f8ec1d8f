"""The registry and ChartMuseum on S3, as dss/ configures them: proven against a real S3-compatible server.

A moto server on loopback stands in for SeaweedFS. Debian's docker-registry (the same distribution 2.8 the
twuni chart's image runs) gets exactly the storage settings that dss/values-docker-registry.yaml gives the chart,
turned into config and environment the way the chart's templates do, with only the endpoint pointed at loopback.
An image is pushed through it by the real Docker engine and read back, blob by blob, from the registry and from
the bucket. ChartMuseum's settings are checked against the keys ChartMuseum documents and used, with the same
client settings ChartMuseum's S3 backend applies, against the same server.
"""

from __future__ import annotations

import copy
import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
import yaml
from deploy_helpers import DSS_DIR, unavailable

REGISTRY_VALUES = DSS_DIR / "values-docker-registry.yaml"
CHARTMUSEUM_VALUES = DSS_DIR / "values-chartmuseum.yaml"
SEAWEEDFS_VALUES = DSS_DIR / "values-seaweedfs.yaml"

# The twuni chart's own configData defaults (its values.yaml) that matter here; the DSS's configData merges in.
CHART_CONFIG_DEFAULTS = {
    "version": 0.1,
    "storage": {"cache": {"blobdescriptor": "inmemory"}},
    "http": {"addr": ":5000"},
}

# ChartMuseum's documented settings (its config keys, as environment variables) for the amazon backend, plus the
# standard AWS credential variables its S3 client reads, and the general settings the DSS uses.
CHARTMUSEUM_AMAZON_KEYS = {
    "STORAGE", "STORAGE_AMAZON_BUCKET", "STORAGE_AMAZON_PREFIX", "STORAGE_AMAZON_REGION", "STORAGE_AMAZON_ENDPOINT",
    "STORAGE_AMAZON_SSE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_INSECURE_SKIP_VERIFY",
}
CHARTMUSEUM_GENERAL_KEYS = {
    "DISABLE_API", "ALLOW_OVERWRITE", "AUTH_ANONYMOUS_GET", "BASIC_AUTH_USER", "BASIC_AUTH_PASS", "DEBUG",
    "LOG_JSON", "DISABLE_STATEFILES", "CHART_URL", "DEPTH", "CONTEXT_PATH", "STORAGE_LOCAL_ROOTDIR",
}

LAYER_BYTES = 34 << 20  # above the 10 MiB part size and the 32 MiB multipart-copy threshold


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _merge(base: dict, over: dict) -> dict:
    """Helm's merge of values maps: `over` wins, maps merge key by key."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def registry_storage_env(values: dict, access_key: str, secret_key: str, endpoint: str) -> dict[str, str]:
    """The REGISTRY_STORAGE_* variables the twuni chart's `docker-registry.envs` renders for `storage: s3`,
    with the Secret's keys filled in and the endpoint replaced."""
    assert values["storage"] == "s3", "the DSS registry is meant to store in S3"
    s3 = values["s3"]
    env = {"REGISTRY_STORAGE_S3_REGION": str(s3["region"]), "REGISTRY_STORAGE_S3_BUCKET": str(s3["bucket"])}
    if values.get("secrets", {}).get("s3", {}).get("secretRef"):
        env["REGISTRY_STORAGE_S3_ACCESSKEY"] = access_key
        env["REGISTRY_STORAGE_S3_SECRETKEY"] = secret_key
    if s3.get("regionEndpoint"):
        env["REGISTRY_STORAGE_S3_REGIONENDPOINT"] = endpoint
    for key in ("rootdirectory", "encrypt", "secure"):
        if s3.get(key):  # the chart renders these only when truthy
            env[f"REGISTRY_STORAGE_S3_{key.upper()}"] = str(s3[key]).lower()
    if values.get("persistence", {}).get("deleteEnabled"):
        env["REGISTRY_STORAGE_DELETE_ENABLED"] = "true"
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, what: str, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout  # a safety net only
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            requests.get(url, timeout=2)
            return
        except requests.ConnectionError:
            time.sleep(0.2)
    pytest.fail(f"{what} did not answer at {url}:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=20)


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str = "cd-test-access"
    secret_key: str = "cd-test-secret-key"

    def client(self, region: str, path_style: bool = True):
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=region, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path" if path_style else "auto"}),
        )


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    try:
        import moto.server  # noqa: F401
    except ImportError:
        unavailable("moto[server] is not installed (the test extra brings it)")
    port = _free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_http(f"http://127.0.0.1:{port}/", proc, "moto server", log)
        yield S3Server(f"http://127.0.0.1:{port}")
    finally:
        _stop(proc)


def _buckets_created_at_install() -> set[str]:
    return {b["name"] for b in _load(SEAWEEDFS_VALUES)["allInOne"]["s3"]["createBuckets"]}


def _make_bucket(server: S3Server, name: str, region: str) -> None:
    # What the SeaweedFS chart's post-install hook does for each of createBuckets.
    assert name in _buckets_created_at_install(), f"bucket {name} is not created at install"
    server.client(region).create_bucket(Bucket=name)


@pytest.fixture
def s3_registry(s3_server, tmp_path) -> Iterator[str]:
    """Debian's docker-registry on loopback, storing in S3 exactly as dss/values-docker-registry.yaml says."""
    if not Path("/usr/bin/docker-registry").exists():
        unavailable("Debian's docker-registry is not installed (scripts/lib/engine.sh installs it as root)")
    values = _load(REGISTRY_VALUES)
    _make_bucket(s3_server, values["s3"]["bucket"], values["s3"]["region"])
    config = _merge(CHART_CONFIG_DEFAULTS, values.get("configData") or {})
    config.setdefault("log", {})["level"] = "warn"
    (tmp_path / "config.yml").write_text(yaml.safe_dump(config))
    port = _free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "REGISTRY_HTTP_ADDR": f"127.0.0.1:{port}",
        **registry_storage_env(values, s3_server.access_key, s3_server.secret_key, s3_server.endpoint),
    }
    log = tmp_path / "registry.log"
    with log.open("w") as out:
        proc = subprocess.Popen(["/usr/bin/docker-registry", "serve", str(tmp_path / "config.yml")],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_http(f"http://127.0.0.1:{port}/v2/", proc, "docker-registry", log)
        yield f"127.0.0.1:{port}"
    finally:
        _stop(proc)


def test_registry_values_keep_storage_in_s3_over_plain_http_with_path_style():
    values = _load(REGISTRY_VALUES)
    assert values["storage"] == "s3"
    s3 = values["s3"]
    driver = values["configData"]["storage"]["s3"]
    assert urlsplit(s3["regionEndpoint"]).scheme == "http" and driver["secure"] is False
    assert driver["forcepathstyle"] is True
    # S3 refuses parts under 5 MiB (but the last); the registry's own minimum is the same.
    assert driver["chunksize"] >= 5 << 20
    assert values["secrets"]["s3"]["secretRef"]
    assert "accessKey" not in values["secrets"]["s3"] and "secretKey" not in values["secrets"]["s3"]
    assert s3["bucket"] in _buckets_created_at_install()


def test_registry_and_chartmuseum_point_at_the_seaweedfs_service():
    common = _load(DSS_DIR / "common.yaml")
    namespace = common["apps"]["seaweedfs"]["namespace"]
    port = _load(SEAWEEDFS_VALUES)["allInOne"]["s3"]["port"]
    # The chart names the all-in-one Service <fullname>-all-in-one; the release (app) is `seaweedfs`.
    expected = f"http://seaweedfs-all-in-one.{namespace}.svc:{port}"
    assert _load(REGISTRY_VALUES)["s3"]["regionEndpoint"] == expected
    assert _load(CHARTMUSEUM_VALUES)["env"]["open"]["STORAGE_AMAZON_ENDPOINT"] == expected


def test_chartmuseum_env_uses_only_documented_keys_and_everything_amazon_needs():
    env = _load(CHARTMUSEUM_VALUES)["env"]
    names = set(env["open"]) | set(env["existingSecretMappings"])
    unknown = names - CHARTMUSEUM_AMAZON_KEYS - CHARTMUSEUM_GENERAL_KEYS
    assert not unknown, f"not ChartMuseum settings: {sorted(unknown)}"
    assert env["open"]["STORAGE"] == "amazon"
    for key in ("STORAGE_AMAZON_BUCKET", "STORAGE_AMAZON_REGION", "STORAGE_AMAZON_ENDPOINT"):
        assert env["open"].get(key), key
    # Credentials only through the Secret, never in values.
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(env["existingSecretMappings"])
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(env["open"])
    assert env["open"]["STORAGE_AMAZON_BUCKET"] in _buckets_created_at_install()


def test_chartmuseum_settings_store_and_list_a_chart_on_s3(s3_server):
    """ChartMuseum's S3 backend forces path style when an endpoint is set and lists the bucket under its prefix:
    the same client settings, from the values, put a chart and find it again."""
    env = _load(CHARTMUSEUM_VALUES)["env"]["open"]
    bucket, region, prefix = env["STORAGE_AMAZON_BUCKET"], env["STORAGE_AMAZON_REGION"], env["STORAGE_AMAZON_PREFIX"]
    _make_bucket(s3_server, bucket, region)
    client = s3_server.client(region, path_style=True)
    key = "/".join(p for p in (prefix.strip("/"), "web-1.4.2.tgz") if p)
    client.put_object(Bucket=bucket, Key=key, Body=b"not really a chart")
    listed = client.list_objects(Bucket=bucket, Prefix=prefix.strip("/"))
    assert [o["Key"] for o in listed.get("Contents", [])] == [key]
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"not really a chart"


@pytest.mark.engine
@pytest.mark.timeout(600)
def test_image_pushed_to_the_s3_registry_reads_back_from_registry_and_bucket(docker_client, base_image, s3_registry,
                                                                            s3_server):
    values = _load(REGISTRY_VALUES)
    name = f"cd-test/s3-{uuid.uuid4().hex[:10]}"
    ref = f"{s3_registry}/{name}:v1"
    with tempfile.TemporaryDirectory() as ctx:
        # Random bytes do not compress: the layer stays above the part size and the multipart-copy threshold.
        (Path(ctx) / "blob.bin").write_bytes(os.urandom(LAYER_BYTES))
        (Path(ctx) / "Dockerfile").write_text(f"FROM {base_image}\nCOPY blob.bin /blob.bin\n")
        docker_client.images.build(path=ctx, tag=ref, rm=True, forcerm=True)
    try:
        errors = [c for c in docker_client.images.push(f"{s3_registry}/{name}", tag="v1", stream=True, decode=True)
                  if "error" in c or "errorDetail" in c]
        assert not errors, f"push failed: {errors}"

        accept = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json"
        r = requests.get(f"http://{s3_registry}/v2/{name}/manifests/v1", headers={"Accept": accept}, timeout=30)
        assert r.status_code == 200, r.text
        manifest = r.json()
        digests = [manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])]
        assert any(layer["size"] > LAYER_BYTES for layer in manifest["layers"])
        for digest in digests:
            blob = requests.get(f"http://{s3_registry}/v2/{name}/blobs/{digest}", timeout=120)
            assert blob.status_code == 200, f"{digest}: {blob.status_code}"
            assert "sha256:" + hashlib.sha256(blob.content).hexdigest() == digest

        # The blobs are in the bucket, where the registry's s3 driver keeps them, not on a local disk.
        client = s3_server.client(values["s3"]["region"])
        root = (values["s3"].get("rootdirectory") or "").strip("/")
        keys = set()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=values["s3"]["bucket"]):
            keys |= {o["Key"] for o in page.get("Contents", [])}
        for digest in digests:
            hexd = digest.split(":", 1)[1]
            data_key = "/".join(p for p in (root, f"docker/registry/v2/blobs/sha256/{hexd[:2]}/{hexd}/data") if p)
            assert data_key in keys, f"{digest} is not in the bucket"
    finally:
        docker_client.images.remove(ref, force=True, noprune=False)
