"""A webhook: each frame's message as an HTTP POST of JSON; any 2xx acknowledges it, anything else leaves it in the
outbox to be sent again."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from packd_runtime.errors import PackdError
from packd_station.sinks.delivery import Undelivered
from packd_station.sinks.message import message

TIMEOUT_S = 5.0


class WebhookSink:
    name = "webhook"

    def __init__(self, url: str):
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
            raise PackdError(f"--webhook {url!r}: give http(s)://HOST[:PORT]/PATH")
        self.url = url

    def send_many(self, records: list[dict[str, Any]]) -> None:
        for i, record in enumerate(records):
            try:
                self.send(record)
            except ConnectionError as e:
                raise Undelivered(i, str(e)) from None

    def send(self, record: dict[str, Any]) -> None:
        request = urllib.request.Request(self.url, data=json.dumps(message(record)).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                response.read()
        except urllib.error.HTTPError as e:
            raise ConnectionError(f"webhook answered {e.code}") from None
        except (urllib.error.URLError, OSError) as e:
            raise ConnectionError(f"webhook unreachable: {getattr(e, 'reason', e)}") from None

    def close(self) -> None:
        pass
