"""Configuration of the `customerio` destination: `[destination.customerio]` in dlt config.

Every key can also be given as an environment variable `DESTINATION__CUSTOMERIO__<KEY>` or as a
keyword argument to `customerio(...)`. `CustomerioConfiguration` declares each key once; every
other list of keys derives from it: `CUSTOMERIO_KEYS` (the signature `customerio(...)` shows, the
keys a dry run carries over) and the keys that shape a shared workspace (`workspace_key`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import ipaddress
import logging
from typing import Any, Final

import httpx
from dlt.common.configuration import configspec
from dlt.common.configuration.exceptions import ConfigurationValueError
from dlt.common.configuration.specs.base_configuration import is_secret_hint
from dlt.common.typing import TSecretStrValue
from dlt.destinations.impl.destination.configuration import CustomDestinationClientConfiguration

from cio_destination.limits import MAX_REQUEST_BYTES
from cio_destination.transport.credentials import app_credential, credential_problem
from cio_destination.transport.regions import REGIONS

logger = logging.getLogger("cio_destination")
_alias_logged = False


def is_loopback(host: str) -> bool:
    """`localhost` itself or a literal loopback address; a name that merely ends in `.localhost`
    resolves however the machine's resolver says, so it does not count."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_base_url(key: str, url: str) -> str:
    """A base URL must be https, or plain http to a loopback host (the emulator, a local proxy).

    It must carry no secret: credentials (`user:password@`), a query or a fragment are refused,
    because httpx logs every request's URL. The messages never repeat the URL.
    """
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        # not chained: httpx's message may quote the URL, credentials and all
        raise ConfigurationValueError(f"destination.customerio.{key} is not a valid URL") from None
    if parsed.userinfo:
        raise ConfigurationValueError(
            f"destination.customerio.{key} must not carry credentials (user:password@): set"
            " them as site_id / api_key / app_api_key secrets instead"
        )
    if parsed.query or parsed.fragment:
        raise ConfigurationValueError(
            f"destination.customerio.{key} must be a base URL without a query (?...) or a"
            " fragment (#...)"
        )
    if parsed.scheme == "https" and parsed.host:
        return url.rstrip("/")
    if parsed.scheme == "http" and parsed.host and is_loopback(parsed.host):
        return url.rstrip("/")
    raise ConfigurationValueError(
        f"destination.customerio.{key} must use https:// (plain http:// is only allowed to"
        " localhost or a loopback address such as the local emulator), so credentials never"
        " cross a network unencrypted"
    )


def check_credential(key: str, value: str) -> None:
    """A Customer.io credential is printable ASCII without spaces, as Customer.io makes them.

    A line break or a space copied with a key would be refused by httpx when it writes the
    header (or sent, and refused as a wrong key); a non-ASCII character cannot go in a header
    at all. The message names the key, never its value.
    """
    if any(not 33 <= ord(character) <= 126 for character in value):
        raise ConfigurationValueError(
            f"destination.customerio.{key} holds whitespace, a control character or a non-ASCII"
            " character (a line break or a space copied with it?): set it to the key alone"
        )


_SHAPES_WORKSPACE = "shapes_workspace"


_CREDENTIAL = "credential"


def _shapes_workspace(default: Any, *, credential: bool = False) -> Any:
    """A key that shapes the workspace (`cio_destination.transport.workspace`): configs that
    differ in it get their own clients, rate limits and request pool; the other keys do not
    split one, so every pipeline and table of a workspace shares its rate. A `credential`
    travels in the requests' headers (see `check_credential`)."""
    return dataclasses.field(
        default=default, metadata={_SHAPES_WORKSPACE: True, _CREDENTIAL: credential}
    )


def secret_text(value: Any) -> str:
    """A secret's text, "" when it is not set."""
    return "" if value is None else str(value)


