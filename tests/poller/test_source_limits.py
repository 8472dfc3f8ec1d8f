"""Bounds and hygiene of source fetching: tarball size, member count and commit id; git credentials over HTTP;
a git remote that never answers; and the settings (`git:`, `builds.max_source_bytes`) that hold the bounds."""

from __future__ import annotations

import base64
import io
import os
import tarfile
import time

import pytest
import responses

from polling_server.builds import source_fetch
from polling_server.builds.source_fetch import SourceFetcher
from polling_server.config import parse_settings
from polling_server.errors import BuildTimeout, ConfigError, SourceFetchError
from polling_server.git_process import run_git
from polling_server.http import HttpClient
from tests.git_http import AuthGitServer, SilentServer, live_processes_mentioning
from tests.gitrepo import GitRepo
from tests.poller.build_helpers import github_tarball, make_settings

SHA = "89abcdef0123456789abcdef0123456789abcdef"
TARBALL_URL = f"https://api.github.com/repos/acme/app/tarball/{SHA}"
MB = 1 << 20


class _Reg:
    host = "127.0.0.1:1"
    username = None
    password = None


def _settings(tmp_path, repos, **builds):
    return make_settings(tmp_path, _Reg(), repos, **builds)


def _github(tmp_path, **builds):
    return _settings(tmp_path, [{"repo": "acme/app", "image": "acme/app"}], **builds)


def _bomb(files: dict[str, int], commit: str | None = SHA) -> bytes:
    """A GitHub-shaped .tar.gz whose members are zeros: tiny compressed, `size` bytes each once expanded."""
    buf = io.BytesIO()
    pax = {"comment": commit} if commit else {}
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT, pax_headers=pax) as tar:
        for name, size in files.items():
            info = tarfile.TarInfo(f"acme-app-{SHA[:7]}/{name}")
            info.size = size
            tar.addfile(info, io.BytesIO(bytes(size)))
    return buf.getvalue()


def _workdir_is_empty(tmp_path) -> bool:
    return list((tmp_path / "work").iterdir()) == []


# --- tarballs ------------------------------------------------------------------------------------------------
@responses.activate
def test_a_tarball_expanding_past_the_bound_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    settings = _github(tmp_path, max_source_bytes=4 * MB)
    body = _bomb({"a.bin": 3 * MB, "b.bin": 3 * MB})
    assert len(body) < 100_000  # the archive itself is far below the bound
    responses.get(TARBALL_URL, body=body)
    written = []
    monkeypatch.setattr(tarfile.TarFile, "extractall", lambda self, *a, **kw: written.append(a))
    with pytest.raises(SourceFetchError, match=r"expands to more than builds.max_source_bytes \(4194304 bytes\)"):
        with SourceFetcher(settings, HttpClient()).checkout(settings.repository("acme/app"), SHA):
            pass
    assert written == []
    assert _workdir_is_empty(tmp_path)


@responses.activate
def test_a_tarball_within_the_bound_is_unpacked_whole(tmp_path):
    settings = _github(tmp_path, max_source_bytes=4 * MB)
    responses.get(TARBALL_URL, body=_bomb({"a.bin": 2 * MB, "b.bin": 2 * MB - 1}))
    with SourceFetcher(settings, HttpClient()).checkout(settings.repository("acme/app"), SHA) as root:
        assert (root / "a.bin").stat().st_size == 2 * MB
        assert (root / "b.bin").stat().st_size == 2 * MB - 1


@responses.activate
def test_a_download_larger_than_the_bound_is_cut_off(tmp_path):
    settings = _github(tmp_path, max_source_bytes=MB)
    responses.get(TARBALL_URL, body=os.urandom(MB + 4096))
    with pytest.raises(SourceFetchError, match=r"larger than builds.max_source_bytes \(1048576 bytes\)"):
        with SourceFetcher(settings, HttpClient()).checkout(settings.repository("acme/app"), SHA):
            pass
    assert _workdir_is_empty(tmp_path)


@responses.activate
def test_a_tarball_with_too_many_members_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(source_fetch, "_MAX_MEMBERS", 10)
    settings = _github(tmp_path)
    responses.get(TARBALL_URL, body=_bomb({f"f{i}": 0 for i in range(11)}))
    with pytest.raises(SourceFetchError, match="has more than 10 members"):
        with SourceFetcher(settings, HttpClient()).checkout(settings.repository("acme/app"), SHA):
            pass
    assert _workdir_is_empty(tmp_path)


