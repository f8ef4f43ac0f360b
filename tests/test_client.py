"""The Track client against pytest-httpx: exact bodies, auth, hosts, 207/400/401, retries."""

from __future__ import annotations

import base64
import random

import httpx
import orjson
import pytest
from pytest_httpx import HTTPXMock

from cio_destination.entries import Entry
from cio_destination.exceptions import (
    CredentialsError,
    CustomerioTerminalError,
    CustomerioTransientError,
)
from cio_destination.transport.answers import ServerText
from cio_destination.transport.api import OutcomeUnknown, RetryPolicy
from cio_destination.transport.app import AppClient
from cio_destination.transport.ratelimit import RateLimiter
from cio_destination.transport.regions import TRACK_HOSTS
from cio_destination.transport.results import SendStats
from cio_destination.transport.sender import Sender
from cio_destination.transport.track import TrackClient

from .in_flight import InFlight


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


@pytest.mark.parametrize(
    "errors",
    [
        [{"batch_index": 0, "reason": "invalid"}, {"batch_index": 3, "reason": "invalid"}],
        [{"batch_index": 0, "reason": "invalid"}, {"batch_index": "1", "reason": "invalid"}],
        [{"batch_index": 0}, {"batch_index": 1.0}],
        [{"batch_index": True}],
        [{"batch_index": 0}, {"batch_index": False}],
        [{"batch_index": 0}, {"batch_index": -1}],
        [{"batch_index": 0}, {"reason": "invalid"}],
        [{"batch_index": 0}, {"batch_index": None}],
        [{"batch_index": 0}, "entry 1 is invalid"],
        [{"batch_index": 0}, [1]],
        [],
    ],
    ids=[
        "out_of_range",
        "string",
        "float",
        "true",
        "false",
        "negative",
        "missing",
        "null",
        "text_item",
        "list_item",
        "none",
    ],
)
def test_a_207_with_any_error_not_naming_an_entry_records_every_entry_as_unreadable(
    httpx_mock: HTTPXMock, errors: list
):
    """Customer.io accepted the entries a 207 does not name; an error that names no entry we
    sent means we cannot tell which those are, so none is counted as delivered."""
    httpx_mock.add_response(status_code=207, json={"errors": errors})
    client = make_client(FakeClock())

    result = client.send_batch([entry(i) for i in range(3)])

    assert [(r.row_key, r.reason) for r in result.rejections] == [
        (str(i), "unreadable_207") for i in range(3)
    ]
    assert list(result.delivered_entries()) == []
    assert result.stats.accepted == 0


@pytest.mark.parametrize("body", [{"errors": "entry 1"}, {"errors": {"batch_index": 1}}, [1]])
def test_a_207_whose_errors_are_not_a_list_records_every_entry_as_unreadable(
    httpx_mock: HTTPXMock, body
):
    httpx_mock.add_response(status_code=207, json=body)
    client = make_client(FakeClock())

    result = client.send_batch([entry(i) for i in range(2)])

    assert {r.reason for r in result.rejections} == {"unreadable_207"}
    assert len(result.rejections) == 2 and result.stats.accepted == 0


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

    raised: CustomerioTerminalError | None = None
    try:
        client.send_batch([entry(1)])
    except CustomerioTerminalError as error:
        raised = error
    assert (raised is not None) == (status == 404)  # a 404 is a wrong URL, the others reject
    assert len(httpx_mock.get_requests()) == 1


def test_sender_splits_bodies_under_the_limit_and_sends_them_concurrently(httpx_mock: HTTPXMock):
    in_flight = InFlight(4, let_through=1)  # the first body goes alone, to check the credentials

    def answer(request: httpx.Request) -> httpx.Response:
        with in_flight.request():
            return httpx.Response(200, json={})

    httpx_mock.add_callback(answer, is_reusable=True)
    client = make_client(FakeClock())
    sender = Sender(client, max_in_flight=4, max_request_bytes=2_000)
    sender.window.observe(1.0)  # answers take a second: at 1,000/s, the cap (4) is wanted
    entries = [entry(i) for i in range(200)]

    result = sender.send(entries)

    requests = httpx_mock.get_requests()
    assert len(requests) > 1
    assert all(len(r.content) <= 2_000 for r in requests)
    sent = [op["identifiers"]["id"] for r in requests for op in batch_of(r)]
    assert sorted(sent, key=int) == [str(i) for i in range(200)]
    assert result.stats.accepted == 200
    assert result.error is None
    assert in_flight.filled and in_flight.most == 4  # four at once, never more
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