@configspec
class CustomerioConfiguration(CustomDestinationClientConfiguration):
    """Settings of the Customer.io destination (see the README for each key)."""

    destination_type: Final[str] = dataclasses.field(  # type: ignore[misc]
        default="destination", init=False, repr=False, compare=False
    )
    site_id: TSecretStrValue | None = _shapes_workspace(None, credential=True)
    """Track API site id (HTTP Basic user), with a Track API key; none with a private key."""
    api_key: TSecretStrValue = _shapes_workspace(None, credential=True)
    """A private key (`sk_...`) alone, for every API; or a Track API key (HTTP Basic password)
    with `site_id`."""
    app_api_key: TSecretStrValue | None = _shapes_workspace(None, credential=True)
    """App API bearer key, only needed for transactional sends with a Track API key (a private
    key sends them itself)."""
    region: str = _shapes_workspace("us")
    """`us`, `eu` or `auto` (asks Customer.io): picks the hosts unless `track_url` / `app_url`
    override them. A wrong region stops the load with a message saying which one to set, with
    `track_url` set too (`auto` then adopts the reported region and keeps the URL)."""
    track_url: str | None = _shapes_workspace(None)
    """Base URL override for the Track API (the local emulator or a proxy)."""
    app_url: str | None = _shapes_workspace(None)
    """Base URL override for the App API."""
    requests_per_second: float = _shapes_workspace(100.0)
    """Track API requests started per second, shared by every table and load thread."""
    app_requests_per_second: float = _shapes_workspace(10.0)
    """App API (transactional send) requests started per second."""
    max_attempts: int = _shapes_workspace(5)
    """Attempts per request on throttling, 5xx and network faults before the batch fails."""
    timeout: float = _shapes_workspace(30.0)
    """Seconds to wait for one HTTP response."""
    max_request_bytes: int = _shapes_workspace(MAX_REQUEST_BYTES)
    """Upper bound of one batch request body, in serialized bytes (Customer.io allows 500 KB)."""
    max_concurrent_requests: int = _shapes_workspace(32)
    """Requests in flight at once per workspace, so latency does not cut throughput."""
    resend_uncertain: bool = False
    """Send again rows whose earlier send was left with an unknown outcome, and retry a send
    after an answer that leaves its outcome unknown (a 5xx, a timeout) like any other request."""
    accept_new_send_ledger: bool = False
    """Let `send_email` tables go on with a send ledger that is not the one earlier loads sent
    through (its file was deleted, emptied, replaced or restored): set it for one run only."""
    state_url: TSecretStrValue | None = None
    """SQLAlchemy URL of the database that keeps all durable state (send ledger, rejected rows,
    reports, fingerprints, mirror snapshots, the pipeline's dlt state, the run lease); default:
    the pipeline's working directory."""
    state_schema: str | None = None
    """Database schema of the `state_url` tables (created if missing); default: the connection's."""
    fingerprints_url: TSecretStrValue | None = None
    """Deprecated alias of `state_url`."""
    rejected_row_payload: str = "full"
    """`full`: a rejected row is kept whole; `keys_only`: only the columns that identify it."""
    state_retention_days: float = 30
    """Rejected rows and reports older than this many days are purged."""
    lease_timeout: float = 120.0
    """Seconds without a heartbeat after which a run's lease (with `state_url`) is taken over."""
    dry_run: bool = False
    """Map, validate and batch everything, send nothing; see `cio_destination.dry_run`."""
    tables: dict[str, Any] | None = None
    """Per-table mappings, `[destination.customerio.tables.<table>]`; replace adapter hints."""

    def on_resolved(self) -> None:
        for key in _CREDENTIAL_KEYS:
            check_credential(key, secret_text(getattr(self, key)))
        problem = credential_problem(
            secret_text(self.site_id), secret_text(self.api_key), secret_text(self.app_api_key)
        )
        if problem is not None:
            raise ConfigurationValueError(problem)
        if self.region not in REGIONS:
            raise ConfigurationValueError(
                f"destination.customerio.region must be one of {', '.join(REGIONS)}"
            )
        if self.track_url:
            self.track_url = check_base_url("track_url", self.track_url)
        if self.app_url:
            self.app_url = check_base_url("app_url", self.app_url)
        if self.requests_per_second <= 0:
            raise ConfigurationValueError("destination.customerio.requests_per_second must be > 0")
        if self.app_requests_per_second <= 0:
            raise ConfigurationValueError(
                "destination.customerio.app_requests_per_second must be > 0"
            )
        if self.max_attempts < 1:
            raise ConfigurationValueError("destination.customerio.max_attempts must be >= 1")
        if self.timeout <= 0:
            raise ConfigurationValueError("destination.customerio.timeout must be > 0")
        if not 1_000 <= self.max_request_bytes <= MAX_REQUEST_BYTES:
            raise ConfigurationValueError(
                "destination.customerio.max_request_bytes must be between 1000 and"
                f" {MAX_REQUEST_BYTES}"
            )
        if self.rejected_row_payload not in ("full", "keys_only"):
            raise ConfigurationValueError(
                "destination.customerio.rejected_row_payload must be full or keys_only"
            )
        if self.state_retention_days <= 0 or self.lease_timeout <= 0:
            raise ConfigurationValueError(
                "destination.customerio.state_retention_days and lease_timeout must be > 0"
            )
        if self.max_concurrent_requests < 1:
            raise ConfigurationValueError(
                "destination.customerio.max_concurrent_requests must be >= 1"
            )

    def state_location(self) -> tuple[str, str | None, str] | None:
        """The state database as (URL, schema, the key that set it), None for the local file.
        `fingerprints_url` alone is taken as `state_url`, which the log says once."""
        url = secret_text(self.state_url)
        if url:
            return url, self.state_schema, "destination.customerio.state_url"
        url = secret_text(self.fingerprints_url)
        if not url:
            return None
        global _alias_logged
        if not _alias_logged:
            _alias_logged = True
            logger.warning(
                "customerio: destination.customerio.fingerprints_url is deprecated: it now keeps"
                " all of the destination's state, as state_url does; rename it to state_url"
            )
        return url, self.state_schema, "destination.customerio.fingerprints_url"

    def app_credential(self) -> tuple[str, str] | None:
        """The App API's key and the config key holding it (`api_key` when it is a private key,
        else `app_api_key`), or None: no transactional sends with this config."""
        return app_credential(secret_text(self.api_key), secret_text(self.app_api_key))

    def workspace_key(self) -> tuple[Any, ...]:
        """The values of the keys that shape a workspace (secrets as digests): configs with the
        same key share one workspace."""
        return tuple(
            hashlib.sha256(secret_text(getattr(self, key)).encode()).hexdigest()
            if key in _SECRET_KEYS
            else getattr(self, key)
            for key in _WORKSPACE_KEYS
        )


