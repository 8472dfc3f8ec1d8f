"""Repository source for any git remote (a URL or a local path): `git ls-remote` of the branch and the tags.

Each poll is a full snapshot, so there is nothing to reconcile. Annotated tags are peeled with the `^{}` lines
ls-remote prints. The remote is given to git as one argv element after --end-of-options, with any `user:password@`
moved into an HTTP header (see polling_server.git_process); URLs are logged without userinfo.

The output is read as bytes, as it comes, and bounded: past `git.max_refs` lines the poll fails and git is stopped,
so a huge remote costs neither unbounded memory nor a partial list (which would look like deleted tags). A ref that
cannot be taken as it is (a name that is not UTF-8, the all-zero object id) is skipped with a log line and changes
nothing stored; the rest of the repository is polled.
"""

from __future__ import annotations

import subprocess

from polling_server.config import GitSettings, RepositorySettings
from polling_server.errors import MalformedResponse, SourceError, SourceRejected, SourceUnavailable
from polling_server.git_process import git_auth, git_environment, run_git, scrub
from polling_server.http import safe_url
from polling_server.planning.model import Observation, RepoState
from polling_server.sources.base import CursorReader, SourcePoll

_HEX = frozenset(b"0123456789abcdef")
# pkt-line caps one advertised ref at 65520 bytes, so a longer line is not git's output.
_MAX_LINE_BYTES = 65536
# A remote full of unusable refs gets this many log lines per poll, then one summary.
_MAX_SKIPPED_REPORTED = 20


def _display(url: str) -> str:
    return safe_url(url) if "://" in url else url


class LsRemoteParser:
    """Takes `git ls-remote` output chunk by chunk; `result()` gives the branch head and the peeled tag commits.

    `max_refs` bounds the lines taken (one per branch or tag, one more per annotated tag's peeled commit); past
    it `feed` raises SourceError. `stored_tags` are the tags as last saved: a skipped tag keeps its stored commit.
    """

    def __init__(self, branch: str, max_refs: int | None = None, stored_tags: dict[str, str] | None = None):
        self.branch_ref = f"refs/heads/{branch}".encode()
        self.max_refs = max_refs
        self.stored_tags = stored_tags or {}
        self.lines = 0
        self.head: str | None = None
        self.head_skipped = False
        self.tags: dict[str, str] = {}
        self.peeled: dict[str, str] = {}
        self.bad_tags: set[str] = set()
        self.skipped: list[str] = []
        self._partial = b""

    def feed(self, chunk: bytes) -> None:
        data = self._partial + chunk
        *lines, self._partial = data.split(b"\n")
        if len(self._partial) > _MAX_LINE_BYTES:
            raise MalformedResponse(f"git ls-remote printed a line longer than {_MAX_LINE_BYTES} bytes")
        for line in lines:
            self._line(line)

    def _skip(self, why: str) -> None:
        self.skipped.append(why)

    def _line(self, line: bytes) -> None:
        if not line.strip():
            return
        self.lines += 1
        if self.max_refs is not None and self.lines > self.max_refs:
            raise SourceError(f"the remote lists more than git.max_refs ({self.max_refs}) refs; nothing was "
                              f"taken from this poll (raise git.max_refs to poll it)")
        sha_bytes, _, ref = line.rstrip(b"\r").partition(b"\t")
        if len(sha_bytes) not in (40, 64) or not _HEX.issuperset(sha_bytes) or not ref:
            raise MalformedResponse(f"unexpected git ls-remote line: {line[:120]!r}")
        sha = sha_bytes.decode("ascii")
        zero = not sha.strip("0")
        if ref == self.branch_ref:
            if zero:
                self.head_skipped = True
                self._skip(f"branch {ref.decode()} points at the all-zero object id: skipped (the stored head "
                           f"is kept)")
            else:
                self.head = sha
            return
        if not ref.startswith(b"refs/tags/"):
            return
        try:
            name = ref[len(b"refs/tags/"):].decode("utf-8")
        except UnicodeDecodeError:
            self._skip(f"ref {ref[:200]!r} is not valid UTF-8: skipped")
            return
        peeled = name.endswith("^{}")
        tag = name[:-3] if peeled else name
        if zero:
            self.bad_tags.add(tag)
            self._skip(f"tag {tag!r} points at the all-zero object id: skipped")
        elif peeled:
            self.peeled[tag] = sha
        else:
            self.tags[tag] = sha

    def result(self) -> tuple[Observation, tuple[str, ...]]:
        if self._partial:
            self._line(self._partial)
            self._partial = b""
        tags = dict(self.tags)
        tags.update({name: sha for name, sha in self.peeled.items() if name in tags})
        for name in self.bad_tags:
            # Dropping it would read as a deleted tag, taking it as-is could build the wrong thing.
            tags.pop(name, None)
            if name in self.stored_tags:
                tags[name] = self.stored_tags[name]
        skipped = self.skipped[:_MAX_SKIPPED_REPORTED]
        if len(self.skipped) > _MAX_SKIPPED_REPORTED:
            skipped.append(f"{len(self.skipped) - _MAX_SKIPPED_REPORTED} more refs skipped for the same reasons")
        observation = Observation(branch_checked=not self.head_skipped, branch_head=self.head, tags=tags)
        return observation, tuple(skipped)


def parse_ls_remote(output: bytes, branch: str, max_refs: int | None = None,
                    stored_tags: dict[str, str] | None = None) -> tuple[Observation, tuple[str, ...]]:
    """Branch head and peeled tag commits from complete `git ls-remote` output, and the refs skipped (why)."""
    parser = LsRemoteParser(branch, max_refs, stored_tags)
    parser.feed(output)
    return parser.result()


class GitRemoteSource:
    kind = "git"

    def __init__(self, settings: GitSettings | None = None, *, run=run_git):
        self.settings = settings or GitSettings()
        self._run = run

    def poll(self, repo: RepositorySettings, cursors: CursorReader, state: RepoState, reconcile: bool) -> SourcePoll:
        url = repo.url or ""
        shown = _display(url)
        auth = git_auth(url)
        argv = ["git", "ls-remote", "--end-of-options", auth.url, f"refs/heads/{repo.branch}", "refs/tags/*"]
        timeout = self.settings.ls_remote_timeout_seconds
        parser = LsRemoteParser(repo.branch, self.settings.max_refs, dict(state.tags))
        try:
            done = self._run(argv, env=git_environment(auth), timeout=timeout, on_stdout=parser.feed)
            if done.returncode == 0:
                observation, skipped = parser.result()
        except MalformedResponse as e:
            raise MalformedResponse(f"git ls-remote {shown}: {e}") from e
        except SourceError as e:
            raise SourceError(f"git ls-remote {shown}: {e}") from e
        except subprocess.TimeoutExpired as e:
            raise SourceUnavailable(f"git ls-remote {shown}: no answer within {timeout:g}s") from e
        except OSError as e:
            raise SourceUnavailable(f"git ls-remote {shown}: cannot run git ({e.strerror})") from e
        if done.returncode != 0:
            tail = " ".join(done.stderr.strip().splitlines()[-2:])[:300]
            reason = scrub(tail.replace(url, shown), auth.secrets)
            raise SourceRejected(f"git ls-remote {shown} failed: {reason or f'exit {done.returncode}'}")
        return SourcePoll(observation, skipped=skipped)
