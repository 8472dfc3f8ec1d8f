"""config/poller.example.yaml documents every key the poller reads (a key the code knows and the example does not
name fails here), and it is itself a valid configuration."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from polling_server import config

EXAMPLE = (Path(__file__).resolve().parents[2] / "config" / "poller.example.yaml").read_text()
# Keys written the way people write them in YAML, where the field holds several (a list of secrets).
YAML_NAME = {"github_secrets": "github_secret", "gitlab_tokens": "gitlab_token", "gitea_secrets": "gitea_secret",
             "charts_tokens": "charts_token"}
INTERNAL = {"source_file"}
SECTIONS = [config.Settings, config.GitHubSettings, config.RegistrySettings, config.BuildSettings,
            config.GitSettings, config.HttpSettings, config.WebhookSettings, config.ChartRepositorySettings,
            config.HelmApiSettings, config.RepositorySettings, config.KubernetesBuildSettings,
            config.NotificationTarget]


@pytest.mark.parametrize("section", SECTIONS, ids=lambda c: c.__name__)
def test_every_key_is_documented_in_the_example(section):
    written = set(re.findall(r"^[\s#-]*([a-z_]+):", EXAMPLE, re.M))
    for f in dataclasses.fields(section):
        if f.name in INTERNAL:
            continue
        key = YAML_NAME.get(f.name, f.name)
        assert key in written, f"{section.__name__}.{f.name}: not in config/poller.example.yaml as `{key}:`"
