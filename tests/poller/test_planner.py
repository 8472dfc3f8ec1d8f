"""The pure planner: table tests of the repository and chart rules (no I/O anywhere)."""

from __future__ import annotations

import pytest

from polling_server.config import parse_settings
from polling_server.planning.model import BuildKind, BuildRequest, ChartState, Observation, RepoState
from polling_server.planning.planner import plan_charts, plan_repository

A, B, C = "a" * 40, "b" * 40, "c" * 40


def repo(**kw):
    return parse_settings({"state_path": "x.db", "repositories": [{"url": "/r.git", "image": "team/app", **kw}]},
                          env={}).repositories[0]


def seen(head=None, tags=None):
    return Observation(branch_checked=True, branch_head=head, tags=tags)


BASE = RepoState(True, A, {"v1.0.0": A})

CASES = [
    # (name, repo settings, observation, stored state, expected builds, expected events)
    ("first poll records a baseline only", {}, seen(A, {"v1.0.0": A}), RepoState(), [], ["baseline.recorded"]),
    ("first poll with initial_build builds the head once", {"initial_build": True}, seen(A, {"v1.0.0": A}),
     RepoState(), [("staging", "master", A)], ["baseline.recorded", "build.planned"]),
    ("nothing changed", {}, seen(A, {"v1.0.0": A}), BASE, [], []),
    ("branch not looked at this poll", {}, Observation(tags={"v1.0.0": A}), BASE, [], []),
    ("new head on the branch", {}, seen(B, {"v1.0.0": A}), BASE, [("staging", "master", B)], ["build.planned"]),
    ("head went back to an older commit (force push)", {}, seen(C, {"v1.0.0": A}), RepoState(True, B, {"v1.0.0": A}),
     [("staging", "master", C)], ["build.planned"]),
    ("branch deleted plans nothing", {}, seen(None, {"v1.0.0": A}), BASE, [], ["branch.deleted"]),
    ("new semver tag with v", {}, seen(A, {"v1.0.0": A, "v1.1.0": B}), BASE, [("release", "v1.1.0", B)],
     ["build.planned"]),
    ("new semver tag without v, pre-release", {}, seen(A, {"v1.0.0": A, "1.2.0-rc.1": C}), BASE,
     [("release", "1.2.0-rc.1", C)], ["build.planned"]),
    ("non-semver tag ignored and logged", {}, seen(A, {"v1.0.0": A, "nightly": B}), BASE, [], ["tag.ignored"]),
    ("non-semver tag already known: silent", {}, seen(A, {"v1.0.0": A, "nightly": B}),
     RepoState(True, A, {"v1.0.0": A, "nightly": B}), [], []),
    ("two-part version is not semver", {}, seen(A, {"v1.0.0": A, "v1.2": B}), BASE, [], ["tag.ignored"]),
    ("moved tag is rebuilt with a warning", {}, seen(A, {"v1.0.0": B}), BASE, [("release", "v1.0.0", B)],
     ["tag.moved", "build.planned"]),
    ("deleted tag plans nothing", {}, seen(A, {}), BASE, [], ["tag.deleted"]),
    ("several tags at once are all built, oldest version first", {}, seen(A, {"v1.0.0": A, "v1.10.0": C, "v1.2.0": B}),
     BASE, [("release", "v1.2.0", B), ("release", "v1.10.0", C)], ["build.planned", "build.planned"]),
    ("push and tag in one poll", {}, seen(B, {"v1.0.0": A, "v2.0.0": B}), BASE,
     [("staging", "master", B), ("release", "v2.0.0", B)], ["build.planned", "build.planned"]),
]


@pytest.mark.parametrize("name,settings,observed,state,builds,events", CASES, ids=[c[0] for c in CASES])
def test_plan_repository(name, settings, observed, state, builds, events):
    r = repo(**settings)
    plan = plan_repository(r, observed, state)
    assert [(b.kind.value, b.ref, b.sha) for b in plan.builds] == builds
    assert [d.event for d in plan.decisions] == events
    # The state to save is exactly what was observed (where observed) and marks the baseline.
    assert plan.new_state.baseline
    if observed.tags is not None:
        assert plan.new_state.tags == observed.tags
    if observed.branch_checked:
        assert plan.new_state.branch_head == observed.branch_head


def test_replanning_with_the_saved_state_plans_nothing():
    """Idempotence: whatever a plan saves, observing the same again plans nothing (no double builds)."""
    r = repo()
    for _, settings, observed, state, _, _ in CASES:
        first = plan_repository(repo(**settings), observed, state)
        second = plan_repository(r, observed, first.new_state)
        assert second.builds == ()


def test_release_build_carries_normalised_version():
    plan = plan_repository(repo(), seen(A, {"v1.0.0": A, "v2.3.4+build.7": B}), BASE)
    assert plan.builds == (BuildRequest("r", BuildKind.RELEASE, "v2.3.4+build.7", B, "2.3.4+build.7"),)


CHART_CASES = [
    ("baseline", ChartState(), {("app", "1.0.0"): "d1"}, [], [], ["charts.baseline_recorded"]),
    ("new version", ChartState(True, {("app", "1.0.0"): "d1"}), {("app", "1.0.0"): "d1", ("app", "1.1.0"): "d2"},
     [("app", "1.1.0", "added")], [], ["chart.changed"]),
    ("re-pushed version with a new digest", ChartState(True, {("app", "1.0.0"): "d1"}), {("app", "1.0.0"): "d9"},
     [("app", "1.0.0", "repushed")], [], ["chart.changed"]),
    ("removed version triggers nothing", ChartState(True, {("app", "1.0.0"): "d1", ("app", "0.9.0"): "d0"}),
     {("app", "1.0.0"): "d1"}, [], [("app", "0.9.0")], ["chart.removed"]),
    ("v prefix and pre-release kept as written", ChartState(True, {}), {("app", "v0.0.67-eb89a6c"): "d"},
     [("app", "v0.0.67-eb89a6c", "added")], [], ["chart.changed"]),
]


@pytest.mark.parametrize("name,state,index,changes,removed,events", CHART_CASES, ids=[c[0] for c in CHART_CASES])
def test_plan_charts(name, state, index, changes, removed, events):
    plan = plan_charts(index, state)
    assert [(c.name, c.version, c.change) for c in plan.changes] == changes
    assert list(plan.removed) == removed
    assert [d.event for d in plan.decisions] == events
    assert plan.new_state == ChartState(True, index)
    assert plan.apply_needed == bool(changes)


def test_plan_charts_watches_only_listed_charts():
    plan = plan_charts({("app", "2"): "x", ("other", "1"): "y"}, ChartState(True, {}), watched=("app",))
    assert [(c.name, c.version) for c in plan.changes] == [("app", "2")]
    assert ("other", "1") not in plan.new_state.versions
