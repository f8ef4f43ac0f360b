"""The Track client against pytest-httpx: exact bodies, auth, hosts, 207/400/401, retries."""

from __future__ import annotations

import base64
import random

import httpx
import orjson
import pytest
from pytest_httpx import HTTPXMock

from cio_destination.client import TRACK_HOSTS, RetryPolicy, Sender, TrackClient
from cio_destination.exceptions import (
    CredentialsError,
    CustomerioTerminalError,
    CustomerioTransientError,
)
from cio_destination.operations import Entry
from cio_destination.ratelimit import RateLimiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def make_client(clock: FakeClock, base_url: str = "https://track.customer.io", **retry: float):
    limiter = RateLimiter(1000, clock=clock, sleep=clock.sleep)
    return TrackClient(
        base_url,
        "site-1",
        "key-1",
        limiter=limiter,
        retry=RetryPolicy(**retry) if retry else RetryPolicy(),
        sleep=clock.sleep,
        rng=random.Random(7),
    )


def entry(n: int) -> Entry:
    op = {"type": "person", "action": "identify", "identifiers": {"id": str(n)}}
    return Entry(orjson.dumps(op), str(n), [{"id": n}])


def batch_of(request: httpx.Request) -> list[dict]:
    return orjson.loads(request.content)["batch"]


@pytest.mark.parametrize("region", ["us", "eu"])
def test_posts_exact_body_with_basic_auth_to_region_host(httpx_mock: HTTPXMock, region: str):
    host = TRACK_HOSTS[region]
    httpx_mock.add_response(url=f"{host}/api/v2/batch", method="POST", json={})
    client = make_client(FakeClock(), host)

    result = client.send_batch([entry(1), entry(2)])

    request = httpx_mock.get_request()
    assert request.content == (
        b'{"batch":[{"type":"person","action":"identify","identifiers":{"id":"1"}},'
        b'{"type":"person","action":"identify","identifiers":{"id":"2"}}]}'
    )
    expected = "Basic " + base64.b64encode(b"site-1:key-1").decode()
    assert request.headers["authorization"] == expected
    assert request.headers["content-type"] == "application/json"
    assert result.rejections == []
    assert result.stats.accepted == 2
    assert result.stats.requests == 1


def test_207_rejects_exactly_the_named_entries(httpx_mock: HTTPXMock):
    httpx_mock.add_response(
        status_code=207,
        json={
            "errors": [
                {"batch_index": 1, "reason": "invalid", "field": "identifiers", "message": "bad"},
                {"batch_index": 3, "reason": "required", "field": "name", "message": "missing"},
            ]
        },
    )
    client = make_client(FakeClock())

    result = client.send_batch([entry(i) for i in range(5)])

    assert [(r.row_key, r.reason, r.field, r.message) for r in result.rejections] == [
        ("1", "invalid", "identifiers", "bad"),
        ("3", "required", "name", "missing"),
    ]
    assert result.stats.accepted == 3


def test_207_without_readable_errors_records_every_entry(httpx_mock: HTTPXMock):
    httpx_mock.add_response(status_code=207, text="not json")
    client = make_client(FakeClock())

    result = client.send_batch([entry(1), entry(2)])

    assert [(r.row_key, r.reason) for r in result.rejections] == [
        ("1", "unreadable_207"),
        ("2", "unreadable_207"),
    ]
    assert result.stats.accepted == 0


def test_400_is_narrowed_until_only_the_offending_entry_is_rejected(httpx_mock: HTTPXMock):
    delivered: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        ids = [op["identifiers"]["id"] for op in batch_of(request)]
        if "5" in ids:
            error = {"reason": "bad", "field": "x", "message": "m"}
            return httpx.Response(400, json={"errors": [error]})
        delivered.extend(ids)
        return httpx.Response(200, json={})

    httpx_mock.add_callback(answer, is_reusable=True)
    client = make_client(FakeClock())

    result = client.send_batch([entry(i) for i in range(8)])

    assert [(r.row_key, r.reason, r.field) for r in result.rejections] == [("5", "bad", "x")]
    assert result.stats.accepted == 7
    assert sorted(delivered) == ["0", "1", "2", "3", "4", "6", "7"]
    # 8 -> 4+4 -> 2+2 -> 1+1: one request per level plus the good halves
    assert len(httpx_mock.get_requests()) == 7


