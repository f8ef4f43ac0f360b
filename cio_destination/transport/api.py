"""One Customer.io API over HTTP: its auth, its shared rate limit and its retries.

`ApiClient` sends one request until `classify` (`cio_destination.transport.answers`) gives an
answer that is not to be retried, and turns the terminal verdicts into this package's errors;
`TrackClient` (`.track`) and `AppClient` (`.app`) add each API's auth and calls.
"""

from __future__ import annotations

import http.cookiejar
import logging
import random
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import httpx

from cio_destination.exceptions import (
    CredentialsError,
    CustomerioTerminalError,
    CustomerioTransientError,
)
from cio_destination.transport.answers import Verdict, classify, retry_after_of
from cio_destination.transport.credentials import BearerAuth
from cio_destination.transport.ratelimit import RateLimiter
from cio_destination.transport.results import SendStats
from cio_destination.version import __version__

logger = logging.getLogger("cio_destination")
_httpx_logger = logging.getLogger("httpx")

Body = bytes | tuple[bytes | memoryview, ...]
"""A request body: whole, or in pieces (views of the operations' Arrow buffers)."""

STATIC_AUTHS = (httpx.BasicAuth, BearerAuth)
"""Auths that put the same header on every request: the direct lane writes it once."""


class JoinedBody:
    """A body's pieces, handed to the client as one piece joined as it is written.

    The client writes each piece it is given with a round of its own Python (about 35 calls a
    piece); pieces of 64 KB made ten rounds a 500 KB body. Joined when the client reads it, the
    body is one copy held only while it is written, as each piece's copy was, not while the
    request waits for its answer. Read again for a retry."""

    __slots__ = ("pieces",)

    def __init__(self, pieces: Sequence[bytes | memoryview]) -> None:
        self.pieces = pieces

    def __iter__(self) -> Iterator[bytes]:
        yield b"".join(self.pieces)


@dataclass(frozen=True)
class RetryPolicy:
    """How often, and after how long a wait, a request is tried again (`max_attempts` in all)."""

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


class OutcomeUnknown(Exception):
    """A request that is not safe to repeat may have reached Customer.io: its effect is unknown."""


class AttemptWatcher(Protocol):
    """What a request that must not go out twice unawares is told of its attempts (a
    transactional send's ledger claim, `cio_destination.transport.emails`, listens)."""

    def leaving(self) -> None:
        """An attempt's rate-limit slot is taken and the attempt leaves next; an exception
        ends the request unsent."""

    def failed(self, maybe_taken: bool) -> None:
        """An attempt's answer is one to retry (the wait for the next attempt, or the end of
        the attempts, follows): `maybe_taken` when that answer leaves open whether Customer.io
        took the request (`Verdict.UNCERTAIN` for a request not to be repeated)."""


