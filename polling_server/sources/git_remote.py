"""Repository source for any git remote (a URL or a local path): `git ls-remote` of the branch and the tags.

Each poll is a full snapshot, so there is nothing to reconcile. Annotated tags are peeled with the `^{}` lines
ls-remote prints. The remote is given to git as one argv element after --end-of-options; credentials belong in
git's own credential helpers or SSH keys, never in the URL (URLs are logged without userinfo anyway).
"""

from __future__ import annotations

import os
import subprocess

from polling_server.config import RepositorySettings
from polling_server.errors import MalformedResponse, SourceRejected, SourceUnavailable
from polling_server.http import safe_url
from polling_server.planning.model import Observation, RepoState
from polling_server.sources.base import CursorReader, SourcePoll

_GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "/bin/false", "SSH_ASKPASS": "/bin/false",
            "LC_ALL": "C"}


def _display(url: str) -> str:
    return safe_url(url) if "://" in url else url


def parse_ls_remote(output: str, branch: str) -> Observation:
    """Branch head and peeled tag commits from `git ls-remote` output."""
    head = None
    tags: dict[str, str] = {}
    peeled: dict[str, str] = {}
    for line in output.splitlines():
        if not line.strip():
            continue
        sha, _, ref = line.partition("\t")
        if len(sha) not in (40, 64) or not all(c in "0123456789abcdef" for c in sha) or not ref:
            raise MalformedResponse(f"unexpected git ls-remote line: {line[:120]!r}")
        if ref == f"refs/heads/{branch}":
            head = sha
        elif ref.startswith("refs/tags/"):
            name = ref[len("refs/tags/"):]
            if name.endswith("^{}"):
                peeled[name[:-3]] = sha
            else:
                tags[name] = sha
    tags.update({name: sha for name, sha in peeled.items() if name in tags})
    return Observation(branch_checked=True, branch_head=head, tags=tags)


class GitRemoteSource:
    kind = "git"

    def __init__(self, timeout_seconds: float = 60.0):
        self.timeout_seconds = timeout_seconds

    def poll(self, repo: RepositorySettings, cursors: CursorReader, state: RepoState, reconcile: bool) -> SourcePoll:
        url = repo.url or ""
        argv = ["git", "ls-remote", "--end-of-options", url, f"refs/heads/{repo.branch}", "refs/tags/*"]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout_seconds,
                                  env={**os.environ, **_GIT_ENV}, check=False)
        except subprocess.TimeoutExpired as e:
            raise SourceUnavailable(f"git ls-remote {_display(url)}: no answer within {self.timeout_seconds:g}s") from e
        except OSError as e:
            raise SourceUnavailable(f"git ls-remote {_display(url)}: cannot run git ({e.strerror})") from e
        if done.returncode != 0:
            reason = " ".join(done.stderr.strip().splitlines()[-2:])[:300].replace(url, _display(url))
            raise SourceRejected(f"git ls-remote {_display(url)} failed: {reason or f'exit {done.returncode}'}")
        return SourcePoll(parse_ls_remote(done.stdout, repo.branch))
