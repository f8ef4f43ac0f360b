"""The only module that talks HTTP: Track API batches, auth, regions, retries and the shared rate.

Every answer (a response, or a transport error) is classified in one place, `classify`, into a
`Verdict`; the rest of the module only acts on verdicts:

=====================================  ==========================================================
answer                                 verdict and what happens
=====================================  ==========================================================
2xx but 207                            DELIVERED: every entry of the request was accepted
207                                    PARTIAL: accepted except the entries its `batch_index`
                                       values name, which are rejected (a 207 that names none:
                                       every entry is rejected as `unreadable_207`)
400, 413, 422                          NARROW: split in halves until the offending entries stand
                                       alone; those are rejected, the rest delivered
401, 403                               REFUSED: terminal, `CredentialsError` names the keys
3xx (never followed: credentials       MISDIRECTED: terminal, names `track_url`/`app_url` (or
must not travel to another host),      `region`, when the host came from it)
404, 405
other 4xx (402, 409, 410, 451, ...)    REJECTED: every entry of that request is rejected with
                                       reason `http_<status>`; not narrowed, as such answers
                                       come from proxies for a whole request
a connection refused (or a host that   UNREACHABLE: terminal at once, naming the URL and the
does not resolve) at the preflight     key that set it; retrying a closed port only hides it
408, 429, 1xx, 5xx, any other status,  RETRY: exponential backoff with jitter, honouring
other network faults                   `Retry-After`, at most `max_attempts` per request; then
                                       `CustomerioTransientError` (the package stays pending)
=====================================  ==========================================================

A request that must not be repeated (a transactional send, `repeatable=False`) is retried only
when the answer proves Customer.io did not take it: a connect error, a connect or pool timeout,
or a 429. Every other RETRY answer (408, 1xx, 5xx, a timeout or a dropped connection after the
body left) is UNCERTAIN instead, since a gateway may answer after the origin took the request:
`OutcomeUnknown` is raised after that one attempt. A send carries one row, so NARROW and
REJECTED answers to it reject that row.

A rejection keeps Customer.io's `reason` and `field`; its free-text `message` passes through
`ServerText`, which masks every value of the rejected operation, so it never holds one.
"""

from __future__ import annotations

import enum
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import httpx
import orjson

from cio_destination import __version__
from cio_destination.entries import Entry, Rejection, pack_entries, request_body
from cio_destination.exceptions import (
    CredentialsError,
    CustomerioTerminalError,
    CustomerioTransientError,
)
from cio_destination.ratelimit import RateLimiter

logger = logging.getLogger("cio_destination")

TRACK_HOSTS = {"us": "https://track.customer.io", "eu": "https://track-eu.customer.io"}
APP_HOSTS = {"us": "https://api.customer.io", "eu": "https://api-eu.customer.io"}

NARROWABLE_STATUS = frozenset({400, 413, 422})
_MAX_SERVER_MESSAGE = 300


class Verdict(enum.Enum):
    """What an answer from Customer.io means for the entries of its request (see the table)."""

    DELIVERED = "delivered"
    PARTIAL = "partial"
    NARROW = "narrow"
    REJECTED = "rejected"
    REFUSED = "refused"
    MISDIRECTED = "misdirected"
    UNREACHABLE = "unreachable"
    RETRY = "retry"
    UNCERTAIN = "uncertain"


# Failures that prove the request never left this machine: safe to retry even for a send.
_NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


def classify(
    answer: httpx.Response | httpx.RequestError, *, repeatable: bool = True, preflight: bool = False
) -> Verdict:
    """The one decision of what an answer (or a transport error) means; see the module table."""
    if isinstance(answer, httpx.RequestError):
        if preflight and isinstance(answer, httpx.ConnectError):
            return Verdict.UNREACHABLE
        if repeatable or isinstance(answer, _NOT_SENT_ERRORS):
            return Verdict.RETRY
        return Verdict.UNCERTAIN
    status = answer.status_code
    if status == 207:
        return Verdict.PARTIAL
    if 200 <= status < 300:
        return Verdict.DELIVERED
    if 300 <= status < 400 or status in (404, 405):
        return Verdict.MISDIRECTED
    if status in (401, 403):
        return Verdict.REFUSED
    if status == 429:
        return Verdict.RETRY  # a 429 proves the request was not taken
    if status in NARROWABLE_STATUS:
        return Verdict.NARROW
    if 400 <= status < 500 and status != 408:
        return Verdict.REJECTED
    # 408, 1xx, 5xx and anything outside the registered ranges: the server may be fine later,
    # but a gateway may answer so after the origin took the request
    return Verdict.RETRY if repeatable else Verdict.UNCERTAIN


