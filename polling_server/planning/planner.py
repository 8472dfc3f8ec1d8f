"""The decisions: what to build and what to apply, from observations and stored state. Pure: no I/O at all.

Repository rules (see README, "What gets built"):
- First poll (no baseline): record what is there and build nothing, unless `initial_build` asks for one staging
  build of the current head. Changes made while the daemon was down are NOT hidden by this: the baseline is
  recorded only once, and every later poll (also after a restart) compares against the stored state.
- The watched branch's head differs from the stored head: one staging build of the new head. A branch that went
  away plans nothing; a head that comes back to a commit already built is built again (it is what the branch
  holds now, and `staging` must follow it).
- A tag that is new and names a semver version: one release build of the commit it points to. A tag that moved to
  another commit: rebuilt, with a warning. A deleted tag plans nothing. A tag that is not semver: ignored, logged
  once when first seen.
- `approve_major`: a release whose major is higher than the highest released major (`highest_major`: stored
  semver tags and successful release builds, pre-releases never counting; None when nothing was released yet)
  is planned gated: it waits for an approval (`release.awaiting_approval`). The first release is not gated, and
  neither is a pre-release of a new major (it moves no floating tag).
Events and reconciliation both end here as an `Observation`, and both compare against the same stored state, so
the same commit or tag is never planned twice.

Chart rules: the change key is (name, version, digest); a new version or a re-pushed one (new digest) is a change,
a removed version is logged only; the first poll records a baseline.
"""

from __future__ import annotations

from collections.abc import Mapping

from polling_server.config import RepositorySettings
from polling_server.planning.model import (
    BuildKind,
    BuildRequest,
    ChartChange,
    ChartKey,
    ChartPlan,
    ChartState,
    Decision,
    Observation,
    RepoPlan,
    RepoState,
)
from polling_server.planning.versions import parse_release_tag


def plan_repository(repo: RepositorySettings, observed: Observation, state: RepoState,
                    highest_major: int | None = None) -> RepoPlan:
    """Turn one poll's observation of `repo` into builds and the state to save with them."""
    if not state.baseline:
        return _plan_baseline(repo, observed)

    builds: list[BuildRequest] = []
    decisions: list[Decision] = []
    head = state.branch_head
    if observed.branch_checked and observed.branch_head != state.branch_head:
        head = observed.branch_head
        if head is None:
            decisions.append(Decision("branch.deleted", {"repo": repo.name, "ref": repo.branch}, "warning"))
        else:
            builds.append(BuildRequest(repo.name, BuildKind.STAGING, repo.branch, head))
            decisions.append(Decision("build.planned", {
                "repo": repo.name, "kind": "staging", "ref": repo.branch, "sha": head,
                "previous_sha": state.branch_head}))

    tags = dict(state.tags)
    if observed.tags is not None:
        tags = dict(observed.tags)
        for name in sorted(set(state.tags) - set(observed.tags)):
            decisions.append(Decision("tag.deleted", {"repo": repo.name, "ref": name, "sha": state.tags[name]}))
        for name in _sorted_tags(observed.tags):
            sha = observed.tags[name]
            previous = state.tags.get(name)
            if previous == sha:
                continue
            version = parse_release_tag(name)
            if version is None:
                if previous is None:
                    decisions.append(Decision("tag.ignored", {
                        "repo": repo.name, "ref": name, "sha": sha, "reason": "not a semver version"}))
                continue
            if previous is not None:
                decisions.append(Decision("tag.moved", {
                    "repo": repo.name, "ref": name, "sha": sha, "previous_sha": previous}, "warning"))
            gated = (repo.approve_major and highest_major is not None and not version.prerelease
                     and version.major > highest_major)
            builds.append(BuildRequest(repo.name, BuildKind.RELEASE, name, sha, str(version), gated=gated))
            if gated:
                decisions.append(Decision("release.awaiting_approval", {
                    "repo": repo.name, "ref": name, "sha": sha, "version": str(version),
                    "highest_released_major": highest_major}, "warning"))
            else:
                decisions.append(Decision("build.planned", {
                    "repo": repo.name, "kind": "release", "ref": name, "sha": sha, "version": str(version)}))

    deleted = tuple(sorted(set(state.tags) - set(observed.tags))) if observed.tags is not None else ()
    return RepoPlan(tuple(builds), RepoState(True, head, tags), tuple(decisions), deleted)


def _plan_baseline(repo: RepositorySettings, observed: Observation) -> RepoPlan:
    state = RepoState(True, observed.branch_head, dict(observed.tags or {}))
    decisions = [Decision("baseline.recorded", {
        "repo": repo.name, "ref": repo.branch, "sha": observed.branch_head, "tags": len(state.tags)})]
    builds: tuple[BuildRequest, ...] = ()
    if repo.initial_build and observed.branch_head:
        builds = (BuildRequest(repo.name, BuildKind.STAGING, repo.branch, observed.branch_head),)
        decisions.append(Decision("build.planned", {
            "repo": repo.name, "kind": "staging", "ref": repo.branch, "sha": observed.branch_head,
            "reason": "initial_build"}))
    return RepoPlan(builds, state, tuple(decisions))


def _sorted_tags(tags: Mapping[str, str]) -> list[str]:
    """Semver tags in version order (oldest first, so the newest release is planned last), then the rest."""
    versions = {n: parse_release_tag(n) for n in tags}
    semver_tags = sorted((n for n, v in versions.items() if v is not None), key=lambda n: (versions[n], n))
    return semver_tags + sorted(n for n, v in versions.items() if v is None)


def plan_charts(index: Mapping[ChartKey, str], state: ChartState, watched: tuple[str, ...] = ()) -> ChartPlan:
    """Compare the Helm repository's (name, version) -> digest map with what was stored."""
    if watched:
        index = {k: v for k, v in index.items() if k[0] in watched}
    new_state = ChartState(True, dict(index))
    if not state.baseline:
        charts = len({name for name, _ in index})
        return ChartPlan((), (), new_state, (Decision("charts.baseline_recorded", {
            "charts": charts, "versions": len(index)}),))
    changes = []
    decisions = []
    for key in sorted(index):
        digest = index[key]
        previous = state.versions.get(key)
        if previous == digest:
            continue
        change = ChartChange(key[0], key[1], digest, "added" if previous is None else "repushed")
        changes.append(change)
        decisions.append(Decision("chart.changed", {
            "chart": key[0], "version": key[1], "digest": digest, "change": change.change}))
    removed = tuple(sorted(set(state.versions) - set(index)))
    for name, version in removed:
        decisions.append(Decision("chart.removed", {"chart": name, "version": version}))
    return ChartPlan(tuple(changes), removed, new_state, tuple(decisions))
