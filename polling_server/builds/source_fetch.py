"""Fetches a repository's source tree at one exact commit into a temporary directory, and removes it afterwards.

GitHub repositories (`repo: owner/name`) come from the API's tarball of that commit (its top-level directory is
stripped); any other git remote (`url:`) is fetched with git: `git fetch --depth 1 <url> <sha>`, falling back to a
full fetch when the server refuses to serve a commit by SHA, and the checkout is verified to be that commit. Nothing
is taken from a branch's moving head. Credentials travel only in HTTP headers (for git, through GIT_CONFIG_*
environment variables), never in argv, URLs, logs or error messages. Every git call is an argv list.
"""

from __future__ import annotations

import base64
import os
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
from polling_server.http import HttpClient, Unreachable

_SHA = re.compile(r"^[0-9a-f]{40}(?:[0-9a-f]{24})?$")
# ext:: and fd:: transports run commands; a configured URL gets the ordinary transports only.
_GIT_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_ASKPASS": "/bin/false",
    "SSH_ASKPASS": "/bin/false",
    "GIT_ALLOW_PROTOCOL": "file:git:http:https:ssh",
    "GIT_TRACE_CURL": "",
    "GIT_CONFIG_NOSYSTEM": "1",
}
_TARBALL_CHUNK = 1 << 16

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


def scrub(text: str, secrets: list[str]) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise BuildTimeout("the build ran out of time while fetching the source")
    return left


class SourceFetcher:
    """`checkout(repo, sha)` yields a directory holding the repository's tree at `sha` (without `.git`)."""

    def __init__(self, settings: Settings, http: HttpClient, *, run: Runner = subprocess.run):
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
        try:
            if resp.status_code != 200:
                hint = {401: " (the token is missing or invalid)", 403: " (access denied or rate limited)",
                        404: " (no such repository or commit, or the token cannot see it)"}.get(resp.status_code, "")
                raise SourceFetchError(
                    f"{repo.name}: GitHub answered HTTP {resp.status_code} for the tarball of {sha[:12]}{hint}")
            with archive.open("wb") as f:
                for chunk in resp.iter_content(_TARBALL_CHUNK):
                    f.write(chunk)
                    _remaining(deadline)
        except OSError as e:  # requests' streaming errors are OSErrors (IOError) too
            raise SourceFetchError(f"{repo.name}: the tarball download of {sha[:12]} broke off: "
                                   f"{type(e).__name__}") from e
        finally:
            resp.close()
        _extract_stripped(archive, dest, sha, repo.name)

    # --- git ------------------------------------------------------------------------------------------------
    def git_invocation(self, url: str) -> tuple[str, dict[str, str], list[str]]:
        """The URL to pass to git (userinfo removed), the extra environment carrying any credential as an HTTP
        header, and the secrets to scrub from git's output."""
        p = urlsplit(url)
        secrets: list[str] = []
        env: dict[str, str] = {}
        credential = None
        if p.scheme in ("http", "https") and p.netloc:
            host = p.hostname or ""
            if p.port:
                host = f"{host}:{p.port}"
            if p.username is not None or p.password is not None:
                credential = f"{p.username or ''}:{p.password or ''}"
                secrets += [p.password or "", p.username or ""]
                url = urlunsplit((p.scheme, host, p.path, p.query, ""))
            elif self.settings.github.token and host == urlsplit(
                    github_web_url(self.settings.github.api_url, "x/y")).netloc:
                credential = f"x-access-token:{self.settings.github.token}"
            if credential:
                token = base64.b64encode(credential.encode()).decode()
                secrets += [token, str(self.settings.github.token or "")]
                env = {"GIT_CONFIG_COUNT": "1",
                       "GIT_CONFIG_KEY_0": f"http.{p.scheme}://{host}/.extraHeader",
                       "GIT_CONFIG_VALUE_0": f"Authorization: Basic {token}"}
        return url, env, [s for s in secrets if len(s) >= 4]

    def _git(self, args: list[str], cwd: Path, env: dict[str, str], deadline: float | None
             ) -> subprocess.CompletedProcess:
        try:
            return self._run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False,
                             timeout=_remaining(deadline))
        except subprocess.TimeoutExpired as e:
            raise BuildTimeout(f"the build ran out of time in git {args[0]}") from e
        except OSError as e:
            raise SourceFetchError(f"cannot run git: {e.strerror}") from e

    def _git_fetch(self, repo: RepositorySettings, sha: str, dest: Path, deadline: float | None) -> None:
        url, auth_env, secrets = self.git_invocation(repo.url or "")
        env = {**os.environ, **_GIT_ENV, **auth_env}
        if not auth_env:
            env.pop("GIT_CONFIG_COUNT", None)

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


def _extract_stripped(archive: Path, dest: Path, sha: str, name: str) -> None:
    """Unpack a GitHub tarball without its `owner-repo-<sha>/` top directory, refusing unsafe members."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            commit = tar.pax_headers.get("comment")
            if commit and commit != sha:
                raise SourceFetchError(f"{name}: the tarball holds commit {commit[:12]}, not {sha[:12]}")
            members = []
            top = None
            for m in tar.getmembers():
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
