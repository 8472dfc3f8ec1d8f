"""parse_index and ChartIndexSource: real index fixtures, derived variants, HTTP behaviour over `responses`."""

from __future__ import annotations

import base64

import pytest
import requests
import responses
import yaml
from responses import matchers

from polling_server.config import parse_settings
from polling_server.errors import MalformedResponse, SourceRejected, SourceUnavailable
from polling_server.http import HttpClient
from polling_server.sources import chart_index as charts
from polling_server.sources.chart_index import ChartIndexSource, parse_index
from polling_server.state import Cursor
from tests.fixture_paths import ACTIVITI, CHARTMUSEUM_401, CHARTMUSEUM_EMPTY, OPENFAAS, STAKATER

REPO_URL = "http://charts.test/ctx"
INDEX_URL = f"{REPO_URL}/index.yaml"


def source(**repo) -> ChartIndexSource:
    settings = parse_settings({"state_path": "unused.db", "chart_repository": {"url": REPO_URL, **repo},
                               "helm_api": {"url": "http://helm-api.test"}}, env={})
    return ChartIndexSource(settings.chart_repository, HttpClient(max_retries=1, sleep=lambda s: None))


@pytest.fixture
def rsps():
    with responses.RequestsMock(assert_all_requests_are_fired=True) as r:
        yield r


# --- parsing ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("path", "charts", "versions"), [
    (STAKATER, 107, 2026),
    (OPENFAAS, 15, 372),
    (ACTIVITI, 0, 0),
    (CHARTMUSEUM_EMPTY, 0, 0),
])
def test_real_indexes_parse(path, charts, versions):
    index = parse_index(path.read_bytes())
    assert len(index) == versions
    assert len({name for name, _ in index}) == charts
    assert all(isinstance(d, str) and d for d in index.values())


def test_versions_are_kept_exactly_as_written_in_the_real_index():
    index = parse_index(STAKATER.read_bytes())
    versions = {v for _, v in index}
    # The fixture holds 393 `v`-prefixed versions and 25 pre-releases (fixtures/SOURCES.md).
    assert sum(v.startswith("v") for v in versions) > 0
    assert "v1.2.2" in versions and "0.0.67-eb89a6c" in versions
    assert sum(v.startswith("v") for _, v in index) == 393


def test_scalars_stay_text():
    # Hand-written variant: unquoted `1.10` must not become the float 1.1, an all-digit digest not an int.
    body = "apiVersion: v1\nentries:\n  a:\n  - version: 1.10\n    digest: 1234\n    created: 2020-01-01T00:00:00Z\n"
    assert parse_index(body) == {("a", "1.10"): "1234"}


def test_parse_uses_the_c_parser_and_matches_a_full_load():
    """Speed is measured in benchmarks/; here: the C parser is used, and the result equals a full safe_load."""
    if hasattr(yaml, "CBaseLoader"):
        assert charts._EVENT_LOADER is yaml.CBaseLoader
    body = OPENFAAS.read_bytes()
    full = yaml.load(body, Loader=yaml.CBaseLoader)  # noqa: S506 - BaseLoader builds no objects; text like parse_index
    expected = {(name, e["version"]): e["digest"] for name, entries in full["entries"].items() for e in entries}
    assert parse_index(body) == expected


def test_charts_filter_skips_other_charts_even_broken_ones():
    body = ("entries:\n  wanted:\n  - version: 1.0.0\n    digest: aa\n"
            "  other:\n  - version: 2.0.0\n")  # `other` has no digest, but nobody watches it
    assert parse_index(body, ("wanted",)) == {("wanted", "1.0.0"): "aa"}
    with pytest.raises(MalformedResponse, match="'other'"):
        parse_index(body)


def test_a_version_listed_twice_keeps_the_first():
    body = "entries:\n  a:\n  - version: 1.0.0\n    digest: first\n  - version: 1.0.0\n    digest: second\n"
    assert parse_index(body) == {("a", "1.0.0"): "first"}


