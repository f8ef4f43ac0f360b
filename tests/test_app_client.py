"""The App API client (transactional sends) against pytest-httpx: the exact request, and what each
class of answer does to a send: delivered, rejected, refused, retried, or left uncertain."""

from __future__ import annotations

import random

import httpx
import orjson
import pytest
from pytest_httpx import HTTPXMock

from cio_destination.exceptions import (
    CredentialsError,
    CustomerioTerminalError,
    CustomerioTransientError,
)
from cio_destination.transport.api import OutcomeUnknown, RetryPolicy
from cio_destination.transport.app import AppClient, SendOutcome
from cio_destination.transport.ratelimit import RateLimiter
from cio_destination.transport.regions import APP_HOSTS
from cio_destination.transport.results import SendStats

APP = APP_HOSTS["us"]
SEND_URL = f"{APP}/v1/send/email"
APP_KEY = "app-key-1"
SEND = orjson.dumps(
    {
        "transactional_message_id": 7,
        "to": "ada.l@example.com",
        "identifiers": {"id": "42"},
        "message_data": {"plan": "Gold-7731", "name": "Ada Lovelace"},
    }
)


class Clock:
    """Time that moves only when someone sleeps. The client's waits between attempts and the
    rate limiter's waits are kept apart, so a test reads the retry waits alone."""

    def __init__(self) -> None:
        self.now = 0.0
        self.retry_waits: list[float] = []
        self.limiter_waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    def retry_sleep(self, seconds: float) -> None:
        self.retry_waits.append(seconds)
        self.now += seconds

    def limiter_sleep(self, seconds: float) -> None:
        self.limiter_waits.append(seconds)
        self.now += seconds


def app_client(
    clock: Clock, url: str = APP, *, url_source: str | None = None, **retry: float
) -> AppClient:
    return AppClient(
        url,
        APP_KEY,
        limiter=RateLimiter(10, clock=clock, sleep=clock.limiter_sleep),
        retry=RetryPolicy(**retry),  # type: ignore[arg-type]
        sleep=clock.retry_sleep,
        rng=random.Random(3),
        url_source=url_source,
    )


# -- the request -------------------------------------------------------------------------------


@pytest.mark.parametrize("region", ["us", "eu"])
def test_a_send_posts_its_body_as_is_with_the_bearer_key_and_returns_the_delivery_id(
    httpx_mock: HTTPXMock, region: str
):
    host = APP_HOSTS[region]
    httpx_mock.add_response(
        url=f"{host}/v1/send/email", method="POST", json={"delivery_id": "dlv-1", "queued_at": 1}
    )
    stats = SendStats()

    outcome = app_client(Clock(), host).send_email(SEND, stats)

    request = httpx_mock.get_request()
    assert request is not None
    assert (request.method, str(request.url)) == ("POST", f"{host}/v1/send/email")
    assert request.content == SEND
    assert request.headers["authorization"] == f"Bearer {APP_KEY}"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"].startswith("cio-destination/")
    assert outcome == SendOutcome(delivery_id="dlv-1")
    assert stats == SendStats(requests=1, accepted=1)


def test_the_base_url_may_end_with_a_slash(httpx_mock: HTTPXMock):
    httpx_mock.add_response(url="http://127.0.0.1:8080/v1/send/email", json={"delivery_id": "d"})

    outcome = app_client(Clock(), "http://127.0.0.1:8080/").send_email(SEND, SendStats())

    assert outcome.delivery_id == "d"


# -- delivered ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "content", "delivery_id"),
    [
        (200, b'{"delivery_id": "dlv-9"}', "dlv-9"),
        (201, b'{"delivery_id": 12345}', "12345"),
        (202, b"{}", ""),  # accepted, but no id to keep
        (204, b"", ""),
        (207, b'{"delivery_id": "dlv-7"}', "dlv-7"),
        (200, b"not json", ""),
    ],
)
def test_any_2xx_delivers_the_send_with_the_delivery_id_it_names(
    httpx_mock: HTTPXMock, status: int, content: bytes, delivery_id: str
):
    httpx_mock.add_response(status_code=status, content=content)
    clock = Clock()
    stats = SendStats()

    outcome = app_client(clock).send_email(SEND, stats)

    assert outcome == SendOutcome(delivery_id=delivery_id)
    assert stats.accepted == 1 and stats.requests == 1 and stats.retries == 0
    assert clock.retry_waits == []


# -- rejected ----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 409, 413, 422, 451])
def test_a_refused_send_is_rejected_once_with_its_status_and_masked_message(
    httpx_mock: HTTPXMock, status: int
):
    echo = "message_data.plan 'Gold-7731' for ada.l@example.com: Ada Lovelace is not allowed"
    httpx_mock.add_response(status_code=status, json={"meta": {"error": echo}})
    clock = Clock()
    stats = SendStats()

    outcome = app_client(clock).send_email(SEND, stats)

    masked = "message_data.plan '<value>' for <value>: <value> is not allowed"
    assert outcome == SendOutcome(rejection=(f"http_{status}", None, masked))
    assert len(httpx_mock.get_requests()) == 1
    assert stats.accepted == 0 and stats.retries == 0
    assert clock.retry_waits == []