@pytest.mark.parametrize("status", [401, 403])
def test_bad_credentials_stop_at_once_naming_the_keys(httpx_mock: HTTPXMock, status: int):
    httpx_mock.add_response(status_code=status, json={"meta": {"error": "Unauthorized"}})
    client = make_client(FakeClock())

    with pytest.raises(CredentialsError) as raised:
        client.send_batch([entry(1)])

    assert isinstance(raised.value, CustomerioTerminalError)
    message = str(raised.value)
    assert "destination.customerio.site_id" in message
    assert "destination.customerio.api_key" in message
    assert "key-1" not in message
    assert len(httpx_mock.get_requests()) == 1


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_retryable_status_is_retried_then_succeeds(httpx_mock: HTTPXMock, status: int):
    httpx_mock.add_response(status_code=status)
    httpx_mock.add_response(status_code=200, json={})
    clock = FakeClock()
    client = make_client(clock)

    result = client.send_batch([entry(1)])

    assert result.stats.accepted == 1
    assert result.stats.retries == 1
    assert len(httpx_mock.get_requests()) == 2
    assert len(clock.sleeps) == 1


def test_network_errors_are_retried(httpx_mock: HTTPXMock):
    httpx_mock.add_exception(httpx.ConnectError("refused"))
    httpx_mock.add_exception(httpx.ReadTimeout("slow"))
    httpx_mock.add_response(json={})
    client = make_client(FakeClock())

    result = client.send_batch([entry(1)])

    assert result.stats.accepted == 1
    assert result.stats.retries == 2


def test_retry_after_is_honoured_and_capped(httpx_mock: HTTPXMock):
    httpx_mock.add_response(status_code=429, headers={"Retry-After": "7"})
    httpx_mock.add_response(status_code=429, headers={"Retry-After": "3600"})
    httpx_mock.add_response(json={})
    clock = FakeClock()
    client = make_client(clock, retry_after_cap=60.0)

    result = client.send_batch([entry(1)])

    assert result.stats.throttled == 2
    # the two retry sleeps: Retry-After 7, then the cap of 60 (the limiter may add its own pause)
    retry_sleeps = [s for s in clock.sleeps if s >= 7.0]
    assert retry_sleeps[0] == pytest.approx(7.0, abs=0.01)
    assert max(clock.sleeps) == pytest.approx(60.0, abs=0.01)


def test_backoff_grows_exponentially_with_jitter():
    policy = RetryPolicy(backoff_base=0.5, backoff_cap=30.0)
    rng = random.Random(1)
    delays = [policy.delay(attempt, rng, None) for attempt in range(1, 8)]
    for attempt, delay in enumerate(delays, start=1):
        ceiling = min(30.0, 0.5 * 2 ** (attempt - 1))
        assert ceiling / 2 <= delay <= ceiling
    assert delays[-1] >= 15.0


def test_attempts_run_out_as_transient_error(httpx_mock: HTTPXMock):
    for _ in range(3):
        httpx_mock.add_response(status_code=503)
    client = make_client(FakeClock(), max_attempts=3)

    with pytest.raises(CustomerioTransientError) as raised:
        client.send_batch([entry(1)])

    assert "3 times" in str(raised.value)
    assert len(httpx_mock.get_requests()) == 3


@pytest.mark.parametrize("status", [400, 404, 422])
def test_other_4xx_are_never_retried(httpx_mock: HTTPXMock, status: int):
    httpx_mock.add_response(status_code=status, json={})
    client = make_client(FakeClock())

    try:
        client.send_batch([entry(1)])
    except CustomerioTerminalError:
        assert status == 404
    assert len(httpx_mock.get_requests()) == 1


def test_sender_splits_bodies_under_the_limit_and_sends_them_concurrently(httpx_mock: HTTPXMock):
    httpx_mock.add_response(json={}, is_reusable=True)
    client = make_client(FakeClock())
    sender = Sender(client, max_in_flight=4, max_request_bytes=2_000)
    entries = [entry(i) for i in range(200)]

    result = sender.send(entries)

    requests = httpx_mock.get_requests()
    assert len(requests) > 1
    assert all(len(r.content) <= 2_000 for r in requests)
    sent = [op["identifiers"]["id"] for r in requests for op in batch_of(r)]
    assert sorted(sent, key=int) == [str(i) for i in range(200)]
    assert result.stats.accepted == 200
    assert result.error is None
    sender.close()


def test_sender_keeps_partial_rejections_when_another_body_fails(httpx_mock: HTTPXMock):
    def answer(request: httpx.Request) -> httpx.Response:
        ids = [op["identifiers"]["id"] for op in batch_of(request)]
        if "0" in ids:
            return httpx.Response(207, json={"errors": [{"batch_index": 0, "reason": "r"}]})
        return httpx.Response(503)

    httpx_mock.add_callback(answer, is_reusable=True)
    client = make_client(FakeClock(), max_attempts=2)
    sender = Sender(client, max_in_flight=2, max_request_bytes=1_000)

    result = sender.send([entry(i) for i in range(30)])

    assert isinstance(result.error, CustomerioTransientError)
    assert [r.row_key for r in result.rejections] == ["0"]
    sender.close()
