"""Notifications as JSON to any webhook: the event's fields as one object, with a stable `id` (the outbox dedupe
key) so the receiver can drop a repeat (delivery is at least once: after a crash mid-send one may come twice).

With `secret` set, `X-Signature-256: sha256=<hex HMAC-SHA256 of the exact body>` (GitHub's scheme), so the
receiver can check the body came from us. Any 2xx is a success; 5xx, 408, 425 and 429 are sent again later, other
answers fail for good.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from polling_server.config import NotificationTarget
from polling_server.http import HttpClient
from polling_server.notify import target_http

SIGNATURE_HEADER = "X-Signature-256"


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def json_body(payload: Mapping[str, Any]) -> bytes:
    """The bytes sent (and signed): keys sorted, so the same event always gives the same body."""
    return json.dumps(dict(payload), sort_keys=True, separators=(",", ":")).encode()


class JsonWebhookSender:
    def __init__(self, http: HttpClient | None = None):
        self.http = http or target_http.default_client()

    def send(self, target: NotificationTarget, payload: Mapping[str, Any]) -> None:
        body = json_body(payload)
        headers = {"Content-Type": "application/json", "X-Helmsman-CD-Event": str(payload.get("event", ""))}
        if target.secret:
            headers[SIGNATURE_HEADER] = signature(str(target.secret), body)
        resp = target_http.post(self.http, target, body, headers)
        if not 200 <= resp.status_code < 300:
            raise target_http.failure(target, resp)