class ApiClient:
    """One Customer.io API (Track or App) with its auth, shared rate limit and retry policy.

    `url_source` is the config key that chose `base_url` (`track_url`/`app_url`, or `region`
    for Customer.io's own hosts): errors about the URL name it. Thread-safe; create one per
    destination config.

    Requests go through a direct lane: the request the client would build (its URL, headers,
    auth header and timeouts, made once per path by the client itself) is handed straight to
    the client's transport, without the client's per-request rounds (URL merge, header merge,
    auth flow, cookies): 1,680 Python calls a 500 KB batch request through the client, about
    1,050 this way. The lane is closed, and the client sends, where the client would pick
    another transport (a proxy named by the environment) or the auth is not a fixed header.
    Cookies are never kept or sent either way (the client's jar refuses them all).
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
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        if transport is None and not environment_proxies():
            # the transport the client would make itself, kept to hand requests to directly
            transport = httpx.HTTPTransport(limits=limits)
        self._auth = auth
        self._direct = transport if isinstance(auth, STATIC_AUTHS) else None
        self._prepared: dict[tuple[str, str], Prepared] = {}
        self._http = httpx.Client(
            base_url=self.base_url,
            auth=auth,
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
            limits=limits,
            cookies=_no_cookies(),  # both lanes alike: a gateway's cookie is never sent back
            headers={
                "content-type": "application/json",
                "user-agent": f"cio-destination/{__version__}",
            },
        )

    def close(self) -> None:
        self._http.close()

    def post(
        self,
        path: str,
        body: Body,
        stats: SendStats,
        *,
        repeatable: bool = True,
        watcher: AttemptWatcher | None = None,
    ) -> httpx.Response:
        return self.request("POST", path, body, stats, repeatable=repeatable, watcher=watcher)

    def request(
        self,
        method: str,
        path: str,
        body: Body | None,
        stats: SendStats,
        *,
        repeatable: bool = True,
        preflight: bool = False,
        watcher: AttemptWatcher | None = None,
    ) -> httpx.Response:
        """A request with retries; returns the first answer `classify` does not retry.

        Raises `CredentialsError` or `CustomerioTerminalError` for a REFUSED, MISDIRECTED,
        UNSENDABLE or (with `preflight`) UNREACHABLE answer, `CustomerioTransientError` when
        attempts run out, and, with `repeatable=False` (a transactional send), `OutcomeUnknown`
        for an UNCERTAIN one.

        `watcher` is told when each attempt leaves (once its rate-limit slot is taken) and
        when one fails with an answer to retry, saying whether Customer.io may have taken it: a
        transactional send claims its ledger key right before each attempt that may leave and
        gives it back while it waits after an answer that proves the send was not taken.
        """
        attempt = 0
        waited = 0.0
        headers: list[tuple[str, str]] = []
        content: bytes | JoinedBody | None = body
        if body is not None and not isinstance(body, bytes):
            # pieces: one body of a known length (not chunked), joined as it is written
            headers = [("content-length", str(sum(len(piece) for piece in body)))]
            content = JoinedBody(body)
        while True:
            attempt += 1
            stats.throttled_seconds += self.limiter.acquire()
            if watcher is not None:
                watcher.leaving()
            stats.requests += 1
            answer: httpx.Response | httpx.RequestError
            try:
                answer = unbound(self._attempt(method, path, content, headers))
            except httpx.RequestError as exc:
                answer = exc
            verdict = classify(answer, repeatable=repeatable, preflight=preflight)
            if verdict is not Verdict.RETRY:
                return self._settled(answer, verdict, path)
            if watcher is not None:
                watcher.failed(classify(answer, repeatable=False) is Verdict.UNCERTAIN)
            waited += self._back_off(answer, attempt, waited, path, stats)

    def _attempt(
        self,
        method: str,
        path: str,
        content: bytes | JoinedBody | None,
        headers: list[tuple[str, str]],
    ) -> httpx.Response:
        """One attempt: through the direct lane where it is open, else through the client."""
        prepared = self._prepared_for(method, path)
        if prepared is None or self._direct is None:
            return self._http.request(method, path, content=content, headers=dict(headers))
        url, fixed, auth, extensions = prepared
        if content and isinstance(content, bytes) and not headers:  # as the client writes it
            headers = [("Content-Length", str(len(content)))]
        request = httpx.Request(
            method,
            url,
            headers=[*fixed, *((n.encode(), v.encode()) for n, v in headers), *auth],
            content=content,
            extensions=extensions,
        )
        try:
            response = self._direct.handle_request(request)
        except httpx.RequestError as exc:
            exc.request = request  # as the client's request context sets it
            raise
        response.request = request
        try:
            response.read()
        finally:
            response.close()
        if _httpx_logger.isEnabledFor(logging.INFO):  # the line the client logs
            _httpx_logger.info(
                'HTTP Request: %s %s "%s %d %s"',
                method,
                url,
                response.http_version,
                response.status_code,
                response.reason_phrase,
            )
        return response

    def _prepared_for(self, method: str, path: str) -> Prepared | None:
        """The direct lane's fixed parts of requests to `path` (None: it is closed)."""
        if self._direct is None or self._http.is_closed:
            return None
        prepared = self._prepared.get((method, path))
        if prepared is None:
            prepared = self._prepared[(method, path)] = self._prepare(method, path)
        return prepared

    def _prepare(self, method: str, path: str) -> Prepared:
        """What the client puts on every request to `path`, made once by the client itself:
        the URL, its headers, the headers its auth adds, the timeouts."""
        template = self._http.build_request(method, path)
        before = {name.lower() for name, _ in template.headers.raw}
        authed = next(self._auth.sync_auth_flow(template))
        auth = [(name, value) for name, value in authed.headers.raw if name.lower() not in before]
        return authed.url, list(self._http.headers.raw), auth, dict(authed.extensions)

    def _settled(
        self, answer: httpx.Response | httpx.RequestError, verdict: Verdict, path: str
    ) -> httpx.Response:
        """The answer to hand back, or the error a terminal verdict raises."""
        if verdict is Verdict.UNREACHABLE:
            raise CustomerioTerminalError(
                f"cannot connect to Customer.io {self.api_name} at {self.base_url}"
                f" ({str(answer)[:120] or type(answer).__name__}): check"
                f" destination.customerio.{self.url_source} and this machine's network"
            )
        if verdict is Verdict.UNSENDABLE:
            # httpx's text may quote the header it refused: only its kind is shown
            keys = " and ".join(
                f"destination.customerio.{k}" for k in (*self.credential_keys, self.url_source)
            )
            raise CustomerioTerminalError(
                f"Customer.io {self.api_name} request {path} could not be written"
                f" ({type(answer).__name__}), so nothing was sent: check {keys} for"
                " whitespace, control or non-ASCII characters"
            )
        if verdict is Verdict.UNCERTAIN:
            raise OutcomeUnknown(_problem(answer))
        assert isinstance(answer, httpx.Response)
        if verdict is Verdict.REFUSED:
            raise self._refused(answer)
        if verdict is Verdict.MISDIRECTED:
            raise self._misdirected(answer, path)
        self.limiter.succeeded()
        return answer

    def _refused(self, response: httpx.Response) -> CustomerioTerminalError:
        """The error of a REFUSED answer (401, 403)."""
        return CredentialsError(self.api_name, response.status_code, self.credential_keys)

    def _back_off(
        self,
        answer: httpx.Response | httpx.RequestError,
        attempt: int,
        waited: float,
        path: str,
        stats: SendStats,
    ) -> float:
        """Wait before the next attempt and return how long; raise when none is left."""
        retry_after: float | None = None
        if isinstance(answer, httpx.Response):
            retry_after = retry_after_of(answer)
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
        return delay

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


Prepared = tuple[httpx.URL, list[tuple[bytes, bytes]], list[tuple[bytes, bytes]], dict[str, object]]
"""A direct-lane request's fixed parts: URL, the client's headers, the auth's, extensions."""


def _no_cookies() -> http.cookiejar.CookieJar:
    """A cookie jar that keeps no cookie: Customer.io's APIs need none, and a proxy's or
    gateway's cookie (e.g. a bot-management one) must not ride along on later requests."""
    return http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))


def environment_proxies() -> bool:
    """Whether the environment names a proxy httpx would send through (`HTTP_PROXY`,
    `HTTPS_PROXY`, `ALL_PROXY`): then the client picks a transport per URL, and every request
    goes through it."""
    proxies = urllib.request.getproxies()
    return any(proxies.get(scheme) for scheme in ("http", "https", "all"))


def unbound(response: httpx.Response) -> httpx.Response:
    """`response`, read, without httpx's reference cycle (its stream names the response back):
    so it, and its request's body of up to 500 KB, is freed when the last reference to it goes,
    not when Python's cyclic collector next reaches it (at 100 requests/s, hundreds of bodies
    were left waiting for that)."""
    response.stream = httpx.ByteStream(response.content)
    return response


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