@pytest.mark.parametrize("status", [401, 403, 302, 404, 405])
def test_a_refused_or_misdirected_batch_stops_every_later_batch_of_the_load(
    httpx_mock: HTTPXMock, status: int
):
    httpx_mock.add_response(
        status_code=status, headers={"location": "https://elsewhere.example/"}, is_reusable=True
    )
    sender = Sender(make_client(FakeClock()), max_in_flight=4, max_request_bytes=1_000)

    first = sender.send([entry(i) for i in range(30)])
    later = sender.send([entry(i) for i in range(30, 60)])
    assert len(httpx_mock.get_requests()) == 1
    sender.forget_refusal()  # the next load tries one request again
    again = sender.send([entry(i) for i in range(30)])
    sender.close()

    assert len(httpx_mock.get_requests()) == 2
    for result in (first, later, again):
        assert isinstance(result.error, CustomerioTerminalError)
        assert f"HTTP {status}" in str(result.error)


# Every status a Track request can be answered with, by the class it belongs to.
DELIVERED_STATUS = [200, 201, 202, 203, 204, 206, 226, 299]
NARROWED_STATUS = [400, 413, 422]
REJECTED_STATUS = [402, 406, 409, 410, 411, 415, 418, 421, 425, 426, 428, 431, 451, 499]
MISDIRECTED_STATUS = [300, 301, 302, 303, 304, 305, 307, 308, 399, 404, 405]
REFUSED_STATUS = [401, 403]
RETRIED_STATUS = [100, 101, 103, 199, 408, 429, 500, 501, 502, 503, 504, 505, 507, 520, 524, 599]


@pytest.mark.parametrize(
    "status",
    DELIVERED_STATUS
    + NARROWED_STATUS
    + REJECTED_STATUS
    + MISDIRECTED_STATUS
    + REFUSED_STATUS
    + RETRIED_STATUS,
)
def test_every_status_accounts_for_every_entry_of_the_batch(httpx_mock: HTTPXMock, status: int):
    headers = {"location": "https://elsewhere.example/api/v2/batch"} if status // 100 == 3 else {}
    httpx_mock.add_response(
        url="https://track.customer.io/api/v2/batch",
        status_code=status,
        headers=headers,
        json={},
        is_reusable=True,
    )
    client = make_client(FakeClock(), max_attempts=2)
    entries = [entry(i) for i in range(4)]
    keys = {e.row_key for e in entries}

    raised: Exception | None = None
    try:
        result = client.send_batch(entries)
    except Exception as error:  # every entry is in the raised error: dlt keeps the package
        raised = error
    requests = httpx_mock.get_requests()
    assert all(r.url.host == "track.customer.io" for r in requests)  # never followed

    if status in DELIVERED_STATUS:
        assert raised is None
        assert [e.row_key for e in result.delivered_entries()] == sorted(keys)
        assert result.rejections == [] and result.stats.accepted == 4
    elif status in NARROWED_STATUS or status in REJECTED_STATUS:
        assert raised is None
        assert list(result.delivered_entries()) == []
        reason = "entry_too_large" if status == 413 else f"http_{status}"
        assert sorted((r.row_key, r.reason) for r in result.rejections) == [
            (k, reason) for k in sorted(keys)
        ]
        if status in REJECTED_STATUS:
            assert len(requests) == 1  # the whole request was refused: no narrowing
    elif status in MISDIRECTED_STATUS:
        assert type(raised) is CustomerioTerminalError
        assert "destination.customerio.track_url" in str(raised)
        assert f"HTTP {status}" in str(raised)
        assert len(requests) == 1
    elif status in REFUSED_STATUS:
        assert isinstance(raised, CredentialsError)
        assert len(requests) == 1
    else:
        assert isinstance(raised, CustomerioTransientError)
        assert len(requests) == 2


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_never_followed_and_names_the_url_and_region_keys(
    httpx_mock: HTTPXMock, status: int
):
    httpx_mock.add_response(
        url="https://track.customer.io/api/v2/batch",
        status_code=status,
        headers={"location": "https://track-eu.customer.io/api/v2/batch"},
    )
    client = make_client(FakeClock())

    with pytest.raises(CustomerioTerminalError) as raised:
        client.send_batch([entry(1), entry(2)])

    message = str(raised.value)
    assert "redirect" in message and "track-eu.customer.io" in message
    assert "destination.customerio.track_url" in message
    assert "destination.customerio.region" in message
    assert "key-1" not in message
    assert len(httpx_mock.get_requests()) == 1


