"""Real git repositories for tests: a bare "remote" and a working clone that commits, tags and pushes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

_ENV = {
    "GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "test@example.invalid",
    "GIT_CONFIG_NOSYSTEM": "1", "HOME": "/nonexistent",
}


def git(*args: str, cwd: Path | str) -> str:
    env = {**os.environ, **_ENV}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


class GitRepo:
    """`remote` is a bare repository (what the poller watches); `work` is a clone that makes changes."""

    def __init__(self, root: Path, branch: str = "master"):
        root = root.resolve()
        self.remote = root / "remote.git"
        self.work = root / "work"
        self.branch = branch
        git("init", "--bare", f"--initial-branch={branch}", str(self.remote), cwd=root)
        git("init", f"--initial-branch={branch}", str(self.work), cwd=root)
        git("remote", "add", "origin", str(self.remote), cwd=self.work)

    @property
    def url(self) -> str:
        return str(self.remote)

    def commit(self, files: dict[str, str], message: str = "change", push: bool = True) -> str:
        for name, content in files.items():
            path = self.work / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
        git("add", "-A", cwd=self.work)
        git("commit", "-q", "--allow-empty", "-m", message, cwd=self.work)
        if push:
            self.push()
        return self.head()

    def head(self) -> str:
        return git("rev-parse", "HEAD", cwd=self.work)

    def tag(self, name: str, sha: str | None = None, annotated: bool = False, push: bool = True,
            force: bool = False) -> None:
        args = ["tag"] + (["-a", "-m", f"release {name}"] if annotated else []) + (["-f"] if force else [])
        git(*args, name, sha or "HEAD", cwd=self.work)
        if push:
            git("push", "-q", "--force" if force else "--no-force", "origin", f"refs/tags/{name}", cwd=self.work)

    def delete_tag(self, name: str) -> None:
        git("tag", "-d", name, cwd=self.work)
        git("push", "-q", "origin", f":refs/tags/{name}", cwd=self.work)

    def push(self, force: bool = False) -> None:
        git("push", "-q", *(["--force"] if force else []), "origin", f"HEAD:refs/heads/{self.branch}", cwd=self.work)

    def reset_hard(self, sha: str) -> None:
        git("reset", "-q", "--hard", sha, cwd=self.work)
