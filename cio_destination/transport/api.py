"""One Customer.io API over HTTP: its auth, its shared rate limit and its retries.

`ApiClient` sends one request until `classify` (`cio_destination.transport.answers`) gives an
answer that is not to be retried, and turns the terminal verdicts into this package's errors;
`TrackClient` (`.track`) and `AppClient` (`.app`) add each API's auth and calls.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import httpx

from cio_destination.exceptions import (
    CredentialsError,
    CustomerioTerminalError,
    CustomerioTransientError,
)
from cio_destination.transport.answers import Verdict, classify, retry_after_of
from cio_destination.transport.ratelimit import RateLimiter
from cio_destination.transport.results import SendStats
from cio_destination.version import __version__

logger = logging.getLogger("cio_destination")

Body = bytes | tuple[bytes | memoryview, ...]
"""A request body: whole, or in pieces the client writes one after another."""


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
        headers = None
        if body is not None and not isinstance(body, bytes):
            # pieces: streamed, not joined; a length, so they go as one body, not chunked
            headers = {"content-length": str(sum(len(piece) for piece in body))}
        while True:
            attempt += 1
            stats.throttled_seconds += self.limiter.acquire()
            if watcher is not None:
                watcher.leaving()
            stats.requests += 1
            answer: httpx.Response | httpx.RequestError
            try:
                answer = unbound(self._http.request(method, path, content=body, headers=headers))
            except httpx.RequestError as exc:
                answer = exc
            verdict = classify(answer, repeatable=repeatable, preflight=preflight)
            if verdict is not Verdict.RETRY:
                return self._settled(answer, verdict, path)
            if watcher is not None:
                watcher.failed(classify(answer, repeatable=False) is Verdict.UNCERTAIN)
            waited += self._back_off(answer, attempt, waited, path, stats)

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