@dataclass
class SendStats:
    """Counters of one or more sends; added up per load, table and action for the report."""

    requests: int = 0
    retries: int = 0
    throttled: int = 0
    throttled_seconds: float = 0.0
    accepted: int = 0

    def add(self, other: SendStats) -> None:
        self.requests += other.requests
        self.retries += other.retries
        self.throttled += other.throttled
        self.throttled_seconds += other.throttled_seconds
        self.accepted += other.accepted


@dataclass
class SendResult:
    """What happened to a list of entries: rejections, counters, and the error that stopped it."""

    rejections: list[Rejection] = field(default_factory=list)
    stats: SendStats = field(default_factory=SendStats)
    error: BaseException | None = None
    delivered: list[Sequence[Entry]] = field(default_factory=list)
    """Groups of entries Customer.io accepted (a 2xx, or a 207 that did not name them)."""

    def delivered_entries(self) -> Iterator[Entry]:
        return chain.from_iterable(self.delivered)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    retry_after_cap: float = 60.0
    budget: float = 300.0
    """Seconds one request may spend waiting between its attempts, in all."""

    def delay(self, attempt: int, rng: random.Random, retry_after: float | None) -> float:
        """Seconds to wait before attempt `attempt + 1` (attempt counts from 1)."""
        ceiling = min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1))
        delay = ceiling / 2 + rng.uniform(0, ceiling / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.retry_after_cap))
        return delay


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP-date: fall back to our own backoff


def _server_errors(response: httpx.Response) -> list[dict[str, Any]]:
    try:
        payload = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return []
    errors = payload.get("errors") if isinstance(payload, dict) else None
    return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []


_MASK = "<value>"
_EMAIL = re.compile(r"[^\s@'\"`<>()\[\],;:]+@[^\s@'\"`<>()\[\],;:]+")
_QUOTED = re.compile(r"'([^']*)'|\"([^\"]*)\"|`([^`]*)`")
_STRUCTURE = frozenset({"type", "action"})  # the mapping's, not the row's


class ServerText:
    """Customer.io's free text about one operation (a 207 item, a 400, a send's error), made safe
    to store: Customer.io may echo what it was sent, and a rejection never holds a row's value.

    Every value of the operation (case-insensitively, as a whole token), every e-mail address
    and every quoted text that is not a name of the operation (an attribute, an identifier
    kind) becomes `<value>`; the result is capped at 300 characters. Codes and field paths such
    as `invalid` or `attributes.plan` pass unchanged.
    """

    def __init__(self, operation: bytes) -> None:
        values: set[str] = set()
        self._names: set[str] = set()
        self._readable = True
        try:
            self._walk(orjson.loads(operation), values, top=True)
        except orjson.JSONDecodeError:
            self._readable = False  # values unknown: no free text can be shown safely
        alternatives = sorted(values, key=len, reverse=True)
        self._values = (
            re.compile(
                "(?<![0-9A-Za-z])(?:" + "|".join(map(re.escape, alternatives)) + ")(?![0-9A-Za-z])",
                re.IGNORECASE,
            )
            if alternatives
            else None
        )

    def _walk(self, value: Any, values: set[str], *, top: bool = False) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                self._names.add(str(key))
                if not (top and key in _STRUCTURE):
                    self._walk(item, values)
        elif isinstance(value, list):
            for item in value:
                self._walk(item, values)
        elif isinstance(value, str | int | float) and not isinstance(value, bool):
            text = str(value)
            if text.strip():
                values.add(text)

    def __call__(self, value: Any) -> str | None:
        if value is None or not self._readable:
            return None
        text = str(value)[: _MAX_SERVER_MESSAGE * 8]  # bounds the work on a huge answer
        if self._values is not None:
            text = self._values.sub(_MASK, text)
        text = _EMAIL.sub(_MASK, text)
        text = _QUOTED.sub(self._quoted, text)
        return text[:_MAX_SERVER_MESSAGE]

    def _quoted(self, match: re.Match[str]) -> str:
        inner = next(g for g in match.groups() if g is not None)
        if inner == _MASK or inner in self._names:
            return match.group(0)
        quote = match.group(0)[0]
        return f"{quote}{_MASK}{quote}"


class OutcomeUnknown(Exception):
    """A request that is not safe to repeat may have reached Customer.io: its effect is unknown."""


