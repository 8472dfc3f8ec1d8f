"""Release safety against the real registry: roll staging back without a rebuild, hold a repository, gate major
versions; each recorded, shown by `status`, kept across restarts, and its errors clear (exit 2, nothing changed)."""

from __future__ import annotations

import json

import pytest
import requests
import yaml

from polling_server.builds.docker_engine import ImageBuilder
from polling_server.builds.registry import registry_client_for
from polling_server.builds.tag_mover import TagMover
from polling_server.builds.worker import BuildWorker
from polling_server.cli import main
from polling_server.config import parse_settings
from polling_server.metrics import Metrics
from polling_server.planning.model import BuildStatus, Observation, RepoState
from polling_server.planning.planner import plan_repository
from polling_server.state import StateStore
from tests.gitrepo import GitRepo
from tests.poller.build_helpers import dockerfile, enqueue, unique_image

REVISION = "org.opencontainers.image.revision"


def _worker(settings, store):
    metrics = Metrics()
    return BuildWorker(settings, store, ImageBuilder(settings), metrics,
                       tag_mover=TagMover(settings, store, registry_client_for(settings), metrics))


@pytest.fixture
def app(tmp_path, registry, base_image):
    root = tmp_path / "git"
    root.mkdir()
    repo = GitRepo(root)
    shas = [repo.commit({"Dockerfile": dockerfile(base_image), "marker.txt": f"{n}\n"}, n) for n in "ABC"]
    image = unique_image()
    data = {"state_path": str(tmp_path / "state.db"), "registry": {"host": registry.host},
            "builds": {"retries": 0, "timeout_seconds": 120, "workdir": str(tmp_path / "work")},
            "http": {"enabled": False},
            "repositories": [{"url": repo.url, "name": "app", "image": image, "floating_tags": True}]}
    cfg = tmp_path / "poller.yaml"
    cfg.write_text(yaml.safe_dump(data))
    return repo, shas, image, parse_settings(data, env={}), str(cfg)


def _build(settings, sha, tag=None):
    store = StateStore(settings.state_path)  # a new store each time: every step survives a restart
    enqueue(store, "app", sha, tag=tag)
    (done,) = _worker(settings, store).run_until_idle()
    store.close()
    assert done.status is BuildStatus.SUCCEEDED, done.error
    return done