def _without_digest_of_second_alertmanager_entry() -> str:
    # Derived from the stakater fixture: the digest line of alertmanager's second entry is dropped.
    text = STAKATER.read_text()
    digest = "    digest: 0cfafca90cca74a997f182d6be5bb370a35ab6e0e9b2bb19362df512bf41f926\n"
    assert text.count(digest) == 1
    return text.replace(digest, "")


MALFORMED = [
    ("not yaml", "entries: [unclosed\n", "not valid YAML"),
    ("html page", "<html><body>Sign in</body></html>", "not a Helm repository index"),
    ("json error", '{"error":"not found"}', "no `entries` key"),
    ("entries is a list", "entries:\n- a\n", "`entries` must be a mapping"),
    ("chart not a list", "entries:\n  a: 1.0.0\n", "chart 'a': must be a list"),
    ("entry not a mapping", "entries:\n  a:\n  - 1.0.0\n", "chart 'a' entry 0: must be a mapping"),
    ("no version", "entries:\n  a:\n  - digest: abc\n", "chart 'a' entry 0: has no version"),
    ("empty version", "entries:\n  a:\n  - version: ''\n    digest: abc\n", "chart 'a' entry 0: has no version"),
    ("no digest", "entries:\n  a:\n  - version: 1.0.0\n", "chart 'a' version '1.0.0' \\(entry 0\\): has no digest"),
    ("real index, no digest", _without_digest_of_second_alertmanager_entry(),
     "chart 'alertmanager' version '1.0.15' \\(entry 1\\): has no digest"),
]


