"""Notifications to a Slack incoming webhook: one short message per event, linking to the status page when
`http.public_url` is set.

The body is `{"text": ..., "blocks": [...]}` (the text is also the fallback Slack shows in notifications). Slack
answers HTTP 200 with the plain body `ok`; anything else is a failure: 4xx with a code (`invalid_payload`,
`channel_not_found`, `no_service`...) fails for good, 5xx/429 (and a 200 with another body, e.g. a proxy's page)
is sent again later.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from polling_server.config import NotificationTarget
from polling_server.errors import ReportUnavailable
from polling_server.http import HttpClient
from polling_server.notify import target_http

_EMOJI = {
    "build.planned": ":hourglass_flowing_sand:", "build.succeeded": ":white_check_mark:", "build.failed": ":x:",
    "build.superseded": ":fast_forward:", "release.awaiting_approval": ":raised_hand:",
    "release.rejected": ":no_entry:", "rollback": ":rewind:", "apply.requested": ":rocket:",
    "apply.failed": ":warning:", "apply.job_succeeded": ":white_check_mark:", "apply.job_failed": ":x:",
    "apply.job_unknown": ":grey_question:",
}
_SLACK_CODE = re.compile(r"^[a-z_]{1,60}$")


def escape(text: str) -> str:
    """Slack's mrkdwn needs &, < and > escaped, so a branch or an error text cannot make a link or a mention."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_body(payload: Mapping[str, Any]) -> dict:
    """The message for one outbox payload (its `event`, `summary` and `url`)."""
    event = str(payload.get("event", ""))
    text = f"{_EMOJI.get(event, ':information_source:')} {escape(str(payload.get('summary', event)))}"
    if payload.get("url"):
        text += f" <{escape(str(payload['url']))}|details>"
    return {
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": f"`{escape(event)}` · helmsman-cd"}]},
        ],
    }


class SlackSender:
    def __init__(self, http: HttpClient | None = None):
        self.http = http or target_http.default_client()

    def send(self, target: NotificationTarget, payload: Mapping[str, Any]) -> None:
        body = json.dumps(slack_body(payload)).encode()
        resp = target_http.post(self.http, target, body, {"Content-Type": "application/json"})
        answer = resp.text.strip()
        if resp.status_code == 200 and answer == "ok":
            return
        code = answer if _SLACK_CODE.match(answer) else ""
        if resp.status_code == 200:
            where = f"notification {target.name} ({target_http.origin(str(target.url))})"
            raise ReportUnavailable(f"{where}: answered HTTP 200 without Slack's `ok`" + (f" ({code})" if code else ""))
        raise target_http.failure(target, resp, code)