def _status(cfg, capsys):
    capsys.readouterr()
    assert main(["status", "--config", cfg, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.engine
def test_rollback_hold_and_unhold(app, registry, capsys):
    repo, (a, b, c), image, settings, cfg = app
    first, second = _build(settings, a), _build(settings, b)
    assert registry.labels(image, "staging")[REVISION] == b

    assert main(["rollback", "--config", cfg, "--repo", "app", "--to", a[:7], "--dry-run"]) == 0
    assert "would move app :staging to build" in capsys.readouterr().out
    assert registry.labels(image, "staging")[REVISION] == b  # a dry run changes nothing

    assert main(["rollback", "--config", cfg, "--repo", "app", "--to", a[:7], "--by", "oncall"]) == 0
    assert registry.manifest(image, "staging")[0] == first.digest
    assert registry.labels(image, "staging")[REVISION] == a
    status = _status(cfg, capsys)
    assert status["holds"][0]["repository"] == "app" and status["holds"][0]["by"] == "oncall"
    (rb,) = status["rollbacks"]
    assert (rb["from"], rb["to"], rb["to_digest"], rb["by"]) == (b, a, first.digest, "oncall")

    # Held: a new merge is built and pushed as sha-..., and staging stays on the rollback.
    third = _build(settings, c)
    assert f"sha-{c[:12]}" in registry.tags(image)
    assert registry.labels(image, "staging")[REVISION] == a
    # A second, deeper rollback while held is allowed (by build id).
    assert main(["rollback", "--config", cfg, "--repo", "app", "--to", f"build:{first.id}"]) == 0
    assert main(["hold", "--config", cfg, "--repo", "app"]) == 2  # already held
    assert "already held" in capsys.readouterr().err

    # unhold: staging goes to the newest built head at once.
    assert main(["unhold", "--config", cfg, "--repo", "app"]) == 0
    assert "moved :staging" in capsys.readouterr().out
    assert registry.manifest(image, "staging")[0] == third.digest
    assert _status(cfg, capsys)["holds"] == []
    assert second.id < third.id


@pytest.mark.engine
def test_a_hold_keeps_every_mutable_tag_and_production_rolls_back_by_a_newer_tag(app, registry, capsys):
    repo, (a, b, c), image, settings, cfg = app
    _build(settings, b, tag="v1.2.3")
    assert registry.labels(image, "1")[REVISION] == b
    assert main(["hold", "--config", cfg, "--repo", "app", "--reason", "incident 42"]) == 0
    # The documented production rollback: tag the old commit with a newer version.
    repo.tag("v1.2.4", a)
    _build(settings, a, tag="v1.2.4")
    assert "1.2.4" in registry.tags(image)  # immutable tags are still pushed...
    assert registry.labels(image, "1.2")[REVISION] == b  # ...but nothing mutable moves while held
    assert main(["unhold", "--config", cfg, "--repo", "app"]) == 0
    assert registry.labels(image, "1.2")[REVISION] == a  # 1.2 and 1 follow 1.2.4, the newest version
    assert registry.labels(image, "1")[REVISION] == a
    assert registry.labels(image, "1.2")["org.opencontainers.image.version"] == "1.2.4"


@pytest.mark.engine
def test_rollback_errors_change_nothing(app, registry, capsys):
    repo, (a, b, c), image, settings, cfg = app
    first = _build(settings, a)
    _build(settings, b)
    store = StateStore(settings.state_path)
    failed = enqueue(store, "app", c)
    store.claim_build()
    store.fail_build(failed, "ImageBuildFailed: no", None)
    store.close()
    cases = [
        (["--repo", "nope", "--to", a], "unknown repository"),
        (["--repo", "app", "--to", "build:999"], "no build build:999"),
        (["--repo", "app", "--to", c], "no successful build"),
        (["--repo", "app", "--to", "v9.9.9"], "neither a build"),
    ]
    for args, message in cases:
        assert main(["rollback", "--config", cfg, *args]) == 2, args
        assert message in capsys.readouterr().err
    # The digest is gone from the registry.
    r = requests.delete(f"http://{registry.host}/v2/{image}/manifests/{first.digest}", timeout=10)
    assert r.status_code == 202
    assert main(["rollback", "--config", cfg, "--repo", "app", "--to", a]) == 2
    assert "no longer holds" in capsys.readouterr().err
    assert registry.labels(image, "staging")[REVISION] == b
    assert _status(cfg, capsys)["holds"] == [] and _status(cfg, capsys)["rollbacks"] == []
    assert main(["unhold", "--config", cfg, "--repo", "app"]) == 2


# --- the major-version gate (pure planner, then the commands) ---------------------------------------------------
REPO = parse_settings({"state_path": "x", "repositories": [
    {"url": "/r.git", "name": "app", "image": "t/app", "approve_major": True}]}, env={}).repositories[0]
S1, S2 = "1" * 40, "2" * 40


@pytest.mark.parametrize("tags, highest, gated", [
    ({"v1.0.0": S1}, None, {"v1.0.0": False}),  # the first release is not gated
    ({"v1.0.0": S1, "v2.0.0": S2}, 1, {"v2.0.0": True}),
    ({"v1.0.0": S1, "v1.5.0": S2}, 1, {"v1.5.0": False}),
    ({"v1.0.0": S1, "v2.0.0-rc.1": S2}, 1, {"v2.0.0-rc.1": False}),  # a pre-release moves no floating tag
    ({"v1.0.0": S1, "v3.0.0": S2, "v2.1.0": S1}, 1, {"v2.1.0": True, "v3.0.0": True}),
])
def test_a_new_major_is_planned_gated(tags, highest, gated):
    before = RepoState(True, S1, {"v1.0.0": S1} if highest is not None else {})
    plan = plan_repository(REPO, Observation(True, S1, tags), before, highest)
    assert {b.ref: b.gated for b in plan.builds} == gated
    assert [d.event for d in plan.decisions].count("release.awaiting_approval") == sum(gated.values())


def test_gated_releases_wait_for_approve_and_reject_records_why(tmp_path, capsys):
    cfg = tmp_path / "poller.yaml"
    cfg.write_text(yaml.safe_dump({"state_path": str(tmp_path / "s.db"), "http": {"enabled": False},
                                   "repositories": [{"url": "/r.git", "name": "app", "image": "t/app",
                                                     "approve_major": True}]}))
    settings = parse_settings(yaml.safe_load(cfg.read_text()), env={})
    store = StateStore(settings.state_path)
    plan = plan_repository(settings.repositories[0], Observation(True, S1, {"v1.0.0": S1, "v2.0.0": S2,
                                                                            "v3.0.0": S2}),
                           RepoState(True, S1, {"v1.0.0": S1}), 1)
    store.save_poll("app", plan)
    assert store.claim_build() is None  # nothing to build while gated
    assert {b["tag"] for b in _status(str(cfg), capsys)["awaiting_approval"]} == {"v2.0.0", "v3.0.0"}
    assert main(["approve", "--config", str(cfg), "--repo", "app", "--tag", "v2.0.0", "--by", "lead"]) == 0
    assert main(["reject", "--config", str(cfg), "--repo", "app", "--tag", "v3.0.0", "--reason", "too early"]) == 0
    assert main(["approve", "--config", str(cfg), "--repo", "app", "--tag", "v3.0.0"]) == 2  # nothing waits
    assert "awaiting approval" in capsys.readouterr().err
    restarted = StateStore(settings.state_path)
    claimed = restarted.claim_build()
    assert claimed.ref == "v2.0.0"
    rejected = [b for b in restarted.builds() if b.ref == "v3.0.0"][0]
    assert rejected.status is BuildStatus.REJECTED and "too early" in rejected.error
    assert restarted.gated_tags("app") == {"v3.0.0"}


def test_a_gated_tag_that_moves_is_gated_again_and_one_deleted_is_dropped(tmp_path):
    settings = parse_settings({"state_path": str(tmp_path / "s.db"), "repositories": [
        {"url": "/r.git", "name": "app", "image": "t/app", "approve_major": True}]}, env={})
    repo = settings.repositories[0]
    store = StateStore(settings.state_path)
    before = RepoState(True, S1, {"v1.0.0": S1})
    first = plan_repository(repo, Observation(True, S1, {"v1.0.0": S1, "v2.0.0": S1}), before, 1)
    (old,) = store.save_poll("app", first)
    moved = plan_repository(repo, Observation(True, S1, {"v1.0.0": S1, "v2.0.0": S2}), first.new_state, 1)
    (new,) = store.save_poll("app", moved)
    assert store.build(old).status is BuildStatus.SUPERSEDED
    assert store.build(new).status is BuildStatus.AWAITING_APPROVAL and store.build(new).sha == S2
    deleted = plan_repository(repo, Observation(True, S1, {"v1.0.0": S1}), moved.new_state, 1)
    store.save_poll("app", deleted)
    assert store.build(new).status is BuildStatus.REJECTED and "deleted" in store.build(new).error
