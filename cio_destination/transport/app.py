"""The App API: transactional sends (`POST /v1/send/email`), one request per row."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from cio_destination.exceptions import CustomerioTerminalError
from cio_destination.transport.answers import ServerText, Verdict, classify
from cio_destination.transport.api import ApiClient, AttemptWatcher
from cio_destination.transport.credentials import app_auth
from cio_destination.transport.results import SendStats


@dataclass(frozen=True)
class SendOutcome:
    """The answer to one transactional send."""

    delivery_id: str | None = None
    rejection: tuple[str, str | None, str] | None = None  # reason, field, message


class AppClient(ApiClient):
    """Transactional sends through the App API (`Authorization: Bearer <app_api_key>`, or the
    private key; see `cio_destination.transport.credentials`). `credential_key` is the config
    key that holds the key, for errors to name."""

    api_name = "App API"
    url_key = "app_url"

    def __init__(
        self, base_url: str, app_api_key: str, credential_key: str = "app_api_key", **options: Any
    ) -> None:
        self.credential_keys = (credential_key,)
        super().__init__(base_url, app_auth(app_api_key), **options)

    def send_email(
        self,
        body: bytes,
        stats: SendStats,
        *,
        resend_uncertain: bool = False,
        watcher: AttemptWatcher | None = None,
    ) -> SendOutcome:
        """POST one `/v1/send/email`.

        Retried only after failures that prove the send was not taken; `OutcomeUnknown` when
        it may have been, unless `resend_uncertain`, which retries it like any other request.
        `watcher` is told of each attempt (see `ApiClient.request`).
        """
        response = self.post(
            "/v1/send/email", body, stats, repeatable=resend_uncertain, watcher=watcher
        )
        if classify(response) in (Verdict.DELIVERED, Verdict.PARTIAL):
            try:
                delivery_id = orjson.loads(response.content).get("delivery_id")
            except (orjson.JSONDecodeError, AttributeError):
                delivery_id = None
            stats.accepted += 1
            return SendOutcome(delivery_id=str(delivery_id or ""))
        message = f"Customer.io answered HTTP {response.status_code}"
        try:
            meta = orjson.loads(response.content).get("meta", {})
            message = ServerText(body)(meta.get("error")) or message
        except (orjson.JSONDecodeError, AttributeError):
            pass
        return SendOutcome(rejection=(f"http_{response.status_code}", None, message))

    def _refused(self, response: httpx.Response) -> CustomerioTerminalError:
        if response.status_code != 403:
            return super()._refused(response)
        # Customer.io documents a send's 403 as the account's or workspace's state, not the key's
        return CustomerioTerminalError(
            f"Customer.io App API at {self.base_url} answered HTTP 403 to a transactional send:"
            " the workspace may not send messages yet (Customer.io names an account owner's"
            " email address not confirmed, an account not yet approved for sending, or a"
            ' workspace set to "Do Not Send"); fix that in Customer.io, or check that'
            f" destination.customerio.{self.credential_keys[0]} is a key of this workspace"
        )
