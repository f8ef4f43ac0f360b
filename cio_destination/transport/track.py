"""The Track API of one workspace: the per-load preflight and `/api/v2/batch` requests.

A batch's answer settles each entry (see `cio_destination.transport.answers`): delivered,
rejected with Customer.io's reason, or narrowed by halves until the entries a 400 is about
stand alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import orjson

from cio_destination.entries import Entry, request_chunks
from cio_destination.exceptions import CustomerioTerminalError
from cio_destination.transport.answers import (
    ServerText,
    Verdict,
    classify,
    partial_errors,
    server_errors,
)
from cio_destination.transport.api import ApiClient
from cio_destination.transport.credentials import track_auth
from cio_destination.transport.regions import known_region
from cio_destination.transport.results import SendResult, SendStats


class TrackClient(ApiClient):
    """Sends batches to one workspace's Track API (HTTP Basic: site id and API key; or a private
    key alone, as `cio_destination.transport.credentials` sends it)."""

    api_name = "Track API"
    url_key = "track_url"

    def __init__(self, base_url: str, site_id: str, api_key: str, **options: Any) -> None:
        auth, self.credential_keys = track_auth(site_id, api_key)
        super().__init__(base_url, auth, **options)

    def account_region(self) -> str | None:
        """`GET /api/v1/accounts/region`: checks the credentials; returns `us`, `eu` or None.

        A refused connection stops the load at once (`CustomerioTerminalError` naming the URL):
        the first request of a load that cannot connect means a wrong URL or no network.
        """
        response = self.request("GET", "/api/v1/accounts/region", None, SendStats(), preflight=True)
        if classify(response) is not Verdict.DELIVERED:
            raise CustomerioTerminalError(
                f"Customer.io Track API at {self.base_url} answered HTTP {response.status_code}"
                f" to the region check: check destination.customerio.{self.url_source}"
            )
        try:
            region = orjson.loads(response.content).get("region")
        except (orjson.JSONDecodeError, AttributeError):
            return None
        return known_region(region)

    # -- a batch of entries ------------------------------------------------------------------

    def send_batch(self, entries: Sequence[Entry]) -> SendResult:
        """Deliver entries in one `/api/v2/batch` request (more if the request must be narrowed)."""
        result = SendResult()
        self._send(entries, result)
        return result

    def _send(self, entries: Sequence[Entry], result: SendResult) -> None:
        response = self.post("/api/v2/batch", request_chunks(entries), result.stats)
        verdict = classify(response)
        status = response.status_code
        if verdict is Verdict.DELIVERED:
            result.stats.accepted += len(entries)
            result.delivered.append(entries)
        elif verdict is Verdict.PARTIAL:
            self._partial(entries, response, result)
        elif verdict is Verdict.NARROW and len(entries) > 1:
            middle = len(entries) // 2
            self._send(entries[:middle], result)
            self._send(entries[middle:], result)
        elif verdict is Verdict.NARROW:
            errors = server_errors(response)
            first = errors[0] if errors else {}
            text = ServerText(entries[0].data)
            reason = "entry_too_large" if status == 413 else text(first.get("reason"))
            result.rejections.extend(
                entries[0].reject(
                    reason or f"http_{status}",
                    text(first.get("field")),
                    text(first.get("message")) or f"Customer.io answered HTTP {status}",
                )
            )
        else:
            # REJECTED: the whole request was refused, so every entry of it is
            message = f"Customer.io answered HTTP {status} to the request that carried this row"
            for entry in entries:
                result.rejections.extend(entry.reject(f"http_{status}", None, message))

    def _partial(
        self, entries: Sequence[Entry], response: httpx.Response, result: SendResult
    ) -> None:
        failed = partial_errors(response, len(entries))
        if not failed:
            # A 207 that names no entry, or an entry we did not send: we cannot tell what was
            # kept, so nothing is counted as delivered; every entry is recorded for inspection
            # and replay.
            message = "Customer.io answered 207 without naming which entries it refused"
            for entry in entries:
                result.rejections.extend(entry.reject("unreadable_207", None, message))
            return
        for index, error in failed.items():
            text = ServerText(entries[index].data)
            result.rejections.extend(
                entries[index].reject(
                    text(error.get("reason")) or "rejected",
                    text(error.get("field")),
                    text(error.get("message")) or "rejected by Customer.io",
                )
            )
        result.stats.accepted += len(entries) - len(failed)
        result.delivered.append([e for i, e in enumerate(entries) if i not in failed])
