"""Which scheme the poller speaks to the registry: HTTPS, HTTP on loopback, HTTP anywhere with registry.insecure."""

from __future__ import annotations

import pytest
import responses

from polling_server.builds.docker_engine import ImageBuilder
from polling_server.builds.registry import RegistryClient, registry_client_for
from polling_server.config import parse_settings

DIGEST = "sha256:" + "d" * 64


def settings(tmp_path, **registry):
    return parse_settings({"state_path": str(tmp_path / "s.db"), "registry": registry,
                           "repositories": [{"repo": "acme/app", "image": "team/app"}]}, env={})


@pytest.mark.parametrize("host,scheme,expected", [
    ("reg.example.com", None, "https://reg.example.com"),
    ("registry.cd-system.svc:5000", None, "https://registry.cd-system.svc:5000"),
    ("localhost:5000", None, "http://localhost:5000"),
    ("127.0.0.1:5000", None, "http://127.0.0.1:5000"),
    ("registry.cd-system.svc:5000", "http", "http://registry.cd-system.svc:5000"),
])
def test_scheme_choice(host, scheme, expected):
    assert RegistryClient(host, scheme=scheme).base == expected


@pytest.mark.parametrize("insecure,base", [(False, "https://registry.cd-system.svc:5000"),
                                           (True, "http://registry.cd-system.svc:5000")])
def test_the_image_builder_confirms_pushes_with_the_configured_scheme(tmp_path, insecure, base):
    s = settings(tmp_path, host="registry.cd-system.svc:5000", insecure=insecure)
    builder = ImageBuilder(s, docker_factory=lambda: pytest.fail("no engine needed"))
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        rsps.head(f"{base}/v2/team/app/manifests/1.2.3", headers={"Docker-Content-Digest": DIGEST})
        assert builder.registry.manifest_digest("team/app", "1.2.3") == DIGEST
    assert registry_client_for(s).base == base
