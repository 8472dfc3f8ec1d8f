"""Every command the README shows is true: shell syntax checked, our own CLIs' arguments parsed by the real
parsers, each local command exercised by a test, and only known cluster tools left to syntax alone.

The README is read as it is now, so a renamed flag, a new subcommand without a test, or a block that is not valid
shell fails here. Cluster commands (kubectl, helmsman, ...) cannot run on this machine: they are checked for shell
syntax, and the `polling-server` commands they run inside a pod are parsed like the local ones.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = [b for lang, b in re.findall(r"```(sh|bash|shell)\n(.*?)```", README, re.S)]
TESTS_TEXT = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("*.py") if p.name != Path(__file__).name)

# Programs that only make sense against a cluster (or that only prepare values for one): shell syntax only.
CLUSTER = {"kubectl", "helmsman", "openssl", "htpasswd", "cd"}
# Local programs, and the test files that run them for real.
LOCAL = {
    "scripts/demo": ["tests/e2e/test_e2e_demo.py"],
    "scripts/test": [".ci/run"],
    "polling-server": ["tests/poller/test_cli.py"],
    "helm-api": ["tests/helm_api/test_helm_api_server.py"],
    "helm": ["tests/deploy/test_charts.py"],
    "docker": ["tests/deploy/test_images.py"],
    "curl": [],  # checked by path below
    "export": [],
    "for": [], "done": [], "do": [],
}


def commands() -> list[list[str]]:
    """Every simple command of every shell block (continuations joined, comments and assignments dropped)."""
    found = []
    for block in BLOCKS:
        text = re.sub(r"\\\n\s*", " ", block)
        for line in text.splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
            lexer.whitespace_split = True
            words: list[str] = []
            for token in [*lexer, ";"]:
                if token in (";", "&", "&&", "|", "||"):
                    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
                        words = words[1:]  # VAR=value before the program
                    if words:
                        found.append(words)
                    words = []
                else:
                    words.append(token)
    return found


def _strip_optional(words: list[str]) -> list[str]:
    """`[--tag staging]` in a usage line: take the option as given."""
    return [w.strip("[]") for w in words if w.strip("[]")]


def test_every_block_is_valid_shell():
    for block in BLOCKS:
        done = subprocess.run(["bash", "-n"], input=block, text=True, capture_output=True)
        assert done.returncode == 0, f"not valid shell:\n{block}\n{done.stderr}"


def test_every_program_is_known_and_local_ones_are_run_by_a_test():
    for words in commands():
        program = words[0]
        if program in CLUSTER or program.startswith("--") or program.startswith("-"):
            continue  # a continuation line of a cluster command, or a cluster tool
        assert program in LOCAL, f"README runs {program!r}: add a test that runs it, or list it as a cluster tool"
        for path in LOCAL[program]:
            text = (ROOT / path).read_text()
            assert program.split("/")[-1] in text or program in text, f"{path} does not run {program}"


def _polling_server_argvs() -> list[list[str]]:
    argvs = []
    for words in commands():
        if "polling-server" in words:
            rest = words[words.index("polling-server") + 1:]
            if words[0] in ("polling-server", "kubectl"):
                argvs.append(_strip_optional(rest))
    return argvs


def test_polling_server_commands_parse_and_each_subcommand_is_tested():
    from polling_server.cli import COMMANDS, _normalise, _parser

    argvs = _polling_server_argvs()
    assert argvs, "the README shows no polling-server command?"
    tested = set(re.findall(r'(?:main\(\[|run\(|cli\()\s*"([a-z-]+)"', TESTS_TEXT))
    tested |= {"run"} if re.search(r'(?:main\(\[|run\(|cli\()\s*"--config"', TESTS_TEXT) else set()
    for argv in argvs:
        argv = [a if a != "..." else "x" for a in argv]
        if argv == ["--version"]:
            continue
        args = _parser().parse_args(_normalise(argv))
        assert args.command in COMMANDS
        assert args.command in tested, f"no test runs `polling-server {args.command}`"


def test_helm_api_commands_parse():
    from helm_api.cli import parse_args

    shown = [w for w in commands() if w[0] == "helm-api"]
    assert shown, "the README shows no helm-api command?"
    for words in shown:
        if words[1:] != ["--version"]:
            parse_args(_strip_optional(words[1:]))


@pytest.mark.parametrize("path", sorted({m for block in BLOCKS
                                         for m in re.findall(r'curl [^\n]*?"?\$[A-Z_]+(/[a-z/_-]*)', block)}))
def test_every_endpoint_the_readme_curls_is_requested_by_a_test(path):
    stem = "/" + path.strip("/").split("/")[0]
    assert f'{stem}"' in TESTS_TEXT or f"{stem}/" in TESTS_TEXT or f"{stem}?" in TESTS_TEXT, \
        f"no test requests {stem} (README: curl ...{path})"