class ApiClient:
    """One Customer.io API (Track or App) with its auth, shared rate limit and retry policy.

    `url_source` is the config key that chose `base_url` (`track_url`/`app_url`, or `region`
    for Customer.io's own hosts): errors about the URL name it. Thread-safe; create one per
    destination config.
    """

    api_name = "API"
    url_key = "url"
    credential_keys: tuple[str, ...] = ()

    def __init__(
        self,
        base_url: str,
        auth: httpx.Auth,
        *,
        limiter: RateLimiter,
        retry: RetryPolicy | None = None,
        timeout: float = 30.0,
        max_connections: int = 32,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        url_source: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.url_source = url_source or self.url_key
        self.limiter = limiter
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._rng_lock = threading.Lock()
        self._http = httpx.Client(
            base_url=self.base_url,
            auth=auth,
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            headers={
                "content-type": "application/json",
                "user-agent": f"cio-destination/{__version__}",
            },
        )

    def close(self) -> None:
        self._http.close()

    def post(
        self, path: str, body: bytes, stats: SendStats, *, repeatable: bool = True
    ) -> httpx.Response:
        return self.request("POST", path, body, stats, repeatable=repeatable)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None,
        stats: SendStats,
        *,
        repeatable: bool = True,
        preflight: bool = False,
    ) -> httpx.Response:
        """A request with retries; returns the first answer `classify` does not retry.

        Raises `CredentialsError` or `CustomerioTerminalError` for a REFUSED, MISDIRECTED or
        (with `preflight`) UNREACHABLE answer, `CustomerioTransientError` when attempts run out,
        and, with `repeatable=False` (a transactional send), `OutcomeUnknown` for an UNCERTAIN
        one.
        """
        attempt = 0
        waited = 0.0
        while True:
            attempt += 1
            stats.requests += 1
            stats.throttled_seconds += self.limiter.acquire()
            answer: httpx.Response | httpx.RequestError
            try:
                answer = self._http.request(method, path, content=body)
            except httpx.RequestError as exc:
                answer = exc
            verdict = classify(answer, repeatable=repeatable, preflight=preflight)
            if verdict is Verdict.UNREACHABLE:
                raise CustomerioTerminalError(
                    f"cannot connect to Customer.io {self.api_name} at {self.base_url}"
                    f" ({str(answer)[:120] or type(answer).__name__}): check"
                    f" destination.customerio.{self.url_source} and this machine's network"
                )
            if verdict is Verdict.UNCERTAIN:
                raise OutcomeUnknown(_problem(answer))
            if verdict is Verdict.REFUSED:
                assert isinstance(answer, httpx.Response)
                raise CredentialsError(self.api_name, answer.status_code, self.credential_keys)
            if verdict is Verdict.MISDIRECTED:
                assert isinstance(answer, httpx.Response)
                raise self._misdirected(answer, path)
            if verdict is not Verdict.RETRY:
                assert isinstance(answer, httpx.Response)
                self.limiter.succeeded()
                return answer
            retry_after: float | None = None
            if isinstance(answer, httpx.Response):
                retry_after = _retry_after(answer)
                if answer.status_code == 429:
                    stats.throttled += 1
                    self.limiter.throttled(min(retry_after or 0.0, self.retry.retry_after_cap))
            problem = _problem(answer)
            with self._rng_lock:
                delay = self.retry.delay(attempt, self._rng, retry_after)
            if attempt >= self.retry.max_attempts or waited + delay > self.retry.budget:
                raise CustomerioTransientError(
                    f"Customer.io {self.api_name} {path} failed {attempt} times, last with"
                    f" {problem}; the load package stays pending and the next run resumes it"
                )
            waited += delay
            stats.retries += 1
            logger.info(
                "Customer.io %s: %s, retry %d/%d in %.1fs",
                path,
                problem,
                attempt,
                self.retry.max_attempts - 1,
                delay,
            )
            self._sleep(delay)

    def _misdirected(self, response: httpx.Response, path: str) -> CustomerioTerminalError:
        status = response.status_code
        keys = f"destination.customerio.{self.url_source}"
        if 300 <= status < 400:
            if self.url_source != "region":
                keys += " and destination.customerio.region"
            target = _host_of(response.headers.get("location"))
            to = f" to {target}" if target else ""
            return CustomerioTerminalError(
                f"Customer.io {self.api_name} at {self.base_url} answered HTTP {status}, a"
                f" redirect{to}, for {path}; redirects are never followed, so credentials stay"
                f" on the configured host: check {keys}"
            )
        return CustomerioTerminalError(
            f"Customer.io {self.api_name} at {self.base_url} answered HTTP {status} for {path}:"
            f" check {keys}"
        )


def _problem(answer: httpx.Response | httpx.RequestError) -> str:
    if isinstance(answer, httpx.Response):
        return f"HTTP {answer.status_code}"
    return type(answer).__name__


def _host_of(url: str | None) -> str | None:
    """Only the host of a redirect target: its path or query may carry anything."""
    if not url:
        return None
    try:
        return httpx.URL(url).host or None
    except httpx.InvalidURL:
        return None


