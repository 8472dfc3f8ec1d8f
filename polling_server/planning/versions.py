"""Semver rules for release tags and the image tags a release gets. Pure functions, no I/O."""

from __future__ import annotations

import re

import semver

_DOCKER_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


def parse_release_tag(tag: str) -> semver.Version | None:
    """The semver version a git tag names (`v1.2.3`, `1.2.3`, `1.2.0-rc.1`), or None when it names none."""
    text = tag[1:] if tag[:1] in ("v", "V") else tag
    try:
        return semver.Version.parse(text)
    except (ValueError, TypeError):
        return None


def image_tag_for(version: semver.Version) -> str:
    """The image tag of a version: the version itself, with `+` (not allowed in image tags) written as `-`."""
    tag = str(version).replace("+", "-")
    if not _DOCKER_TAG.match(tag):
        raise ValueError(f"version {version} cannot be written as an image tag")
    return tag
