"""End to end: the README's main-job scenario (scripts/demo --once), asserted from the registry and the Helm API.

Real processes (polling-server, helm-api in offline mode, a static chart server), the real Docker engine and
registry, the real helm CLI. Nothing here reads the poller's log to decide success.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import requests
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
from cd_demo import Demo  # noqa: E402

pytestmark = [pytest.mark.engine, pytest.mark.slow]


@pytest.fixture
def helm_bin():
    # The one way the tests find helm: HELM_BIN, else scripts/get-helm (tests/deploy/deploy_helpers.py).
    from tests.deploy.deploy_helpers import helm_bin as locate_helm

    return locate_helm()


def test_merge_tag_and_chart_push_end_to_end(tmp_path, docker_client, registry, helm_bin):
    lines: list[str] = []
    demo = Demo(tmp_path / "demo", registry.host, helm_bin, out=lines.append)
    try:
        result = demo.run()
        name = result.image
        tags = registry.tags(name)
        # The merge: staging and sha-<12> point to the same image, built from exactly the merged commit.
        staging_sha = result.staging.sha
        assert {"staging", f"sha-{staging_sha[:12]}"} <= set(tags)
        digest, _ = registry.manifest(name, "staging")
        assert registry.manifest(name, f"sha-{staging_sha[:12]}")[0] == digest == result.staging.digest
        assert registry.labels(name, "staging")["org.opencontainers.image.revision"] == staging_sha
        # The tag: 1.0.0 with its floating tags, from the tagged commit.
        assert {"1.0.0", "1.0", "1"} <= set(tags)
        assert registry.labels(name, "1.0.0")["org.opencontainers.image.revision"] == result.release.sha
        assert registry.manifest(name, "1")[0] == registry.manifest(name, "1.0.0")[0] == result.release.digest
        # The chart push: one apply reached the Helm API, which recorded (offline) the Job it would create.
        auth = {"Authorization": f"Bearer {demo.token}"}
        listed = requests.get(f"{demo.api_url}/apply", headers=auth, timeout=10).json()
        assert listed["offline"] is True
        assert [j["job"] for j in listed["jobs"]] == [result.apply["job"]]
        job = yaml.safe_load(result.job_file.read_text())
        assert job["kind"] == "Job" and job["metadata"]["name"] == result.apply["job"]
        assert job["metadata"]["ownerReferences"][0]["kind"] == "CronJob"
        assert "helm-api-0.1.1 (added)" in job["metadata"]["annotations"]["helmsman-cd.io/apply-reason"]
    finally:
        demo.stop()
    # Each step was reported to the person watching.
    assert any(line.endswith("to main") and "merge: pushed" in line for line in lines)
    assert any("(read back from the registry)" in line for line in lines)
