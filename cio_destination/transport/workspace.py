"""The workspace: everything shared by the calls that send to one Customer.io workspace.

One per destination config in a process (`workspace_for`), shared by every dlt load thread and
table: the Track and App clients with their rate limits, the Track sender's request pool, the
email sender. The first call of every load runs the preflight, one
`GET /api/v1/accounts/region`, before any data is sent: it checks the credentials and the region
(`cio_destination.transport.regions`). It starts as the load's first table starts
(`begin_load_soon`), and once it passed, batches need not go one at a time.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

from cio_destination.configuration import CustomerioConfiguration, secret_text
from cio_destination.exceptions import CustomerioTerminalError
from cio_destination.transport import regions
from cio_destination.transport.api import RetryPolicy
from cio_destination.transport.app import AppClient
from cio_destination.transport.emails import EmailSender
from cio_destination.transport.ratelimit import RateLimiter
from cio_destination.transport.sender import Sender
from cio_destination.transport.shared_budget import budget_name, shared_limiter
from cio_destination.transport.track import TrackClient


class Workspace:
    """Everything shared by the calls that send to one Customer.io workspace with one config.

    The first call of every load checks the credentials (and the region) with one
    `GET /api/v1/accounts/region`, before any data is sent; `region="auto"` takes the host from
    its answer. Reads only the keys that shape a workspace (see `workspace_for`).
    """

    def __init__(self, config: CustomerioConfiguration) -> None:
        self._config = config
        self.limiter = _limiter(config, config.requests_per_second, "track")
        self._options: dict[str, Any] = {
            "retry": RetryPolicy(max_attempts=config.max_attempts),
            "timeout": config.timeout,
            "max_connections": config.max_concurrent_requests,
        }
        self._sender: Sender | None = None
        self.emails: EmailSender | None = None
        self.region: str | None = None
        self._load_id: str | None = None
        self._load_error: CustomerioTerminalError | None = None
        self._started_load: str | None = None
        self._lock = threading.Lock()

    @property
    def sender(self) -> Sender:
        assert self._sender is not None, "begin_load() runs the preflight first"
        return self._sender

    def begin_load_soon(self, load_id: str) -> None:
        """Start the load's preflight on a helper thread, unless it ran or started already, so
        its round trip overlaps the reading and mapping of the first rows (at 200 ms, a dict
        sync's load step spent a tenth of its time on it). `begin_load` waits for it and raises
        what it found; a transient failure here is met again there, by a check of its own."""
        with self._lock:
            if load_id in (self._load_id, self._started_load):
                return
            self._started_load = load_id
        threading.Thread(
            target=self._begin_quietly, args=(load_id,), name="customerio-preflight", daemon=True
        ).start()

    def _begin_quietly(self, load_id: str) -> None:
        if self._started_load != load_id:
            return  # started late, after a later load's: that load checks for itself
        with contextlib.suppress(Exception):  # the job's own `begin_load` raises it again
            self.begin_load(load_id)

    def begin_load(self, load_id: str) -> None:
        """Run the load's preflight once; every call of a load whose preflight failed re-raises."""
        with self._lock:
            if load_id == self._load_id:
                if self._load_error is not None:
                    raise self._load_error.again()
                return
            try:
                self._preflight()
            except CustomerioTerminalError as error:
                self._load_id, self._load_error = load_id, error
                raise
            self._load_id, self._load_error = load_id, None

    def _track_client(self, region: str) -> TrackClient:
        config = self._config
        return TrackClient(
            regions.track_url(config.track_url, region),
            secret_text(config.site_id),
            secret_text(config.api_key),
            limiter=self.limiter,
            url_source=regions.url_source(config.track_url, "track_url"),
            **self._options,
        )

    def _preflight(self) -> None:
        config = self._config
        if self._sender is not None:
            client = self._sender.client
        else:
            client = self._track_client(regions.first_region(config.region))
        try:
            region = regions.settled_region(config.region, client.account_region(), self.region)
        except BaseException:
            if self._sender is None:
                client.close()
            raise
        if self._sender is not None and region == self.region:
            self._sender.forget_refusal()
            self._sender.credentials_checked()
            if self.emails is not None:
                self.emails.forget_refusal()
            return
        if client.base_url != regions.track_url(config.track_url, region).rstrip("/"):
            # region="auto" found another region
            if self._sender is not None:
                self._sender.close()
                self._sender = None
            else:
                client.close()
            client = self._track_client(region)
        self.region = region
        if self._sender is None:
            self._sender = Sender(
                client,
                max_in_flight=config.max_concurrent_requests,
                max_request_bytes=config.max_request_bytes,
            )
        else:
            self._sender.forget_refusal()
        self._sender.credentials_checked()
        if config.app_credential() is not None:
            self._open_emails(region)

    def _open_emails(self, region: str) -> None:
        config = self._config
        if self.emails is not None:
            self.emails.close()
        credential = config.app_credential()
        assert credential is not None
        app = AppClient(
            regions.app_url(config.app_url, region),
            *credential,
            limiter=_limiter(config, config.app_requests_per_second, "app"),
            url_source=regions.url_source(config.app_url, "app_url"),
            **self._options,
        )
        self.emails = EmailSender(app, max_in_flight=config.max_concurrent_requests)


def _limiter(config: CustomerioConfiguration, rate: float, api: str) -> RateLimiter:
    """The rate limit of one API: in this process, or shared through `rate_limit_url` by every
    process sending to the workspace (the one its site id, else its API key, names)."""
    url = secret_text(config.rate_limit_url)
    if not url:
        return RateLimiter(rate)
    workspace = secret_text(config.site_id) or secret_text(config.api_key)
    return shared_limiter(rate, url, budget_name(workspace, api))


_workspaces: dict[tuple[Any, ...], Workspace] = {}
_workspaces_lock = threading.Lock()


def workspace_for(config: CustomerioConfiguration) -> Workspace:
    """The one shared workspace of a destination config, created on first use: configs that
    differ only in keys that do not shape a workspace (`CustomerioConfiguration.workspace_key`),
    such as their tables, share it, and with it the rate limit."""
    key = config.workspace_key()
    with _workspaces_lock:
        workspace = _workspaces.get(key)
        if workspace is None:
            workspace = _workspaces[key] = Workspace(config)
        return workspace