@pytest.mark.parametrize(("body", "message"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_indexes_name_the_problem(body, message):
    with pytest.raises(MalformedResponse, match=message):
        parse_index(body, where="http://charts.test/index.yaml")


# --- nulls, with libyaml's parser and with the pure-Python one -----------------------------------------------
LOADERS = [
    pytest.param(getattr(yaml, "CBaseLoader", None), id="libyaml",
                 marks=pytest.mark.skipif(not hasattr(yaml, "CBaseLoader"), reason="PyYAML built without libyaml")),
    pytest.param(yaml.BaseLoader, id="pure-python"),
]

ENTRY = "entries:\n  a:\n  - version: {version}\n    digest: {digest}\n"
NO_DIGEST = "chart 'a' version '1.0.0' \\(entry 0\\): has no digest"
NO_VERSION = "chart 'a' entry 0: has no version"
# (id, body, the index parsed, or the MalformedResponse message expected). Hand-written variants of an index.
NULLS = [
    ("digest ~", ENTRY.format(version="1.0.0", digest="~"), NO_DIGEST),
    ("digest null", ENTRY.format(version="1.0.0", digest="null"), NO_DIGEST),
    ("digest NULL", ENTRY.format(version="1.0.0", digest="NULL"), NO_DIGEST),
    ("digest empty", ENTRY.format(version="1.0.0", digest=""), NO_DIGEST),
    ("digest !!null", ENTRY.format(version="1.0.0", digest="!!null x"), NO_DIGEST),
    ("version null", ENTRY.format(version="null", digest="aa"), NO_VERSION),
    ("version ~", ENTRY.format(version="~", digest="aa"), NO_VERSION),
    ("version Null", ENTRY.format(version="Null", digest="aa"), NO_VERSION),
    ("flow chart ~", "entries: {web: ~}\n", {}),
    ("chart null beside a chart",
     "entries:\n  web: null\n  api:\n  - version: 1.0.0\n    digest: aa\n", {("api", "1.0.0"): "aa"}),
    ("chart empty", "entries:\n  web:\n", {}),
    ("entries ~", "apiVersion: v1\nentries: ~\n", {}),
    ("entries empty", "apiVersion: v1\nentries:\ngenerated: x\n", {}),
    ("chart name ~", "entries:\n  ~:\n  - version: 1.0.0\n    digest: aa\n",
     "entries: a chart name must be a non-empty string, got nothing"),
    # Quoted or tagged as text, the same words are text, kept as written.
    ("digest quoted ~", ENTRY.format(version="1.0.0", digest='"~"'), {("a", "1.0.0"): "~"}),
    ("version quoted null", ENTRY.format(version="'null'", digest="aa"), {("a", "null"): "aa"}),
    ("version !!str null", ENTRY.format(version="!!str null", digest="aa"), {("a", "null"): "aa"}),
    ("digest !!str ~", ENTRY.format(version="1.0.0", digest="!!str ~"), {("a", "1.0.0"): "~"}),
]


def _outcome(body, loader) -> object:
    try:
        return parse_index(body, loader=loader)
    except MalformedResponse as e:
        return str(e)


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize(("body", "expected"), [n[1:] for n in NULLS], ids=[n[0] for n in NULLS])
def test_nulls_are_missing_values(loader, body, expected):
    if isinstance(expected, str):
        with pytest.raises(MalformedResponse, match=expected):
            parse_index(body, loader=loader)
    else:
        assert parse_index(body, loader=loader) == expected


# The YAML syntax errors' own wording differs between the two parsers, so "not yaml" is left out; so are the
# 1.2 MB stakater variants, which take seconds through the pure-Python parser (openfaas is a real index too).
_SAME = [(n[0], n[1]) for n in NULLS] \
    + [(m[0], m[1]) for m in MALFORMED if m[0] not in ("not yaml", "real index, no digest")] \
    + [("openfaas", OPENFAAS.read_text()), ("activiti", ACTIVITI.read_text()),
       ("chartmuseum empty", CHARTMUSEUM_EMPTY.read_text())]


@pytest.mark.skipif(not hasattr(yaml, "CBaseLoader"), reason="PyYAML built without libyaml")
@pytest.mark.parametrize("body", [b for _, b in _SAME], ids=[i for i, _ in _SAME])
def test_libyaml_and_pure_python_parse_the_same(body):
    assert _outcome(body, yaml.CBaseLoader) == _outcome(body, yaml.BaseLoader)


def test_a_chart_listed_as_null_does_not_stop_the_poll(rsps):
    rsps.get(INDEX_URL, body="apiVersion: v1\nentries:\n  web: ~\n  api:\n  - version: 1.0.0\n    digest: aa\n")
    fetched = source().fetch(Cursor())
    assert fetched.index == {("api", "1.0.0"): "aa"}


# --- the source over HTTP ----------------------------------------------------------------------------------
MODIFIED = "Wed, 01 Jul 2026 10:00:00 GMT"
A_MINUTE_LATER = "Wed, 01 Jul 2026 10:01:00 GMT"


def test_fetch_parses_and_returns_validators(rsps):
    body = OPENFAAS.read_bytes()
    rsps.get(INDEX_URL, body=body, headers={"ETag": 'W/"v1"', "Last-Modified": MODIFIED, "Date": A_MINUTE_LATER})
    fetched = source().fetch(Cursor())
    assert fetched.changed and not fetched.not_modified
    assert len(fetched.index) == 372
    # The ETag is kept; Last-Modified is not needed beside it.
    assert fetched.cursor == Cursor('W/"v1"', None, fetched.index_hash)
    assert fetched.index_hash == fetched.sha256
    # No validators were held, so none were sent.
    sent = rsps.calls[0].request.headers
    assert "If-None-Match" not in sent and "If-Modified-Since" not in sent


def test_conditional_request_with_an_etag_and_304(rsps):
    etag = '"abc123"'
    rsps.get(INDEX_URL, status=304, match=[matchers.header_matcher({"If-None-Match": etag})])
    fetched = source().fetch(Cursor(etag, None, "somehash"))
    assert fetched.not_modified and not fetched.changed
    assert fetched.cursor == Cursor(etag, None, "somehash")
    assert "If-Modified-Since" not in rsps.calls[0].request.headers


def test_conditional_request_with_last_modified_and_304(rsps):
    rsps.get(INDEX_URL, status=304, match=[matchers.header_matcher({"If-Modified-Since": MODIFIED})])
    fetched = source().fetch(Cursor(None, MODIFIED, "somehash"))
    assert fetched.not_modified and fetched.cursor == Cursor(None, MODIFIED, "somehash")
    assert "If-None-Match" not in rsps.calls[0].request.headers


def test_an_etag_is_preferred_to_last_modified_when_both_are_held(rsps):
    etag = '"abc123"'
    rsps.get(INDEX_URL, status=304, match=[matchers.header_matcher({"If-None-Match": etag})])
    source().fetch(Cursor(etag, MODIFIED, "somehash"))
    assert "If-Modified-Since" not in rsps.calls[0].request.headers


# (ETag, Last-Modified, Date) of a response -> what is kept to send back.
VALIDATORS = [
    ("etag only", ('"e1"', None, None), ('"e1"', None)),
    ("etag beats last-modified", ('W/"e1"', MODIFIED, A_MINUTE_LATER), ('W/"e1"', None)),
    ("etag even in the same second", ('"e1"', MODIFIED, MODIFIED), ('"e1"', None)),
    ("last-modified a minute before date", (None, MODIFIED, A_MINUTE_LATER), (None, MODIFIED)),
    ("last-modified one second before date", (None, MODIFIED, "Wed, 01 Jul 2026 10:00:01 GMT"), (None, MODIFIED)),
    ("last-modified in the same second", (None, MODIFIED, MODIFIED), (None, None)),
    ("last-modified after date (clock skew)", (None, A_MINUTE_LATER, MODIFIED), (None, None)),
    ("last-modified without date", (None, MODIFIED, None), (None, None)),
    ("date unreadable", (None, MODIFIED, "yesterday"), (None, None)),
    ("last-modified unreadable", (None, "yesterday", A_MINUTE_LATER), (None, None)),
    ("-0000 zone", (None, "Wed, 01 Jul 2026 10:00:00 -0000", A_MINUTE_LATER),
     (None, "Wed, 01 Jul 2026 10:00:00 -0000")),
    ("nothing", (None, None, A_MINUTE_LATER), (None, None)),
]


@pytest.mark.parametrize(("headers", "kept"), [v[1:] for v in VALIDATORS], ids=[v[0] for v in VALIDATORS])
def test_validators_to_keep(headers, kept):
    assert charts.validators_to_keep(*headers) == kept


def test_a_last_modified_from_the_same_second_is_not_sent_back(rsps):
    body = ACTIVITI.read_bytes()
    rsps.get(INDEX_URL, body=body, headers={"Last-Modified": MODIFIED, "Date": MODIFIED})
    rsps.get(INDEX_URL, body=body, headers={"Last-Modified": MODIFIED, "Date": A_MINUTE_LATER})
    rsps.get(INDEX_URL, status=304, match=[matchers.header_matcher({"If-Modified-Since": MODIFIED})])
    src = source()
    first = src.fetch(Cursor())
    assert first.cursor == Cursor(None, None, first.index_hash)
    # Nothing to validate with: the body is read again, and now the same Last-Modified is a minute old.
    second = src.fetch(first.cursor)
    assert "If-Modified-Since" not in rsps.calls[1].request.headers
    assert not second.changed and second.cursor == Cursor(None, MODIFIED, first.index_hash)
    assert src.fetch(second.cursor).not_modified


def test_a_304_without_validators_keeps_the_ones_sent(rsps):
    rsps.get(INDEX_URL, status=304, headers={"Date": A_MINUTE_LATER})
    assert source().fetch(Cursor(None, MODIFIED, "h")).cursor == Cursor(None, MODIFIED, "h")


def test_validators_without_a_processed_index_are_not_sent(rsps):
    rsps.get(INDEX_URL, body=ACTIVITI.read_bytes())
    source().fetch(Cursor('"abc"', None, None))
    assert "If-None-Match" not in rsps.calls[0].request.headers


def test_same_body_is_not_parsed_again(rsps, monkeypatch):
    body = CHARTMUSEUM_EMPTY.read_bytes()  # ChartMuseum: no ETag, no Last-Modified
    rsps.get(INDEX_URL, body=body)
    rsps.get(INDEX_URL, body=body)
    src = source()
    first = src.fetch(Cursor())
    assert first.changed and first.cursor.etag is None and first.cursor.last_modified is None

    def must_not_parse(*a, **k):
        raise AssertionError("parsed an index already processed")

    monkeypatch.setattr(charts, "parse_index", must_not_parse)
    second = src.fetch(first.cursor)
    assert not second.changed and not second.not_modified and second.index_hash == first.index_hash


def test_charts_filter_is_part_of_the_index_hash(rsps):
    body = OPENFAAS.read_bytes()
    rsps.get(INDEX_URL, body=body)
    rsps.get(INDEX_URL, body=body)
    everything = source().fetch(Cursor())
    some = source(charts=["cron-connector"]).fetch(Cursor(value=everything.index_hash))
    # Same bytes, another filter: parsed again, so a chart newly added to `charts:` is seen.
    assert some.changed and some.sha256 == everything.sha256 and some.index_hash != everything.index_hash
    assert {name for name, _ in some.index} == {"cron-connector"}


def test_basic_auth_is_sent(rsps):
    rsps.get(INDEX_URL, body=ACTIVITI.read_bytes())
    source(username="ci", password="pa55w0rd").fetch(Cursor())
    expected = "Basic " + base64.b64encode(b"ci:pa55w0rd").decode()
    assert rsps.calls[0].request.headers["Authorization"] == expected


def test_bearer_token_is_sent(rsps):
    rsps.get(INDEX_URL, body=ACTIVITI.read_bytes(),
             match=[matchers.header_matcher({"Authorization": "Bearer jwt-t0ken"})])
    source(token="jwt-t0ken").fetch(Cursor())


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_refusals_are_source_rejected_without_secrets(rsps, status):
    rsps.get(INDEX_URL, status=status, body=CHARTMUSEUM_401.read_bytes(), content_type="application/json")
    with pytest.raises(SourceRejected) as e:
        source(username="ci", password="pa55w0rd").fetch(Cursor())
    assert e.value.status == status
    assert f"HTTP {status}" in str(e.value) and "charts.test/ctx/index.yaml" in str(e.value)
    assert "pa55w0rd" not in str(e.value)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_are_source_unavailable_after_retries(rsps, status):
    rsps.get(INDEX_URL, status=status)
    rsps.get(INDEX_URL, status=status)
    with pytest.raises(SourceUnavailable, match=f"HTTP {status} after 2 attempts"):
        source(token="jwt-t0ken").fetch(Cursor())
    assert len(rsps.calls) == 2


def test_connection_refused_is_source_unavailable(rsps):
    rsps.get(INDEX_URL, body=requests.ConnectionError("Connection refused"))
    rsps.get(INDEX_URL, body=requests.ConnectionError("Connection refused"))
    with pytest.raises(SourceUnavailable, match="connection failed"):
        source().fetch(Cursor())


def test_userinfo_in_the_url_is_kept_out_of_errors(rsps):
    settings = parse_settings({"state_path": "x.db", "chart_repository": {"url": "http://u:hunter2@charts.test"},
                               "helm_api": {"url": "http://helm-api.test"}}, env={})
    rsps.get("http://u:hunter2@charts.test/index.yaml", status=401)
    with pytest.raises(SourceRejected) as e:
        ChartIndexSource(settings.chart_repository, HttpClient(sleep=lambda s: None)).fetch(Cursor())
    assert "hunter2" not in str(e.value)
