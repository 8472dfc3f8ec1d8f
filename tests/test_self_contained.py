"""The repository is self-contained: tests, benchmarks and scripts read nothing from a `shared` folder beside it.

The fixtures used to live in a `shared` folder beside the checkout, so a fresh clone could not run its tests.
They are now in `tests/fixtures/`; this guard fails if a reference to the old place comes back.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests import fixture_paths

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("tests", "benchmarks", "scripts")

# Ways a path can reach the `shared` folder: relative to the parent directory (as a string or an os.path.join of
# its parts), a pathlib join onto it, or the old location's name with its `fixtures` (absolute or relative). The
# repository has no `shared` folder of its own, so any of these points outside it.
_OUTSIDE = re.compile(
    r"""\.\.[/\\]+shared\b"""
    r"""|["']\.\.["']\s*,\s*["']shared["']"""
    r"""|/\s*["']shared["']"""
    r"""|\bshared[/\\]+fixtures\b"""
)

# Built from pieces so that this file does not contain what it looks for.
_UP = ".."
_NAME = "shared"


def references_outside(text: str) -> list[str]:
    """The lines of `text` that reference a `shared` folder outside the repository."""
    return [line.strip() for line in text.splitlines() if _OUTSIDE.search(line)]


@pytest.mark.parametrize("line", [
    f'FIXTURES = Path(__file__).resolve().parents[2] / "{_NAME}" / "fixtures"',
    f"INDEX = Path(__file__).parents[2] / '{_NAME}' / 'fixtures' / 'helm-index'",
    f'path = os.path.join(ROOT, "{_UP}", "{_NAME}", "fixtures")',
    f'cp -r "$ROOT/{_UP}/{_NAME}" /tmp/x',
    f"open('{_UP}\\{_NAME}\\fixtures\\a.json')",
    f'"""Helpers from the real payloads in {_NAME}/fixtures/github."""',
    f"FIX=/work/{_NAME}/fixtures",
], ids=["pathlib", "pathlib quoted", "os.path.join", "shell", "windows", "prose", "absolute"])
def test_the_scanner_finds_a_reference_to_the_outside_folder(line):
    assert references_outside(f"first line\n{line}\nlast line\n") == [line]


@pytest.mark.parametrize("line", [
    "# The token shared by helm-api (checks it) and polling-server (sends it).",
    "FIXTURES = Path(__file__).resolve().parent / 'fixtures'",
    'conn = sqlite3.connect("file::memory:?cache=shared", uri=True)',
    "shared_secret = settings.webhook_secret",
    "a unix socket in a shared emptyDir",
], ids=["comment", "inside the repository", "sqlite uri", "identifier", "prose"])
def test_the_scanner_leaves_other_uses_of_the_word_alone(line):
    assert references_outside(line) == []


def test_no_file_in_tests_benchmarks_or_scripts_reads_outside_the_repository():
    found = []
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*")):
            if not path.is_file() or "__pycache__" in path.parts:
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue  # binary: not code that names a path
            found += [f"{path.relative_to(ROOT)}: {line}" for line in references_outside(text)]
    assert found == [], "references to a folder outside the repository:\n" + "\n".join(found)


def test_the_fixture_paths_are_inside_the_repository_and_exist():
    paths = {name: value for name, value in vars(fixture_paths).items() if isinstance(value, Path)}
    assert paths, "tests/fixture_paths.py names no fixture path"
    for name, path in paths.items():
        assert path.resolve().is_relative_to(ROOT / "tests" / "fixtures"), name
        assert path.exists(), f"{name}: {path} is missing"


def test_the_benchmarks_read_their_fixtures_from_the_repository():
    from benchmarks import chart_index, github_fake

    for path in (chart_index.INDEX, github_fake.FIXTURES):
        assert path.resolve().is_relative_to(ROOT / "tests" / "fixtures")
        assert path.exists(), path