class TrackClient(ApiClient):
    """Sends batches to one workspace's Track API (HTTP Basic: site id and API key)."""

    api_name = "Track API"
    url_key = "track_url"
    credential_keys = ("site_id", "api_key")

    def __init__(self, base_url: str, site_id: str, api_key: str, **options: Any) -> None:
        super().__init__(base_url, httpx.BasicAuth(site_id, api_key), **options)

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
        return region if region in TRACK_HOSTS else None

    # -- a batch of entries ------------------------------------------------------------------

    def send_batch(self, entries: Sequence[Entry]) -> SendResult:
        """Deliver entries in one `/api/v2/batch` request (more if the request must be narrowed)."""
        result = SendResult()
        self._send(entries, result)
        return result

    def _send(self, entries: Sequence[Entry], result: SendResult) -> None:
        response = self.post("/api/v2/batch", request_body(entries), result.stats)
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
            errors = _server_errors(response)
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
        errors = _server_errors(response)
        failed: dict[int, dict[str, Any]] = {}
        for error in errors:
            index = error.get("batch_index")
            if isinstance(index, int) and 0 <= index < len(entries):
                failed.setdefault(index, error)
        if not failed:
            # A 207 that names no entry we sent: we cannot tell what was kept, so nothing is
            # counted as delivered; every entry is recorded for inspection and replay.
            for entry in entries:
                result.rejections.extend(
                    entry.reject("unreadable_207", None, "Customer.io answered 207 without errors")
                )
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


class Sender:
    """Packs entries into bodies and keeps up to `max_in_flight` requests going at once.

    One pool per workspace, shared by every dlt load thread: latency does not cut throughput, and
    the rate limiter, not the pool, decides how fast requests start. Until one request has been
    accepted, requests go one at a time, so bad credentials cost a single request; after a
    refusal, every send of the same load stops without a request.
    """

    def __init__(self, client: TrackClient, *, max_in_flight: int, max_request_bytes: int) -> None:
        self.client = client
        self.max_request_bytes = max_request_bytes
        self._pool = ThreadPoolExecutor(max_in_flight, thread_name_prefix="customerio-send")
        self._probe_lock = threading.Lock()
        self._verified = False
        self._refused: CredentialsError | None = None

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self.client.close()

    def forget_refusal(self) -> None:
        """A new load tries the credentials again (they may have been fixed in the meantime)."""
        self._refused = None

    def send(self, entries: Sequence[Entry]) -> SendResult:
        return self.send_parts([entries])

    def send_parts(self, parts: Sequence[Sequence[Entry]]) -> SendResult:
        """Send several sequences of entries (lists, or blocks still in Arrow) as one: bodies
        are packed within each part, and all of them share the in-flight requests."""
        groups = [g for part in parts for g in pack_entries(part, self.max_request_bytes)]
        total = SendResult()
        if not groups:
            return total
        if not self._verified:
            with self._probe_lock:
                if self._refused is None and not self._verified:
                    self._collect(total, self._pool.submit(self.client.send_batch, groups[0]))
                    groups = groups[1:]
                    self._verified = total.error is None
        if self._refused is not None:
            total.error = self._refused
        if total.error is not None:
            return total
        futures = [self._pool.submit(self.client.send_batch, g) for g in groups]
        for future in futures:
            self._collect(total, future)
        return total

    def _collect(self, total: SendResult, future: Future[SendResult]) -> None:
        try:
            part = future.result()
        except BaseException as exc:
            if isinstance(exc, CredentialsError):
                self._refused = exc
            if total.error is None or (
                isinstance(exc, CustomerioTerminalError)
                and not isinstance(total.error, CustomerioTerminalError)
            ):
                total.error = exc
            return
        total.rejections.extend(part.rejections)
        total.delivered.extend(part.delivered)
        total.stats.add(part.stats)


@dataclass(frozen=True)
class SendOutcome:
    """The answer to one transactional send."""

    delivery_id: str | None = None
    rejection: tuple[str, str | None, str] | None = None  # reason, field, message


class AppClient(ApiClient):
    """Transactional sends through the App API (`Authorization: Bearer <app_api_key>`)."""

    api_name = "App API"
    url_key = "app_url"
    credential_keys = ("app_api_key",)

    def __init__(self, base_url: str, app_api_key: str, **options: Any) -> None:
        super().__init__(base_url, _BearerAuth(app_api_key), **options)

    def send_email(
        self, body: bytes, stats: SendStats, *, resend_uncertain: bool = False
    ) -> SendOutcome:
        """POST one `/v1/send/email`.

        Retried only after failures that prove the send was not taken; `OutcomeUnknown` when
        it may have been, unless `resend_uncertain`, which retries it like any other request.
        """
        response = self.post("/v1/send/email", body, stats, repeatable=resend_uncertain)
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


class _BearerAuth(httpx.Auth):
    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request):  # type: ignore[no-untyped-def]
        request.headers["authorization"] = self._header
        yield request
