"""Where the real-world fixtures are: `tests/fixtures/`, inside the repository (see its SOURCES.md)."""

from __future__ import annotations

from pathlib import Path

FIXTURES = Path(__file__).resolve().parent / "fixtures"
GITHUB = FIXTURES / "github"
STAKATER = FIXTURES / "helm-index" / "stakater_stakater-charts_docs_index.yaml"
OPENFAAS = FIXTURES / "helm-index" / "openfaas_faas-netes_docs_index.yaml"
ACTIVITI = FIXTURES / "helm-index" / "activiti_empty_index.yaml"
CHARTMUSEUM_EMPTY = FIXTURES / "chartmuseum" / "GET_index.yaml_empty_repo_from_issue566.yaml"
CHARTMUSEUM_401 = FIXTURES / "chartmuseum" / "any_401_unauthorized.json"
