"""Fetches a repository's source tree at one exact commit into a temporary directory, and removes it afterwards.

GitHub repositories (`repo: owner/name`) come from the API's tarball of that commit (its top-level directory is
stripped); any other git remote (`url:`) is fetched with git: `git fetch --depth 1 <url> <sha>`, falling back to a
full fetch when the server refuses to serve a commit by SHA, and the checkout is verified to be that commit. Nothing
is taken from a branch's moving head. Credentials travel only in HTTP headers (for git, through GIT_CONFIG_*
environment variables), never in argv, URLs, logs or error messages. Every git call is an argv list, run in a
process group of its own that is killed whole at the deadline (polling_server.git_process).

A tarball must name the planned commit (the pax global header `comment` that `git archive` writes and GitHub
serves), and is bounded: the download and the sum of its members' sizes by `builds.max_source_bytes`, the number of
members by _MAX_MEMBERS; both are checked from the headers before anything is written.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from polling_server.config import RepositorySettings, Settings
from polling_server.errors import BuildTimeout, SourceFetchError
from polling_server.git_process import GitAuth, git_auth, git_environment, run_git, scrub
from polling_server.http import HttpClient, Unreachable

_SHA = re.compile(r"^[0-9a-f]{40}(?:[0-9a-f]{24})?$")
_TARBALL_CHUNK = 1 << 16
# Far more files than any repository we build; past it, the member list alone would cost hundreds of MB.
_MAX_MEMBERS = 1_000_000

Runner = Callable[..., subprocess.CompletedProcess]


def github_web_url(api_url: str, owner_name: str) -> str:
    """The repository's web address: github.com for the public API, the host itself for `https://HOST/api/v3`."""
    p = urlsplit(api_url)
    host = p.hostname or "github.com"
    if host == "api.github.com":
        host = "github.com"
    if p.port:
        host = f"{host}:{p.port}"
    return f"{p.scheme or 'https'}://{host}/{owner_name}"


def public_url(url: str) -> str:
    """A git remote's address without userinfo, query or fragment (a local path or scp-like address as given)."""
    p = urlsplit(url)
    if not p.scheme or not p.netloc:
        return url
    host = p.hostname or ""
    if p.port:
        host = f"{host}:{p.port}"
    return urlunsplit((p.scheme, host, p.path, "", ""))


def source_url(settings: Settings, repo: RepositorySettings) -> str:
    """The repository URL recorded in the image's `org.opencontainers.image.source` label (no credentials)."""
    return github_web_url(settings.github.api_url, repo.repo) if repo.repo else public_url(repo.url or "")


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise BuildTimeout("the build ran out of time while fetching the source")
    return left