_FIELDS = {field.name: field for field in dataclasses.fields(CustomerioConfiguration)}
_HINTS = CustomerioConfiguration.get_resolvable_fields()
CUSTOMERIO_KEYS = tuple(
    key for key in _HINTS if key not in CustomDestinationClientConfiguration.get_resolvable_fields()
)
"""The Customer.io destination's own keys, in the order they are declared."""
_WORKSPACE_KEYS = tuple(
    key for key in CUSTOMERIO_KEYS if _FIELDS[key].metadata.get(_SHAPES_WORKSPACE)
)
_SECRET_KEYS = frozenset(key for key in CUSTOMERIO_KEYS if is_secret_hint(_HINTS[key]))
_CREDENTIAL_KEYS = tuple(key for key in CUSTOMERIO_KEYS if _FIELDS[key].metadata.get(_CREDENTIAL))


def pipeline_configuration(pipeline: Any) -> CustomerioConfiguration | None:
    """The destination settings of a pipeline that loads to this destination, as far as they
    resolve (credentials may be missing where only the state is read); None for another one."""
    destination = getattr(pipeline, "destination", None)
    if destination is None or destination.spec is not CustomerioConfiguration:
        return None
    return destination.configuration(None, accept_partial=True)  # type: ignore[no-any-return]


def keyword_signature() -> inspect.Signature:
    """`customerio(...)`'s signature: one keyword argument per key, with its type and default."""
    return inspect.Signature(
        [
            inspect.Parameter(
                key,
                inspect.Parameter.KEYWORD_ONLY,
                default=_FIELDS[key].default,
                annotation=_FIELDS[key].type,
            )
            for key in CUSTOMERIO_KEYS
        ]
    )