@responses.activate
@pytest.mark.parametrize("commit, problem", [
    (None, "carries no commit id"),
    ("0" * 40, "holds commit 000000000000, not 89abcdef0123"),
])
def test_a_tarball_must_name_the_planned_commit(tmp_path, commit, problem):
    settings = _github(tmp_path)
    responses.get(TARBALL_URL, body=github_tarball(f"acme-app-{SHA[:7]}", {"Dockerfile": "FROM x\n"}, commit=commit))
    with pytest.raises(SourceFetchError, match=problem):
        with SourceFetcher(settings, HttpClient()).checkout(settings.repository("acme/app"), SHA):
            pass
    assert _workdir_is_empty(tmp_path)


# --- git over HTTP -------------------------------------------------------------------------------------------
class _Recording:
    def __init__(self):
        self.argvs: list[list[str]] = []

    def __call__(self, argv, **kwargs):
        self.argvs.append(list(argv))
        return run_git(argv, **kwargs)


def test_git_fetch_authenticates_with_the_url_password_kept_out_of_argv(tmp_path):
    root = tmp_path / "git"
    root.mkdir()
    repo = GitRepo(root)
    sha = repo.commit({"Dockerfile": "FROM scratch\n"})
    with AuthGitServer(root, "deploy", "pw-0815-secret") as server:
        url = server.url("remote.git", "deploy:pw-0815-secret")
        settings = _settings(tmp_path, [{"name": "app", "url": url, "image": "team/app"}])
        runner = _Recording()
        with SourceFetcher(settings, HttpClient(), run=runner).checkout(settings.repository("app"), sha,
                                                                       deadline=time.monotonic() + 60) as src:
            assert (src / "Dockerfile").read_text() == "FROM scratch\n"
        expected = "Basic " + base64.b64encode(b"deploy:pw-0815-secret").decode()
        assert expected in server.authorizations
    assert [a for a in runner.argvs if "fetch" in a][0][-2:] == [server.url("remote.git"), sha]
    assert not any("pw-0815-secret" in part for argv in runner.argvs for part in argv)


def test_git_fetch_from_a_remote_that_never_answers_leaves_nothing_behind(tmp_path):
    with SilentServer() as server:
        settings = _settings(tmp_path, [{"name": "app", "url": server.url(), "image": "team/app"}])
        with pytest.raises(BuildTimeout, match="ran out of time in git fetch"):
            with SourceFetcher(settings, HttpClient()).checkout(settings.repository("app"), SHA,
                                                                deadline=time.monotonic() + 2):
                pass
        assert server.accepted >= 1
        stop = time.monotonic() + 15  # a safety net: SIGKILL lands asynchronously
        while (left := live_processes_mentioning(f"127.0.0.1:{server.port}")) and time.monotonic() < stop:
            time.sleep(0.05)
        assert left == []
    assert _workdir_is_empty(tmp_path)


# --- settings --------------------------------------------------------------------------------------------------
MINIMAL = {"state_path": "s.db", "repositories": [{"url": "/srv/app.git", "image": "team/app"}]}


def test_bound_defaults_and_overrides():
    s = parse_settings(MINIMAL, env={})
    assert (s.git.ls_remote_timeout_seconds, s.git.max_refs, s.builds.max_source_bytes) == (60.0, 100000, 2 << 30)
    s = parse_settings({**MINIMAL, "git": {"ls_remote_timeout_seconds": 5, "max_refs": 10},
                        "builds": {"max_source_bytes": 1000}}, env={})
    assert (s.git.ls_remote_timeout_seconds, s.git.max_refs, s.builds.max_source_bytes) == (5.0, 10, 1000)


@pytest.mark.parametrize("patch, where, what", [
    ({"git": {"max_refs": 0}}, "git.max_refs", "greater than 0"),
    ({"git": {"max_refs": 1.5}}, "git.max_refs", "must be int"),
    ({"git": {"ls_remote_timeout_seconds": -1}}, "git.ls_remote_timeout_seconds", "greater than 0"),
    ({"git": {"timeout": 1}}, "git", "unknown key(s) timeout"),
    ({"builds": {"max_source_bytes": 0}}, "builds.max_source_bytes", "greater than 0"),
    ({"builds": {"max_source_bytes": "2G"}}, "builds.max_source_bytes", "must be int"),
])
def test_bound_settings_are_validated(patch, where, what):
    with pytest.raises(ConfigError) as e:
        parse_settings({**MINIMAL, **patch}, source="/etc/poller.yaml", env={})
    assert where in str(e.value) and what in str(e.value)
