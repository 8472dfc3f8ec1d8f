"""Reading a Helm chart repository: fetch its `index.yaml` (ChartIndexSource) and parse it into
(name, version) -> digest (parse_index). The poll step that plans from it is chart_watch.py.

Only `GET <url>/index.yaml` is used, which every Helm repository serves (ChartMuseum too, even with its /api routes
disabled). An ETag is sent back when the server gives one, a Last-Modified only when it can tell versions apart
(see `validators_to_keep`); ChartMuseum sends neither, so the body is hashed and an index whose hash was already
processed is not parsed again.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import yaml

from polling_server.config import ChartRepositorySettings
from polling_server.errors import MalformedResponse, SourceRejected, SourceUnavailable
from polling_server.http import HttpClient, Unreachable, safe_url, server_message
from polling_server.planning.model import ChartKey
from polling_server.state import Cursor

log = logging.getLogger(__name__)

USER_AGENT = "helmsman-cd-polling-server"
_SOURCE = "charts"


# libyaml's C parser when present (pure Python otherwise). Only its event stream is used: building Python objects
# for every field of every version (urls, maintainers, created...) is what makes yaml.safe_load slow on big indexes.
_EVENT_LOADER = getattr(yaml, "CBaseLoader", yaml.BaseLoader)
_NULLS = frozenset({"", "~", "null", "Null", "NULL"})
_NULL_TAG = "tag:yaml.org,2002:null"
_OPEN = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_CLOSE = (yaml.MappingEndEvent, yaml.SequenceEndEvent)


def _is_null(ev: yaml.Event) -> bool:
    """YAML's null, read as "missing": a plain `~`, `null` or empty scalar, or one tagged `!!null`.

    `implicit[0]` (plain and untagged) is what tells `~` from `"~"` or `!!str null`. The style cannot: libyaml's
    parser reports a plain scalar's style as '' where the pure-Python one reports None.
    """
    if not isinstance(ev, yaml.ScalarEvent):
        return False
    return ev.tag == _NULL_TAG or (ev.implicit[0] and ev.value in _NULLS)


def _kind(ev: yaml.Event) -> str:
    if isinstance(ev, yaml.MappingStartEvent):
        return "a mapping"
    if isinstance(ev, yaml.SequenceStartEvent):
        return "a list"
    if isinstance(ev, yaml.ScalarEvent) and not _is_null(ev):
        return f"the text {ev.value[:40]!r}"
    return "nothing"


class _IndexEvents:
    """Reads (name, version) -> digest straight from the YAML event stream, skipping every other field.

    Scalars stay text exactly as written: `1.10` is not the float 1.1, an all-digit digest is not an int.
    """

    def __init__(self, events, watched: tuple[str, ...], where: str):
        self.events = iter(events)
        self.watched = watched
        self.where = where

    def _next(self) -> yaml.Event:
        return next(self.events)

    def _skip(self, ev: yaml.Event) -> None:
        """Skip the rest of the node that starts with `ev`."""
        depth = 1 if isinstance(ev, _OPEN) else 0
        while depth:
            ev = self._next()
            if isinstance(ev, _OPEN):
                depth += 1
            elif isinstance(ev, _CLOSE):
                depth -= 1

    def _bad(self, message: str) -> MalformedResponse:
        return MalformedResponse(f"{self.where}: {message}")

    def read(self) -> dict[ChartKey, str]:
        ev = self._next()
        while isinstance(ev, yaml.StreamStartEvent | yaml.DocumentStartEvent):
            ev = self._next()
        if not isinstance(ev, yaml.MappingStartEvent):
            raise self._bad(f"not a Helm repository index (expected a mapping with `entries`, got {_kind(ev)})")
        index: dict[ChartKey, str] | None = None
        while not isinstance(ev := self._next(), yaml.MappingEndEvent):
            value = self._next()
            if isinstance(ev, yaml.ScalarEvent) and ev.value == "entries":
                index = self._entries(value)
            else:
                self._skip(ev)
                self._skip(value)
        if index is None:
            raise self._bad("not a Helm repository index (no `entries` key)")
        return index

    def _entries(self, ev: yaml.Event) -> dict[ChartKey, str]:
        index: dict[ChartKey, str] = {}
        if _is_null(ev):
            return index
        if not isinstance(ev, yaml.MappingStartEvent):
            raise self._bad(f"`entries` must be a mapping of chart names, got {_kind(ev)}")
        while not isinstance(key := self._next(), yaml.MappingEndEvent):
            versions = self._next()
            if not isinstance(key, yaml.ScalarEvent) or _is_null(key):
                raise self._bad(f"entries: a chart name must be a non-empty string, got {_kind(key)}")
            name = key.value
            if self.watched and name not in self.watched:
                self._skip(versions)
                continue
            if _is_null(versions):
                continue
            if not isinstance(versions, yaml.SequenceStartEvent):
                raise self._bad(f"chart {name!r}: must be a list of chart versions, got {_kind(versions)}")
            i = 0
            while not isinstance(entry := self._next(), yaml.SequenceEndEvent):
                version, digest = self._entry(name, i, entry)
                # A hand-made index may list a version twice; like Helm, the first one listed wins.
                index.setdefault((name, version), digest)
                i += 1
        return index

    def _entry(self, name: str, i: int, ev: yaml.Event) -> tuple[str, str]:
        what = f"chart {name!r} entry {i}"
        if not isinstance(ev, yaml.MappingStartEvent):
            raise self._bad(f"{what}: must be a mapping, got {_kind(ev)}")
        fields: dict[str, str] = {}
        while not isinstance(key := self._next(), yaml.MappingEndEvent):
            value = self._next()
            if isinstance(key, yaml.ScalarEvent) and key.value in ("version", "digest") and \
                    isinstance(value, yaml.ScalarEvent) and not _is_null(value):
                fields[key.value] = value.value
            else:
                self._skip(key)
                self._skip(value)
        version, digest = fields.get("version", "").strip(), fields.get("digest", "").strip()
        if not version:
            raise self._bad(f"{what}: has no version")
        if not digest:
            raise self._bad(f"chart {name!r} version {fields['version']!r} (entry {i}): has no digest")
        return fields["version"], fields["digest"]


@dataclass(frozen=True)
class IndexFetch:
    """One read of index.yaml.

    `cursor` is what to store after this index has been processed: the validators worth sending back
    (`validators_to_keep`) and, as `value`, `index_hash`. `index` is None when there is nothing new to plan from:
    the server answered 304 (`not_modified`) or the body hashes to the index already processed.
    """

    cursor: Cursor
    not_modified: bool
    sha256: str | None  # of the body; None on 304
    index_hash: str | None  # the key stored with the chart state: the body's sha256, qualified by the charts filter
    index: Mapping[ChartKey, str] | None

    @property
    def changed(self) -> bool:
        return self.index is not None


def parse_index(body: bytes | str, watched: tuple[str, ...] = (), where: str = "index.yaml",
                loader: type = _EVENT_LOADER) -> dict[ChartKey, str]:
    """Parse a Helm repository index into (chart name, version) -> digest.

    Charts outside `watched` (when given) are skipped without being checked, so a broken entry of a chart nobody
    watches does not stop the watched ones. Raises MalformedResponse naming the chart and entry at fault.
    `loader` is the YAML event source, libyaml's when installed; either one gives the same result.
    """
    reader = _IndexEvents(yaml.parse(body, Loader=loader), watched, where)
    try:
        try:
            return reader.read()
        except MalformedResponse:
            # A wrong shape found early may be the first sign of a document that is not YAML at all: say that.
            for _ in reader.events:
                pass
            raise
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise MalformedResponse(f"{where}: not valid YAML: {problem}{at}") from None
    except StopIteration:
        raise MalformedResponse(f"{where}: the document ends early") from None


def _http_date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)  # `-0000` parses naive; HTTP dates are UTC


def validators_to_keep(etag: str | None, last_modified: str | None, date: str | None) -> tuple[str | None, str | None]:
    """The (ETag, Last-Modified) of a response worth sending back as If-None-Match / If-Modified-Since.

    The ETag when there is one. Otherwise the Last-Modified only if it is at least one second before the response's
    `Date` (RFC 9110 8.8.2.2): Last-Modified has one-second resolution, so an index written again in the same
    second as the one served carries the same Last-Modified and would be answered 304 on every later poll. Without
    a usable validator the body is downloaded and its hash compared, which misses nothing.
    """
    if etag:
        return etag, None
    modified, served = _http_date(last_modified), _http_date(date)
    if modified is not None and served is not None and (served - modified).total_seconds() >= 1:
        return None, last_modified
    return None, None


class ChartIndexSource:
    """Reads `<chart_repository.url>/index.yaml`, conditionally, with the configured credentials."""

    def __init__(self, settings: ChartRepositorySettings, http: HttpClient | None = None):
        self.settings = settings
        self.url = f"{settings.url}/index.yaml"
        self.http = http or HttpClient(timeout=settings.timeout_seconds, max_retries=2, backoff_seconds=1.0,
                                       max_backoff_seconds=10.0)
        self._filter_tag = ""
        if settings.charts:
            names = "\n".join(sorted(set(settings.charts)))
            self._filter_tag = ";charts=" + hashlib.sha256(names.encode()).hexdigest()[:16]

    def _auth_kwargs(self) -> dict[str, Any]:
        s = self.settings
        headers = {"User-Agent": USER_AGENT, "Accept": "application/x-yaml, text/yaml, */*"}
        kwargs: dict[str, Any] = {"headers": headers}
        if s.token:
            headers["Authorization"] = f"Bearer {s.token}"
        elif s.username:
            kwargs["auth"] = (s.username, str(s.password or ""))
        return kwargs

    @staticmethod
    def _validators(resp) -> tuple[str | None, str | None, str | None]:
        return resp.headers.get("ETag"), resp.headers.get("Last-Modified"), resp.headers.get("Date")

    def fetch(self, cursor: Cursor) -> IndexFetch:
        """Read the index. `cursor` holds the validators last stored and, as `value`, the index hash processed."""
        where = safe_url(self.url)
        kwargs = self._auth_kwargs()
        # A 304 is useful only when we hold the index it refers to.
        conditional = bool(cursor.value) and bool(cursor.etag or cursor.last_modified)
        if conditional:
            # With both, a server must ignore If-Modified-Since (RFC 9110 13.2.2): the ETag alone decides.
            if cursor.etag:
                kwargs["headers"]["If-None-Match"] = cursor.etag
            else:
                kwargs["headers"]["If-Modified-Since"] = cursor.last_modified
        try:
            resp = self.http.get(self.url, **kwargs)
        except Unreachable as e:
            raise SourceUnavailable(f"chart repository {e}") from None

        if resp.status_code == 304:
            if not conditional:
                raise MalformedResponse(f"GET {where}: answered 304 Not Modified to an unconditional request")
            etag, modified = validators_to_keep(*self._validators(resp))
            if not (etag or modified):  # a 304 need not repeat them: the ones that earned it still hold
                etag, modified = cursor.etag, cursor.last_modified
            return IndexFetch(Cursor(etag, modified, cursor.value), True, None, cursor.value, None)
        if resp.status_code != 200:
            detail = f": {m}" if (m := server_message(resp)) else ""
            message = f"GET {where}: answered HTTP {resp.status_code}{detail}"
            if resp.status_code in (401, 403):
                message += " (check chart_repository username/password or token)"
            raise SourceRejected(message, resp.status_code)

        body = resp.content
        sha256 = hashlib.sha256(body).hexdigest()
        index_hash = sha256 + self._filter_tag
        new = Cursor(*validators_to_keep(*self._validators(resp)), index_hash)
        if index_hash == cursor.value:
            return IndexFetch(new, False, sha256, index_hash, None)
        return IndexFetch(new, False, sha256, index_hash, parse_index(body, self.settings.charts, where))
