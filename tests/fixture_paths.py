"""Where the shared real-world fixtures are: `shared/` sits beside this repository's checkout."""

from __future__ import annotations

from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
GITHUB = FIXTURES / "github"
STAKATER = FIXTURES / "helm-index" / "stakater_stakater-charts_docs_index.yaml"
OPENFAAS = FIXTURES / "helm-index" / "openfaas_faas-netes_docs_index.yaml"
ACTIVITI = FIXTURES / "helm-index" / "activiti_empty_index.yaml"
CHARTMUSEUM_EMPTY = FIXTURES / "chartmuseum" / "GET_index.yaml_empty_repo_from_issue566.yaml"
CHARTMUSEUM_401 = FIXTURES / "chartmuseum" / "any_401_unauthorized.json"