def test_a_misdirected_request_names_region_when_the_host_came_from_the_region(
    httpx_mock: HTTPXMock,
):
    httpx_mock.add_response(status_code=404)
    limiter = RateLimiter(1000, clock=FakeClock(), sleep=FakeClock().sleep)
    client = TrackClient(TRACK_HOSTS["eu"], "site-1", "key-1", limiter=limiter, url_source="region")

    with pytest.raises(CustomerioTerminalError) as raised:
        client.send_batch([entry(1)])

    assert "destination.customerio.region" in str(raised.value)
    assert "track_url" not in str(raised.value)


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_any_2xx_answer_to_a_send_counts_as_sent(httpx_mock: HTTPXMock, status: int):
    httpx_mock.add_response(status_code=status, json={"delivery_id": "d-1"})
    clock = FakeClock()
    limiter = RateLimiter(1000, clock=clock, sleep=clock.sleep)
    client = AppClient("https://api.customer.io", "app-key-1", limiter=limiter, sleep=clock.sleep)
    stats = SendStats()

    outcome = client.send_email(b'{"to": "a@example.com"}', stats)

    assert outcome.rejection is None and outcome.delivery_id == "d-1"
    assert stats.accepted == 1


def make_app_client(clock: FakeClock, **retry: float) -> AppClient:
    limiter = RateLimiter(1000, clock=clock, sleep=clock.sleep)
    return AppClient(
        "https://api.customer.io",
        "app-key-1",
        limiter=limiter,
        retry=RetryPolicy(**retry) if retry else RetryPolicy(),
        sleep=clock.sleep,
        rng=random.Random(7),
    )


SEND = b'{"transactional_message_id": 1, "to": "a@example.com"}'
# Answers after which Customer.io may already have taken the send.
MAYBE_TAKEN = [
    httpx.Response(408),
    httpx.Response(500),
    httpx.Response(502),
    httpx.Response(503),
    httpx.Response(504),
    httpx.Response(520),
    httpx.Response(524),
    httpx.Response(599),
    httpx.Response(101),
    httpx.ReadTimeout("no answer"),
    httpx.WriteTimeout("half sent"),
    httpx.RemoteProtocolError("dropped"),
    httpx.ReadError("reset"),
]
# Answers that prove the send never reached Customer.io.
NOT_TAKEN = [
    httpx.Response(429, headers={"Retry-After": "0"}),
    httpx.ConnectError("refused"),
    httpx.ConnectTimeout("no route"),
    httpx.PoolTimeout("pool full"),
]


def _name(answer: httpx.Response | Exception) -> str:
    if isinstance(answer, httpx.Response):
        return f"http_{answer.status_code}"
    return type(answer).__name__


def _answer(httpx_mock: HTTPXMock, answer: httpx.Response | Exception) -> None:
    if isinstance(answer, Exception):
        httpx_mock.add_exception(answer)
    else:
        httpx_mock.add_response(status_code=answer.status_code, headers=answer.headers)


@pytest.mark.parametrize("answer", MAYBE_TAKEN, ids=_name)
def test_a_send_that_may_have_been_taken_is_uncertain_and_not_retried(
    httpx_mock: HTTPXMock, answer: httpx.Response | Exception
):
    _answer(httpx_mock, answer)
    client = make_app_client(FakeClock())

    with pytest.raises(OutcomeUnknown):
        client.send_email(SEND, SendStats())

    assert len(httpx_mock.get_requests()) == 1