@pytest.mark.parametrize(
    "content", [b"", b"<html>Bad Request</html>", b'{"meta": {}}', b'["a list"]']
)
def test_a_refusal_without_a_readable_error_says_the_status(httpx_mock: HTTPXMock, content: bytes):
    httpx_mock.add_response(status_code=400, content=content)

    outcome = app_client(Clock()).send_email(SEND, SendStats())

    assert outcome.rejection == ("http_400", None, "Customer.io answered HTTP 400")
    assert outcome.delivery_id is None


# -- refused credentials, wrong URL -----------------------------------------------------------


def test_refused_credentials_stop_at_once_naming_the_app_api_key(httpx_mock: HTTPXMock):
    httpx_mock.add_response(status_code=401, json={"meta": {"error": "unauthorized"}})
    clock = Clock()

    with pytest.raises(CredentialsError) as raised:
        app_client(clock).send_email(SEND, SendStats(), resend_uncertain=True)

    assert (raised.value.api, raised.value.status) == ("App API", 401)
    assert raised.value.keys == ("app_api_key",)
    assert "destination.customerio.app_api_key" in str(raised.value)
    assert "site_id" not in str(raised.value)
    assert len(httpx_mock.get_requests()) == 1
    assert clock.retry_waits == []


def test_a_403_to_a_send_stops_at_once_naming_the_workspace_state_and_the_key(
    httpx_mock: HTTPXMock,
):
    httpx_mock.add_response(status_code=403, json={"meta": {"error": "forbidden"}})
    clock = Clock()

    with pytest.raises(CustomerioTerminalError) as raised:
        app_client(clock).send_email(SEND, SendStats(), resend_uncertain=True)

    message = str(raised.value)
    assert not isinstance(raised.value, CredentialsError)  # the workspace's state, not the key
    assert "HTTP 403" in message and "Do Not Send" in message
    assert "destination.customerio.app_api_key" in message
    assert len(httpx_mock.get_requests()) == 1
    assert clock.retry_waits == []


@pytest.mark.parametrize(("status", "source"), [(404, None), (405, None), (302, "region")])
def test_a_wrong_url_stops_at_once_naming_the_key_that_set_it(
    httpx_mock: HTTPXMock, status: int, source: str | None
):
    httpx_mock.add_response(
        status_code=status, headers={"location": "https://elsewhere.example/v1/send/email?k=1"}
    )

    with pytest.raises(CustomerioTerminalError) as raised:
        app_client(Clock(), url_source=source).send_email(SEND, SendStats())

    message = str(raised.value)
    assert not isinstance(raised.value, CredentialsError)
    assert f"destination.customerio.{source or 'app_url'}" in message
    assert APP in message and f"HTTP {status}" in message
    assert "k=1" not in message  # a redirect target's query never reaches the message
    assert len(httpx_mock.get_requests()) == 1  # the redirect was not followed


# -- throttled: retried ------------------------------------------------------------------------


def test_a_429_is_retried_after_its_retry_after_and_slows_the_shared_rate(
    httpx_mock: HTTPXMock,
):
    httpx_mock.add_response(status_code=429, headers={"Retry-After": "7"})
    httpx_mock.add_response(json={"delivery_id": "dlv-2"})
    clock = Clock()
    client = app_client(clock)
    stats = SendStats()

    outcome = client.send_email(SEND, stats)

    assert outcome == SendOutcome(delivery_id="dlv-2")
    first, second = httpx_mock.get_requests()
    assert first.content == second.content == SEND
    assert second.headers["authorization"] == f"Bearer {APP_KEY}"
    assert clock.retry_waits == [7.0]
    assert clock.now >= 7.0  # the retry started no earlier than Customer.io asked
    assert (stats.requests, stats.retries, stats.throttled, stats.accepted) == (2, 1, 1, 1)
    # the 429 halved the shared rate; the success after it won a twentieth of it back
    assert client.limiter.rate == pytest.approx(10 / 2 + 10 / 20)


@pytest.mark.parametrize(
    ("retry_after", "low", "high"),
    [
        ("3600", 60.0, 60.0),  # capped at retry_after_cap
        ("0", 0.25, 0.5),  # no wait asked: the first backoff, 0.5 s with jitter
        ("Wed, 21 Oct 2026 07:28:00 GMT", 0.25, 0.5),  # a date: the backoff too
    ],
)
def test_retry_after_is_honoured_up_to_its_cap(
    httpx_mock: HTTPXMock, retry_after: str, low: float, high: float
):
    httpx_mock.add_response(status_code=429, headers={"Retry-After": retry_after})
    httpx_mock.add_response(json={"delivery_id": "d"})
    clock = Clock()

    app_client(clock).send_email(SEND, SendStats())

    [wait] = clock.retry_waits
    assert low <= wait <= high


