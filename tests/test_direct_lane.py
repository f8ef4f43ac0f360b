"""`ApiClient`'s direct lane: the request the client would send, handed to its transport.

The lane skips the client's per-request rounds; what reaches the transport (and so the wire)
must be what the client sends: method, URL, every header in order, the body, the timeouts and
the log line. A client whose auth is not a fixed header sends through the client itself, which
is the reference here.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from unittest import mock

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pytest_httpx import HTTPXMock

from cio_destination.transport.api import ApiClient, RetryPolicy
from cio_destination.transport.credentials import BearerAuth
from cio_destination.transport.ratelimit import RateLimiter
from cio_destination.transport.results import SendStats

BASE = "https://track.example.com"


class FlowAuth(httpx.Auth):
    """The same header as `auth`, from an auth the lane does not know: the client sends."""

    def __init__(self, auth: httpx.Auth) -> None:
        self.auth = auth

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        yield from self.auth.sync_auth_flow(request)


class Seen:
    """A transport that keeps what it was handed and answers from a list of statuses."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.requests: list[tuple[str, str, list[tuple[bytes, bytes]], bytes, object]] = []
        self.statuses = statuses or []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = b"".join(request.stream)  # as a transport reads it: the stream, not `.content`
        timeout = request.extensions.get("timeout")
        self.requests.append((request.method, str(request.url), request.headers.raw, body, timeout))
        status = self.statuses.pop(0) if self.statuses else 200
        return httpx.Response(status, json={})


def client_of(seen: Seen, auth: httpx.Auth, **options: object) -> ApiClient:
    return ApiClient(
        BASE,
        auth,
        limiter=RateLimiter(1e9),
        transport=httpx.MockTransport(seen),
        retry=RetryPolicy(backoff_base=0.0, backoff_cap=0.0),
        sleep=lambda _: None,
        **options,  # type: ignore[arg-type]
    )


@contextmanager
def client_sends() -> Iterator[mock.MagicMock]:
    """Counts the requests that go through `httpx.Client.request` (the client lane)."""
    with mock.patch.object(
        httpx.Client, "request", autospec=True, side_effect=httpx.Client.request
    ) as spy:
        yield spy


pieces = st.lists(st.binary(max_size=40), max_size=6).map(
    lambda parts: tuple(memoryview(p) if i % 2 else p for i, p in enumerate(parts))
)
auths = st.sampled_from(
    [httpx.BasicAuth("site-1", "key-1"), BearerAuth("sk_token"), httpx.BasicAuth("s", "k:é")]
)


@given(
    method=st.sampled_from(["POST", "PUT", "GET"]),
    path=st.sampled_from(["/api/v2/batch", "/api/v1/customers/a%20b", "/v1/send/email"]),
    body=st.one_of(st.none(), st.binary(max_size=60), pieces),
    auth=auths,
    timeout=st.sampled_from([30.0, 2.5]),
)
def test_the_direct_lane_hands_the_transport_the_request_the_client_sends(
    method: str, path: str, body: bytes | tuple | None, auth: httpx.Auth, timeout: float
):
    if method == "GET":
        body = None
    direct, reference = Seen(), Seen()
    with client_sends() as spy:
        client_of(direct, auth, timeout=timeout).request(method, path, body, SendStats())
        assert spy.call_count == 0  # the direct lane ran
        client_of(reference, FlowAuth(auth), timeout=timeout).request(
            method, path, body, SendStats()
        )
        assert spy.call_count == 1  # the reference went through the client
    assert direct.requests == reference.requests


def test_a_retried_request_of_pieces_carries_the_whole_body_each_time():
    seen = Seen([500, 503, 200])
    client = client_of(seen, httpx.BasicAuth("site-1", "key-1"))
    pieces = (b'{"batch":[', memoryview(b'{"a":1},{"b":2}'), b"]}")
    response = client.request("POST", "/api/v2/batch", pieces, SendStats())
    assert response.status_code == 200
    bodies = [body for _, _, _, body, _ in seen.requests]
    assert bodies == [b'{"batch":[{"a":1},{"b":2}]}'] * 3
    lengths = [dict(headers)[b"content-length"] for _, _, headers, _, _ in seen.requests]
    assert lengths == [b"27"] * 3


def test_the_direct_lane_logs_the_line_the_client_logs(caplog: pytest.LogCaptureFixture):
    auth = httpx.BasicAuth("site-1", "key-1")
    lines = []
    for chosen in (auth, FlowAuth(auth)):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="httpx"):
            client_of(Seen(), chosen).request("POST", "/api/v2/batch", b"{}", SendStats())
        lines.append([r.getMessage() for r in caplog.records if r.name == "httpx"])
    assert lines[0] == lines[1] == [f'HTTP Request: POST {BASE}/api/v2/batch "HTTP/1.1 200 OK"']


def test_a_proxy_named_by_the_environment_closes_the_direct_lane(
    httpx_mock: HTTPXMock, monkeypatch: pytest.MonkeyPatch
):
    # the client mounts a proxy transport for the URL: only it knows which transport to use
    httpx_mock.add_response(url=f"{BASE}/api/v2/batch", method="POST", json={})
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    client = ApiClient(BASE, httpx.BasicAuth("site-1", "key-1"), limiter=RateLimiter(1e9))
    with client_sends() as spy:
        client.request("POST", "/api/v2/batch", b"{}", SendStats())
    assert spy.call_count == 1
    assert len(httpx_mock.get_requests()) == 1


def test_without_a_proxy_requests_go_through_the_direct_lane(
    httpx_mock: HTTPXMock, monkeypatch: pytest.MonkeyPatch
):
    httpx_mock.add_response(url=f"{BASE}/api/v2/batch", method="POST", json={})
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("all_proxy", raising=False)
    client = ApiClient(BASE, httpx.BasicAuth("site-1", "key-1"), limiter=RateLimiter(1e9))
    with client_sends() as spy:
        client.request("POST", "/api/v2/batch", b"{}", SendStats())
    assert spy.call_count == 0
    request = httpx_mock.get_requests()[0]
    assert request.headers["authorization"] == "Basic " + base64.b64encode(b"site-1:key-1").decode()


def test_a_cookie_set_by_a_gateway_is_sent_back_by_neither_lane():
    """A gateway in front of the API may set a cookie: neither lane keeps it, so no later
    request carries it, whichever lane sends."""
    auth = httpx.BasicAuth("site-1", "key-1")
    for chosen in (auth, FlowAuth(auth)):
        seen: list[httpx.Request] = []

        def answer(request: httpx.Request, seen: list[httpx.Request] = seen) -> httpx.Response:
            seen.append(request)
            return httpx.Response(200, json={}, headers={"set-cookie": "__cf_bm=abc; Path=/"})

        client = ApiClient(
            BASE, chosen, limiter=RateLimiter(1e9), transport=httpx.MockTransport(answer)
        )
        for _ in range(2):
            client.request("POST", "/api/v2/batch", b"{}", SendStats())
        assert [r.headers.get("cookie") for r in seen] == [None, None]


def test_a_transport_error_on_the_direct_lane_names_its_request():
    """As through the client: an error raised by the transport carries the request it was."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    client = ApiClient(
        BASE,
        httpx.BasicAuth("site-1", "key-1"),
        limiter=RateLimiter(1e9),
        transport=httpx.MockTransport(refuse),
    )
    with client_sends() as spy, pytest.raises(httpx.ConnectError) as raised:
        client._attempt("POST", "/api/v2/batch", b"{}", [])
    assert spy.call_count == 0
    assert str(raised.value.request.url) == f"{BASE}/api/v2/batch"