class SourceFetcher:
    """`checkout(repo, sha)` yields a directory holding the repository's tree at `sha` (without `.git`)."""

    def __init__(self, settings: Settings, http: HttpClient, *, run: Runner = run_git):
        self.settings = settings
        self.http = http
        self._run = run

    @contextmanager
    def checkout(self, repo: RepositorySettings, sha: str, deadline: float | None = None) -> Iterator[Path]:
        if not _SHA.match(sha or ""):
            raise SourceFetchError(f"{repo.name}: {sha!r} is not a full commit SHA")
        workdir = self.settings.builds.workdir
        if workdir:
            Path(workdir).mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="build-", dir=workdir))
        try:
            src = tmp / "src"
            src.mkdir()
            if repo.repo:
                self._github_tarball(repo, sha, tmp, src, deadline)
            else:
                self._git_fetch(repo, sha, src, deadline)
            yield src
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # --- GitHub ---------------------------------------------------------------------------------------------
    def _github_tarball(self, repo: RepositorySettings, sha: str, tmp: Path, dest: Path,
                        deadline: float | None) -> None:
        gh = self.settings.github
        url = f"{gh.api_url}/repos/{repo.repo}/tarball/{sha}"
        headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}
        if gh.token:
            headers["Authorization"] = f"Bearer {gh.token}"
        _remaining(deadline)
        try:
            resp = self.http.get(url, headers=headers, stream=True)
        except Unreachable as e:
            raise SourceFetchError(f"{repo.name}: cannot download the tarball of {sha[:12]}: {e}") from e
        archive = tmp / "source.tar.gz"
        limit = self.settings.builds.max_source_bytes
        try:
            if resp.status_code != 200:
                hint = {401: " (the token is missing or invalid)", 403: " (access denied or rate limited)",
                        404: " (no such repository or commit, or the token cannot see it)"}.get(resp.status_code, "")
                raise SourceFetchError(
                    f"{repo.name}: GitHub answered HTTP {resp.status_code} for the tarball of {sha[:12]}{hint}")
            with archive.open("wb") as f:
                for chunk in resp.iter_content(_TARBALL_CHUNK):
                    f.write(chunk)
                    if f.tell() > limit:
                        raise SourceFetchError(f"{repo.name}: the tarball of {sha[:12]} is larger than "
                                               f"builds.max_source_bytes ({limit} bytes)")
                    _remaining(deadline)
        except OSError as e:  # requests' streaming errors are OSErrors (IOError) too
            raise SourceFetchError(f"{repo.name}: the tarball download of {sha[:12]} broke off: "
                                   f"{type(e).__name__}") from e
        finally:
            resp.close()
        _extract_stripped(archive, dest, sha, repo.name, limit)

    # --- git ------------------------------------------------------------------------------------------------
    def git_auth(self, url: str) -> GitAuth:
        """How to hand `url` to git: its own credential, else the GitHub token for GitHub's web host, as a header."""
        host_credentials = {}
        if self.settings.github.token:
            github_host = urlsplit(github_web_url(self.settings.github.api_url, "x/y")).netloc
            host_credentials[github_host] = f"x-access-token:{self.settings.github.token}"
        return git_auth(url, host_credentials)

    def _git(self, args: list[str], cwd: Path, env: dict[str, str], deadline: float | None
             ) -> subprocess.CompletedProcess:
        try:
            return self._run(["git", *args], cwd=cwd, env=env, timeout=_remaining(deadline))
        except subprocess.TimeoutExpired as e:
            raise BuildTimeout(f"the build ran out of time in git {args[0]}") from e
        except OSError as e:
            raise SourceFetchError(f"cannot run git: {e.strerror}") from e

    def _git_fetch(self, repo: RepositorySettings, sha: str, dest: Path, deadline: float | None) -> None:
        auth = self.git_auth(repo.url or "")
        url, secrets, env = auth.url, auth.secrets, git_environment(auth)

        def fail(what: str, proc: subprocess.CompletedProcess) -> SourceFetchError:
            detail = scrub((proc.stderr or proc.stdout or "").strip(), secrets)
            return SourceFetchError(f"{repo.name}: {what} failed: {detail[-1000:]}")

        init = self._git(["init", "-q", "."], dest, env, deadline)
        if init.returncode:
            raise fail("git init", init)
        shallow = self._git(["fetch", "-q", "--no-tags", "--depth", "1", "--", url, sha], dest, env, deadline)
        if shallow.returncode:
            # Some servers refuse a SHA that is not a ref tip (uploadpack.allowReachableSHA1InWant off, or
            # protocol v0): fetch the branches and tags instead and pick the commit out of them.
            full = self._git(["fetch", "-q", "--no-tags", "--", url, "+refs/heads/*:refs/remotes/origin/*",
                              "+refs/tags/*:refs/tags/*"], dest, env, deadline)
            if full.returncode:
                raise fail(f"fetching {sha[:12]} from {public_url(repo.url or '')}", full)
            present = self._git(["cat-file", "-e", f"{sha}^{{commit}}"], dest, env, deadline)
            if present.returncode:
                raise SourceFetchError(f"{repo.name}: commit {sha[:12]} is on no branch or tag of "
                                       f"{public_url(repo.url or '')}")
        checkout = self._git(["-c", "advice.detachedHead=false", "checkout", "-q", "--detach", sha], dest, env,
                             deadline)
        if checkout.returncode:
            raise fail(f"checking out {sha[:12]}", checkout)
        head = self._git(["rev-parse", "HEAD"], dest, env, deadline)
        if head.returncode or head.stdout.strip() != sha:
            raise SourceFetchError(f"{repo.name}: the checkout is at {head.stdout.strip()[:12] or '?'}, "
                                   f"not the planned commit {sha[:12]}")
        # The build context carries the tree only, as the GitHub tarball does.
        shutil.rmtree(dest / ".git", ignore_errors=True)


def _extract_stripped(archive: Path, dest: Path, sha: str, name: str, max_bytes: int) -> None:
    """Unpack a GitHub tarball of commit `sha` without its `owner-repo-<sha7>/` top directory, refusing unsafe
    members, a tarball that does not name `sha`, and one that would expand past `max_bytes` or _MAX_MEMBERS."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            # The top directory carries only 7 hex digits; the pax header carries the full id.
            commit = tar.pax_headers.get("comment")
            if not commit:
                raise SourceFetchError(f"{name}: the tarball of {sha[:12]} carries no commit id (no pax `comment` "
                                       f"header), so it cannot be checked against the planned commit")
            if commit != sha:
                raise SourceFetchError(f"{name}: the tarball holds commit {commit[:12]}, not {sha[:12]}")
            members = []
            top = None
            expanded = 0
            # Headers only: the data is skipped over, nothing is written before every limit has been checked.
            for count, m in enumerate(tar, 1):
                if count > _MAX_MEMBERS:
                    raise SourceFetchError(f"{name}: the tarball of {sha[:12]} has more than {_MAX_MEMBERS} "
                                           f"members")
                expanded += m.size
                if expanded > max_bytes:
                    raise SourceFetchError(f"{name}: the tarball of {sha[:12]} expands to more than "
                                           f"builds.max_source_bytes ({max_bytes} bytes)")
                parts = m.name.removeprefix("./").split("/", 1)
                if top is None:
                    top = parts[0]
                if parts[0] != top:
                    raise SourceFetchError(f"{name}: the tarball has more than one top-level directory")
                if len(parts) < 2 or not parts[1]:
                    continue
                m.name = parts[1]
                if m.islnk() and m.linkname.startswith(f"{top}/"):
                    m.linkname = m.linkname[len(top) + 1:]
                members.append(m)
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, OSError) as e:
        raise SourceFetchError(f"{name}: the tarball of {sha[:12]} cannot be unpacked: {e}") from e