def test_429s_until_the_attempts_run_out_leave_the_send_transient(httpx_mock: HTTPXMock):
    httpx_mock.add_response(status_code=429, headers={"Retry-After": "1"}, is_reusable=True)
    clock = Clock()
    stats = SendStats()

    with pytest.raises(CustomerioTransientError) as raised:
        app_client(clock, max_attempts=3).send_email(SEND, stats)

    assert "/v1/send/email failed 3 times, last with HTTP 429" in str(raised.value)
    assert len(httpx_mock.get_requests()) == 3
    assert len(clock.retry_waits) == 2
    assert (stats.requests, stats.throttled, stats.accepted) == (3, 3, 0)


def test_waits_past_the_retry_budget_leave_the_send_transient(httpx_mock: HTTPXMock):
    httpx_mock.add_response(status_code=429, headers={"Retry-After": "60"}, is_reusable=True)
    clock = Clock()

    with pytest.raises(CustomerioTransientError):
        app_client(clock, max_attempts=10, budget=100.0).send_email(SEND, SendStats())

    assert clock.retry_waits == [60.0]  # a second wait of 60 s would pass the 100 s budget
    assert len(httpx_mock.get_requests()) == 2


@pytest.mark.parametrize(
    "error",
    [httpx.ConnectError("refused"), httpx.ConnectTimeout("no route"), httpx.PoolTimeout("full")],
    ids=lambda e: type(e).__name__,
)
def test_a_send_that_never_left_is_retried_and_sent_once(
    httpx_mock: HTTPXMock, error: httpx.RequestError
):
    httpx_mock.add_exception(error)
    httpx_mock.add_response(json={"delivery_id": "d"})
    clock = Clock()
    stats = SendStats()

    outcome = app_client(clock).send_email(SEND, stats)

    assert outcome.delivery_id == "d"
    assert len(httpx_mock.get_requests()) == 2
    assert len(clock.retry_waits) == 1
    assert (stats.retries, stats.throttled, stats.accepted) == (1, 0, 1)


# -- uncertain: not retried, unless resend_uncertain -----------------------------------------

MAYBE_TAKEN = [
    httpx.Response(500),
    httpx.Response(502),
    httpx.Response(503),
    httpx.Response(504),
    httpx.Response(408),
    httpx.ReadTimeout("no answer"),
    httpx.WriteTimeout("half sent"),
    httpx.RemoteProtocolError("dropped"),
]


def _id(answer: httpx.Response | Exception) -> str:
    return (
        f"http_{answer.status_code}"
        if isinstance(answer, httpx.Response)
        else type(answer).__name__
    )


def _problem(answer: httpx.Response | Exception) -> str:
    return (
        f"HTTP {answer.status_code}"
        if isinstance(answer, httpx.Response)
        else type(answer).__name__
    )


def answer_once(httpx_mock: HTTPXMock, answer: httpx.Response | Exception, **options) -> None:
    if isinstance(answer, Exception):
        httpx_mock.add_exception(answer, **options)
    else:
        httpx_mock.add_response(status_code=answer.status_code, **options)


@pytest.mark.parametrize("answer", MAYBE_TAKEN, ids=_id)
def test_a_send_that_may_have_been_taken_is_uncertain_after_one_attempt(
    httpx_mock: HTTPXMock, answer: httpx.Response | Exception
):
    answer_once(httpx_mock, answer)
    clock = Clock()
    stats = SendStats()

    with pytest.raises(OutcomeUnknown) as raised:
        app_client(clock).send_email(SEND, stats)

    assert str(raised.value) == _problem(answer)
    assert len(httpx_mock.get_requests()) == 1
    assert clock.retry_waits == []
    assert (stats.requests, stats.retries, stats.accepted) == (1, 0, 0)


@pytest.mark.parametrize("answer", MAYBE_TAKEN, ids=_id)
def test_resend_uncertain_retries_such_a_send_like_any_request(
    httpx_mock: HTTPXMock, answer: httpx.Response | Exception
):
    answer_once(httpx_mock, answer)
    httpx_mock.add_response(json={"delivery_id": "d"})
    clock = Clock()
    stats = SendStats()

    outcome = app_client(clock).send_email(SEND, stats, resend_uncertain=True)

    assert outcome == SendOutcome(delivery_id="d")
    first, second = httpx_mock.get_requests()
    assert first.content == second.content == SEND
    assert len(clock.retry_waits) == 1
    assert (stats.requests, stats.retries, stats.accepted) == (2, 1, 1)


@pytest.mark.parametrize("answer", [httpx.Response(503), httpx.ReadTimeout("no answer")], ids=_id)
def test_resend_uncertain_runs_out_of_attempts_as_transient_not_uncertain(
    httpx_mock: HTTPXMock, answer: httpx.Response | Exception
):
    answer_once(httpx_mock, answer, is_reusable=True)

    with pytest.raises(CustomerioTransientError) as raised:
        app_client(Clock(), max_attempts=2).send_email(SEND, SendStats(), resend_uncertain=True)

    assert f"failed 2 times, last with {_problem(answer)}" in str(raised.value)
    assert len(httpx_mock.get_requests()) == 2
