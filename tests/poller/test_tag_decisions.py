"""The pure decision of where the mutable tags point (planning/tags.py): a table, no registry."""

from __future__ import annotations

import pytest
import semver

from polling_server.planning.model import BuildKind, BuildStatus
from polling_server.planning.tags import BuiltImage, Position, plan_tag_moves

OK, RUN, FAIL, QUEUED, SUPER = (BuildStatus.SUCCEEDED, BuildStatus.RUNNING, BuildStatus.FAILED, BuildStatus.QUEUED,
                                BuildStatus.SUPERSEDED)


def staging(i, status=OK, ref="main"):
    return BuiltImage(i, BuildKind.STAGING, ref, f"{i:040x}", status, f"sha256:{i:064x}" if status is OK else None)


def release(i, tag, status=OK):
    version = tag.lstrip("v")
    return BuiltImage(i, BuildKind.RELEASE, tag, f"{i:040x}", status, f"sha256:{i:064x}" if status is OK else None,
                      version)


def pos(i, version=None):
    return Position(i, f"sha256:{i:064x}", version)


@pytest.mark.parametrize("latest, positions, expected", [
    (staging(1), {}, [("staging", 1)]),  # the first build
    (staging(2), {"staging": pos(1)}, [("staging", 2)]),  # the next merge
    (staging(2), {"staging": pos(2)}, []),  # already there
    (staging(3, RUN), {"staging": pos(1)}, []),  # the newest plan has not succeeded: stay
    (staging(3, QUEUED), {"staging": pos(1)}, []),
    (staging(3, FAIL), {"staging": pos(1)}, []),  # the newest plan failed: stay, never back to an older one
    (None, {"staging": pos(1)}, []),
    (staging(4, ref="other"), {}, []),  # not the watched branch
])
def test_staging_follows_only_the_newest_plan(latest, positions, expected):
    moves = plan_tag_moves(branch="main", latest_staging=latest, releases=[], floating=False, positions=positions)
    assert [(m.tag, m.build_id) for m in moves] == expected


@pytest.mark.parametrize("releases, positions, held, expected", [
    ([release(1, "v1.2.3")], {}, {}, [("1", 1, "1.2.3"), ("1.2", 1, "1.2.3")]),
    # an older release later: 1.1 appears, 1 stays on 1.2.3
    ([release(1, "v1.2.3"), release(2, "1.1.9")], {"1": pos(1, "1.2.3"), "1.2": pos(1, "1.2.3")}, {},
     [("1.1", 2, "1.1.9")]),
    # a newer patch moves 1.2 and 1
    ([release(1, "v1.2.3"), release(3, "v1.2.4")], {"1": pos(1, "1.2.3"), "1.2": pos(1, "1.2.3")}, {},
     [("1", 3, "1.2.4"), ("1.2", 3, "1.2.4")]),
    # pre-releases and failed builds never count
    ([release(1, "v2.0.0-rc.1"), release(2, "v1.0.0", FAIL)], {}, {}, []),
    # the registry holds a newer version than the state knows (a lost state): never back
    ([release(1, "v1.2.3")], {}, {"1": semver.Version.parse("1.9.0"), "1.2": None}, [("1.2", 1, "1.2.3")]),
    # the same version re-built (its tag moved): the newer build wins
    ([release(1, "v1.2.3"), release(5, "v1.2.3")], {"1": pos(1, "1.2.3"), "1.2": pos(1, "1.2.3")},
     {"1": semver.Version.parse("1.2.3"), "1.2": semver.Version.parse("1.2.3")},
     [("1", 5, "1.2.3"), ("1.2", 5, "1.2.3")]),
])
def test_floating_tags_follow_the_highest_release_and_never_go_back(releases, positions, held, expected):
    moves = plan_tag_moves(branch="main", latest_staging=None, releases=releases, floating=True,
                           positions=positions, held=held)
    assert [(m.tag, m.build_id, m.version) for m in moves] == expected


def test_no_floating_tags_unless_asked_and_frozen_tags_stay():
    releases = [release(1, "v1.2.3")]
    assert plan_tag_moves(branch="main", latest_staging=None, releases=releases, floating=False, positions={}) == []
    moves = plan_tag_moves(branch="main", latest_staging=staging(2), releases=releases, floating=True,
                           positions={}, frozen={"staging", "1"})
    assert [m.tag for m in moves] == ["1.2"]