@pytest.mark.parametrize("answer", NOT_TAKEN, ids=_name)
def test_a_send_that_never_arrived_is_retried(
    httpx_mock: HTTPXMock, answer: httpx.Response | Exception
):
    _answer(httpx_mock, answer)
    httpx_mock.add_response(json={"delivery_id": "d-1"})
    client = make_app_client(FakeClock())

    outcome = client.send_email(SEND, SendStats())

    assert outcome.delivery_id == "d-1"
    assert len(httpx_mock.get_requests()) == 2


@pytest.mark.parametrize("answer", MAYBE_TAKEN, ids=_name)
def test_resend_uncertain_retries_a_send_like_any_request(
    httpx_mock: HTTPXMock, answer: httpx.Response | Exception
):
    _answer(httpx_mock, answer)
    httpx_mock.add_response(json={"delivery_id": "d-1"})
    client = make_app_client(FakeClock())

    outcome = client.send_email(SEND, SendStats(), resend_uncertain=True)

    assert outcome.delivery_id == "d-1"
    assert len(httpx_mock.get_requests()) == 2


# Requests httpx refuses to write: nothing left the machine, and nothing will.
UNSENDABLE = [
    httpx.LocalProtocolError("Illegal header value b'Bearer app-key-1\\n'"),
    httpx.UnsupportedProtocol("Request URL has an unsupported protocol 'htp://'"),
]


@pytest.mark.parametrize("answer", UNSENDABLE, ids=_name)
@pytest.mark.parametrize("resend_uncertain", [False, True])
def test_a_send_httpx_cannot_write_stops_at_once_naming_the_keys_and_not_its_text(
    httpx_mock: HTTPXMock, answer: Exception, resend_uncertain: bool
):
    httpx_mock.add_exception(answer)
    client = make_app_client(FakeClock())

    with pytest.raises(CustomerioTerminalError) as raised:
        client.send_email(SEND, SendStats(), resend_uncertain=resend_uncertain)

    message = str(raised.value)
    assert "destination.customerio.app_api_key" in message
    assert "destination.customerio.app_url" in message
    assert "nothing was sent" in message
    assert "Bearer" not in message and "htp" not in message
    assert len(httpx_mock.get_requests()) == 1


@pytest.mark.parametrize("answer", UNSENDABLE, ids=_name)
def test_a_batch_httpx_cannot_write_stops_at_once_naming_the_keys(
    httpx_mock: HTTPXMock, answer: Exception
):
    httpx_mock.add_exception(answer)
    client = make_client(FakeClock())

    with pytest.raises(CustomerioTerminalError) as raised:
        client.send_batch([entry(1)])

    assert "destination.customerio.site_id and destination.customerio.api_key" in str(raised.value)
    assert len(httpx_mock.get_requests()) == 1


@pytest.mark.parametrize("key", ["track_url", "region"])
def test_a_refused_region_check_stops_at_once_naming_the_url_and_its_key(
    httpx_mock: HTTPXMock, key: str
):
    httpx_mock.add_exception(httpx.ConnectError("[Errno 111] Connection refused"))
    clock = FakeClock()
    limiter = RateLimiter(1000, clock=clock, sleep=clock.sleep)
    client = TrackClient(
        "https://track-eu.customer.io",
        "site-1",
        "key-1",
        limiter=limiter,
        sleep=clock.sleep,
        url_source=key,
    )

    with pytest.raises(CustomerioTerminalError) as raised:
        client.account_region()

    message = str(raised.value)
    assert "https://track-eu.customer.io" in message
    assert f"destination.customerio.{key}" in message
    assert "Connection refused" in message
    assert len(httpx_mock.get_requests()) == 1
    assert clock.sleeps == []


def person(email: str, **attributes: object) -> Entry:
    op = {
        "type": "person",
        "action": "identify",
        "identifiers": {"email": email},
        "attributes": attributes,
    }
    return Entry(orjson.dumps(op), email, [{"email": email, **attributes}])


ECHO = (
    "attribute 'plan' has value 'Gold-7731' for ADA.L@example.com (score 12345);"
    ' "Ada Lovelace" is not allowed; id 8 ok; contact bob@elsewhere.example'
)
MASKED = (
    "attribute 'plan' has value '<value>' for <value> (score <value>);"
    ' "<value>" is not allowed; id 8 ok; contact <value>'
)


