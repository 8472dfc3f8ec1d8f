"""Checks that a webhook delivery comes from whom it says: GitHub, GitLab, Gitea, or the chart CI step. Pure.

Every comparison is constant-time (`hmac.compare_digest`) and over the raw body as received, before any parsing.
Several secrets may be accepted at once, so a secret can be rotated without losing deliveries. A missing or
malformed header is simply not valid: no exception.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _hmac_hex(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def github_signature_valid(body: bytes, header: str | None, secrets: Iterable[str]) -> bool:
    """`X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>` with any of the secrets."""
    if not header or not header.startswith("sha256="):
        return False
    given = header[len("sha256="):].strip().lower()
    if not _HEX64.match(given):
        return False
    return any(hmac.compare_digest(_hmac_hex(str(s), body), given) for s in secrets if s)


def gitea_signature_valid(body: bytes, header: str | None, secrets: Iterable[str]) -> bool:
    """`X-Gitea-Signature: <hex HMAC-SHA256 of the body>` (no prefix); an empty header never matches."""
    given = (header or "").strip().lower()
    if not _HEX64.match(given):
        return False
    return any(hmac.compare_digest(_hmac_hex(str(s), body), given) for s in secrets if s)


def token_valid(given: str | None, tokens: Iterable[str]) -> bool:
    """A shared token sent back verbatim (GitLab's `X-Gitlab-Token`, a Bearer token)."""
    if not given:
        return False
    data = given.encode()
    return any(hmac.compare_digest(data, str(t).encode()) for t in tokens if t)


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None
