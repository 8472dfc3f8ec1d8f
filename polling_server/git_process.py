"""Runs one git command for the poller: git's environment, credentials kept out of argv, and a whole-group kill.

Shared by the git-remote source (`git ls-remote`) and source fetching (`git fetch`). A URL's `user:password@` is
moved into an `Authorization` header carried by GIT_CONFIG_COUNT/KEY/VALUE environment variables, so it never
appears in the argv of git or of the `git remote-http(s)` helper it starts (argv is readable by anyone through
`ps`). Git runs in a process group of its own, and that group is killed whole when the call times out or the
caller stops reading: killing git alone leaves its helpers orphaned, holding connections, one more per call.
"""

from __future__ import annotations

import base64
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

# Never prompt (a daemon has no terminal); ext:: and fd:: transports run commands, so a configured URL gets the
# ordinary transports only; the system gitconfig is not ours to depend on.
GIT_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_ASKPASS": "/bin/false",
    "SSH_ASKPASS": "/bin/false",
    "GIT_ALLOW_PROTOCOL": "file:git:http:https:ssh",
    "GIT_TRACE_CURL": "",
    "GIT_CONFIG_NOSYSTEM": "1",
    "LC_ALL": "C",
}
# What is kept of each output stream when nobody reads it as it comes: callers only show the tail of stderr.
_KEEP_BYTES = 1 << 16
_READ_CHUNK = 1 << 16

StdoutReader = Callable[[bytes], None]


@dataclass(frozen=True)
class GitAuth:
    """How to hand a remote to git: `url` for argv (no userinfo), `env` carrying the credential as an HTTP header
    (empty without one), and `secrets`: the strings to scrub from anything git prints."""

    url: str
    env: Mapping[str, str]
    secrets: tuple[str, ...]


def _host(url: str) -> str:
    p = urlsplit(url)
    host = p.hostname or ""
    return f"{host}:{p.port}" if p.port else host


def git_auth(url: str, host_credentials: Mapping[str, str] | None = None) -> GitAuth:
    """Split `url` into what git may see in argv and a Basic `Authorization` header in GIT_CONFIG_* variables.

    The header is scoped to `scheme://host[:port]/`. `host_credentials` maps `host[:port]` to `user:password`,
    used when the URL itself carries none (the GitHub token for GitHub's web host). Only http(s) URLs carry
    headers; any other URL is passed on as given.
    """
    p = urlsplit(url)
    if p.scheme not in ("http", "https") or not p.netloc:
        return GitAuth(url, {}, ())
    host = _host(url)
    secrets: list[str] = []
    credential = None
    if p.username is not None or p.password is not None:
        credential = f"{p.username or ''}:{p.password or ''}"
        secrets += [p.password or "", p.username or ""]
        url = urlunsplit((p.scheme, host, p.path, p.query, ""))
    elif host_credentials and host in host_credentials:
        credential = host_credentials[host]
        secrets += [credential.partition(":")[2]]
    if not credential:
        return GitAuth(url, {}, ())
    token = base64.b64encode(credential.encode()).decode()
    env = {"GIT_CONFIG_COUNT": "1",
           "GIT_CONFIG_KEY_0": f"http.{p.scheme}://{host}/.extraHeader",
           "GIT_CONFIG_VALUE_0": f"Authorization: Basic {token}"}
    # Very short strings (a user named "git") would scrub ordinary words out of git's messages.
    return GitAuth(url, env, tuple(s for s in [token, *secrets] if len(s) >= 4))


def git_environment(auth: GitAuth) -> dict[str, str]:
    """The environment for one git call: ours, with the credential header of `auth` and none inherited."""
    # Inherited GIT_CONFIG_COUNT/KEY_n/VALUE_n would either add headers of their own or be renumbered by ours.
    env = {k: v for k, v in os.environ.items()
           if k != "GIT_CONFIG_COUNT" and not k.startswith(("GIT_CONFIG_KEY_", "GIT_CONFIG_VALUE_"))}
    return {**env, **GIT_ENV, **auth.env}


def scrub(text: str, secrets: Sequence[str]) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text


class _Tail:
    def __init__(self) -> None:
        self.data = bytearray()

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > 2 * _KEEP_BYTES:
            del self.data[:-_KEEP_BYTES]

    def text(self) -> str:
        return bytes(self.data[-_KEEP_BYTES:]).decode("utf-8", "replace")


def _kill_group(proc: subprocess.Popen) -> None:
    # git is not reaped yet, so its pid (the group id) cannot have been reused by an unrelated group.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def run_git(argv: Sequence[str], *, env: Mapping[str, str], timeout: float | None, cwd=None,
            on_stdout: StdoutReader | None = None) -> subprocess.CompletedProcess[str]:
    """Run `argv` (git and its arguments) in a new process group and wait for it, at most `timeout` seconds.

    Without `on_stdout`, stdout is kept (its last 64 KiB, like stderr) and returned; with it, each chunk is handed
    over as it is read, and an exception the reader raises stops the call. On a timeout (subprocess.TimeoutExpired)
    or any exception, the whole process group is killed before the exception goes on. OSError: git cannot start.
    """
    argv = list(argv)
    deadline = None if timeout is None else time.monotonic() + timeout
    proc = subprocess.Popen(argv, cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    out, err = _Tail(), _Tail()
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ, out)
            sel.register(proc.stderr, selectors.EVENT_READ, err)
            while sel.get_map():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired(argv, timeout)
                for key, _events in sel.select(left):
                    chunk = os.read(key.fd, _READ_CHUNK)
                    if not chunk:
                        sel.unregister(key.fileobj)
                    elif key.data is out and on_stdout is not None:
                        on_stdout(chunk)
                    else:
                        key.data.add(chunk)
        returncode = proc.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
    except BaseException:
        _kill_group(proc)
        raise
    finally:
        proc.stdout.close()
        proc.stderr.close()
    return subprocess.CompletedProcess(argv, returncode, out.text(), err.text())