def test_a_207_message_keeps_reason_and_field_and_masks_every_value(httpx_mock: HTTPXMock):
    error = {"batch_index": 1, "reason": "invalid_value", "field": "attributes.plan"}
    httpx_mock.add_response(status_code=207, json={"errors": [{**error, "message": ECHO}]})
    client = make_client(FakeClock())
    echoed = person("ada.l@example.com", plan="Gold-7731", score=12345, name="Ada Lovelace")

    result = client.send_batch([person("x@example.com", plan="a"), echoed])

    [rejection] = result.rejections
    assert (rejection.reason, rejection.field) == ("invalid_value", "attributes.plan")
    assert rejection.message == MASKED


def test_a_narrowed_400_message_masks_the_values_of_its_entry(httpx_mock: HTTPXMock):
    error = {"reason": "invalid", "field": "identifiers.email", "message": ECHO}
    httpx_mock.add_response(status_code=400, json={"errors": [error]})
    client = make_client(FakeClock())
    echoed = person("ada.l@example.com", plan="Gold-7731", score=12345, name="Ada Lovelace")

    result = client.send_batch([echoed])

    [rejection] = result.rejections
    assert (rejection.reason, rejection.field) == ("invalid", "identifiers.email")
    assert rejection.message == MASKED


def test_a_refused_send_message_masks_the_values_of_its_body(httpx_mock: HTTPXMock):
    httpx_mock.add_response(status_code=400, json={"meta": {"error": ECHO}})
    client = make_app_client(FakeClock())
    body = {
        "transactional_message_id": 3,
        "to": "ada.l@example.com",
        "identifiers": {"email": "ada.l@example.com"},
        "message_data": {"plan": "Gold-7731", "score": 12345, "name": "Ada Lovelace"},
    }

    outcome = client.send_email(orjson.dumps(body), SendStats())

    assert outcome.rejection == ("http_400", None, MASKED)


def server_text(attributes: dict) -> ServerText:
    op = {
        "type": "person",
        "action": "identify",
        "identifiers": {"id": "u1"},
        "attributes": attributes,
    }
    return ServerText(orjson.dumps(op))


@pytest.mark.parametrize(
    ("value", "echoed"),
    [
        (1500000.0, "1.5e+06"),
        (1500000.0, "1500000"),
        (1500000.0, "1.5E6"),
        (1500000, "1500000.0"),
        (12345678901234567890, "1.2345678901234567e+19"),
        (0.1, "0.10000000000000001"),
        (-2.5, "-2.50"),
    ],
)
def test_a_number_echoed_in_another_form_is_masked(value: float, echoed: str):
    text = server_text({"amount": value})

    assert text(f"amount {echoed} is out of range; the limit is 1000 bytes") == (
        "amount <value> is out of range; the limit is 1000 bytes"
    )


@pytest.mark.parametrize(
    ("value", "echoed"),
    [
        ('say "hi" now', 'say \\"hi\\" now'),
        ("line1\nline2", "line1\\nline2"),
        ("Z\u00fcrich", "Z\\u00fcrich"),
        ("back\\slash", "back\\\\slash"),
        ("tab\there", "tab\\there"),
    ],
    ids=["quote", "newline", "non_ascii", "backslash", "tab"],
)
def test_a_text_echoed_json_escaped_is_masked(value: str, echoed: str):
    text = server_text({"note": value})

    assert text(f"attribute note: value {echoed} is invalid") == (
        "attribute note: value <value> is invalid"
    )


def test_keys_inside_a_row_s_json_data_are_values_not_names():
    text = server_text({"prefs": {"SSN-123-45": {"level": 1}, "Plan Gold": True}})

    assert text("in prefs: key 'SSN-123-45' and key SSN-123-45 and 'Plan Gold' invalid") == (
        "in prefs: key '<value>' and key <value> and '<value>' invalid"
    )
    assert text("attribute 'prefs' is too deep") == "attribute 'prefs' is too deep"


def test_a_long_server_message_is_capped(httpx_mock: HTTPXMock):
    error = {"batch_index": 0, "reason": "r", "message": "too long " * 500}
    httpx_mock.add_response(status_code=207, json={"errors": [error]})
    client = make_client(FakeClock())

    result = client.send_batch([entry(1)])

    assert 0 < len(result.rejections[0].message) <= 300
