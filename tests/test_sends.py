"""Transactional emails: exact bodies, the App API edge, and at-most-once through the ledger."""

from __future__ import annotations

import random
import sqlite3
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import dlt
import httpx
import orjson
import pytest
from dlt.pipeline.exceptions import PipelineStepFailed
from pytest_httpx import HTTPXMock

from cio_destination import customerio, customerio_adapter, rejected_rows
from cio_destination.emulator import Emulator
from cio_destination.entries import Entry
from cio_destination.exceptions import CustomerioTerminalError, CustomerioTransientError
from cio_destination.mapper import RowMapper
from cio_destination.mapping import compile_mapping, parse_mapping
from cio_destination.state import PipelineState, state_path
from cio_destination.transport.api import RetryPolicy
from cio_destination.transport.app import AppClient
from cio_destination.transport.emails import EmailSender
from cio_destination.transport.ratelimit import RateLimiter
from cio_destination.transport.results import SendStats

from .conftest import API_KEY, SITE_ID, with_region
from .kills import kill_after_progress, run_to_completion

APP_KEY = "test-app-key"


def receipts(count: int, start: int = 0) -> list[dict]:
    return [
        {
            "receipt_id": i,
            "email": f"buyer{i}@example.com",
            "template": 7,
            "amount": i + 0.5,
            "items": '{"sku": "A", "qty": 1}',
        }
        for i in range(start, start + count)
    ]


def receipts_resource(rows: list[dict], **mapping):
    keys = {
        "identifier": "email",
        "identifier_type": "email",
        "transactional_message_id_column": "template",
        "to": "email",
        "event_id": "receipt_id",
        "message_data_column": "items",
        **mapping,
    }
    return customerio_adapter(dlt.resource(rows, name="receipts"), action="send_email", **keys)


def send_pipeline(tmp_path: Path, url: str, name: str = "sends", **options) -> dlt.Pipeline:
    destination = customerio(
        site_id=SITE_ID,
        api_key=API_KEY,
        app_api_key=APP_KEY,
        track_url=url,
        app_url=url,
        app_requests_per_second=500,
        **options,
    )
    return dlt.pipeline(name, destination=destination, pipelines_dir=str(tmp_path))


def _send_mapper(**declared) -> RowMapper:
    keys = {
        "action": "send_email",
        "identifier": "email",
        "identifier_type": "email",
        "event_id": "k",
        "attributes": [],
        **declared,
    }
    columns = {c: {"name": c} for c in ("k", "email", "template", "recipient", "at")}
    return RowMapper(compile_mapping("receipts", parse_mapping("receipts", keys), columns))


@pytest.mark.parametrize(
    ("template", "sent"),
    [
        (7, 7),
        ("42", 42),
        ("order_receipt", "order_receipt"),
        ("18446744073709551615", 18446744073709551615),  # 2**64 - 1: a number JSON takes
        ("123456789012345678901", "123456789012345678901"),  # beyond 64 bits: text
        (2**70, "1180591620717411303424"),
        ("9" * 5_000, "9" * 5_000),  # int() refuses 4,300 digits
        (10**5_000, "1" + "0" * 5_000),
    ],
    ids=["int", "digits", "name", "2**64-1", "21-digits", "int-2**70", "5000-digits", "int-5001"],
)
def test_a_message_id_is_a_number_where_json_takes_one_else_its_text(template, sent):
    """A message id beyond 64 bits made int() of its text an integer orjson refuses, and one of
    5,000 digits made int() raise: either failed the whole load (0 sends, package pending)."""
    mapped = _send_mapper(transactional_message_id_column="template").map_rows(
        [{"k": 1, "email": "a@x.io", "template": template}]
    )

    assert not mapped.rejections
    assert orjson.loads(mapped.entries[0].data)["transactional_message_id"] == sent


@pytest.mark.parametrize(
    "value",
    [{"a": 1}, [1], b"\xff", float("nan"), float("inf"), True],
    ids=["dict", "list", "bytes", "nan", "inf", "bool"],
)
@pytest.mark.parametrize(
    ("declared", "column", "reason"),
    [
        ({"transactional_message_id_column": "template"}, "template", "invalid_message_id"),
        (
            {"transactional_message_id": "x", "to": "recipient"},
            "recipient",
            "invalid_recipient",
        ),
        ({"transactional_message_id": "x", "send_at": "at"}, "at", "invalid_timestamp"),
    ],
    ids=["message-id", "to", "send-at"],
)
def test_a_send_value_without_a_text_rejects_its_row_instead_of_sending_its_repr(
    value, declared, column, reason
):
    """A dict, bytes or NaN went out as Python's repr ("{'a': 1}", "b'\\xff'", "nan")."""
    row = {"k": 1, "email": "a@x.io", "template": "t", "recipient": "b@x.io", column: value}

    mapped = _send_mapper(**declared).map_rows([row])

    assert [(r.reason, r.field) for r in mapped.rejections] == [(reason, column)]
    assert not mapped.entries


@pytest.mark.slow
def test_a_message_id_beyond_64_bits_is_sent_and_the_load_completes(tmp_path, emulator):
    rows = [
        {"k": 1, "email": "a@x.io", "template": "order_receipt"},
        {"k": 2, "email": "b@x.io", "template": "123456789012345678901"},
    ]
    resource = customerio_adapter(
        dlt.resource(rows, name="receipts"),
        action="send_email",
        identifier="email",
        identifier_type="email",
        transactional_message_id_column="template",
        to="email",
        event_id="k",
    )
    pipeline = send_pipeline(tmp_path, emulator.url)

    pipeline.run(resource)

    assert not pipeline.has_pending_data
    assert sorted(str(d["transactional_message_id"]) for d in emulator.deliveries) == [
        "123456789012345678901",
        "order_receipt",
    ]


def test_send_body_of_a_row():
    mapping = parse_mapping(
        "receipts",
        {
            "action": "send_email",
            "identifier": "user_id",
            "transactional_message_id": "order_receipt",
            "to": "email",
            "attributes": ["amount"],
            "message_data_column": "data",
            "send_at": "deliver_at",
            "event_id": "receipt_id",
            "disable_message_retention": True,
            "message_overrides": {"subject": "subject_line"},
        },
    )
    columns = {
        c: {"name": c}
        for c in ("receipt_id", "user_id", "email", "amount", "data", "deliver_at", "subject_line")
    }
    mapper = RowMapper(compile_mapping("receipts", mapping, columns))
    row = {
        "receipt_id": 5,
        "user_id": 42,
        "email": "ada@example.com",
        "amount": 19.5,
        "data": '{"items": [1, 2]}',
        "deliver_at": "2030-01-01T00:00:00Z",
        "subject_line": "Your receipt",
    }

    mapped = mapper.map_rows([row])

    assert orjson.loads(mapped.entries[0].data) == {
        "transactional_message_id": "order_receipt",
        "identifiers": {"id": "42"},
        "to": "ada@example.com",
        "message_data": {"items": [1, 2], "amount": 19.5},
        "send_at": 1893456000,
        "disable_message_retention": True,
        "subject": "Your receipt",
    }
    assert mapped.entries[0].key == mapper.map_rows([row]).entries[0].key
    assert mapped.entries[0].key != mapper.map_rows([{**row, "receipt_id": 6}]).entries[0].key


@pytest.mark.slow
def test_sends_reach_the_app_api_and_a_rerun_sends_nothing_new(emulator: Emulator, tmp_path: Path):
    pipeline = send_pipeline(tmp_path, emulator.url)

    pipeline.run(receipts_resource(receipts(20)))
    pipeline.run(receipts_resource(receipts(20)))  # a full re-sync of the same rows
    pipeline.run(receipts_resource(receipts(25)))  # five new rows

    deliveries = emulator.deliveries
    assert len(deliveries) == 25
    assert Counter(d["to"] for d in deliveries) == {f"buyer{i}@example.com": 1 for i in range(25)}
    first = next(d for d in deliveries if d["to"] == "buyer0@example.com")
    assert first["transactional_message_id"] == 7
    assert first["identifiers"] == {"email": "buyer0@example.com"}
    assert first["message_data"] == {"sku": "A", "qty": 1, "receipt_id": 0, "amount": 0.5}
    assert list(rejected_rows(pipeline)) == []


@pytest.mark.slow
def test_send_email_without_app_api_key_stops_before_any_request(
    emulator: Emulator, tmp_path: Path
):
    destination = customerio(site_id=SITE_ID, api_key=API_KEY, track_url=emulator.url)
    pipeline = dlt.pipeline("nokey", destination=destination, pipelines_dir=str(tmp_path))

    with pytest.raises(PipelineStepFailed) as raised:
        pipeline.run(receipts_resource(receipts(3)))

    message = str(raised.value)
    assert (
        "table 'receipts' sends emails (action send_email), which needs the App API key:"
        " set destination.customerio.app_api_key" in message
    )
    assert "customerio_adapter" not in message and "tables.receipts" not in message
    assert emulator.requests == []


@pytest.mark.slow
def test_bad_app_api_key_names_the_key_and_costs_one_request(emulator: Emulator, tmp_path: Path):
    destination = customerio(
        site_id=SITE_ID,
        api_key=API_KEY,
        app_api_key="wrong",
        track_url=emulator.url,
        app_url=emulator.url,
    )
    pipeline = dlt.pipeline("badkey", destination=destination, pipelines_dir=str(tmp_path))

    with pytest.raises(PipelineStepFailed) as raised:
        pipeline.run(receipts_resource(receipts(30)))

    assert "destination.customerio.app_api_key" in str(raised.value)
    assert "wrong" not in str(raised.value).replace("wrong-", "")
    assert emulator.deliveries == []
    assert len([r for r in emulator.requests if r.path.startswith("/v1/send/")]) == 1


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, "destination.customerio.app_api_key"),
        (403, "Do Not Send"),
        (302, "destination.customerio.app_url"),
        (404, "destination.customerio.app_url"),
        (405, "destination.customerio.app_url"),
    ],
)
def test_a_refused_or_misdirected_send_costs_one_request_and_stops_every_later_send(
    tmp_path: Path, status: int, error: str
):
    requests: list[httpx.Request] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(status, headers={"location": "https://elsewhere.example/"})

    client = AppClient(
        "http://127.0.0.1:1",
        APP_KEY,
        limiter=RateLimiter(10_000),
        transport=httpx.MockTransport(refuse),
    )
    ledger = PipelineState.in_file(tmp_path / "state.sqlite").ledger
    sender = EmailSender(client, max_in_flight=8)
    try:
        first = sender.send(send_entries(60), ledger=ledger, table="t", load_id="1")
        later = sender.send(send_entries(5), ledger=ledger, table="u", load_id="1")
        assert len(requests) == 1  # the refusal is remembered for the load
        sender.forget_refusal()  # a new load tries again, one send first
        again = sender.send(send_entries(5), ledger=ledger, table="t", load_id="2")
    finally:
        sender.close()

    assert len(requests) == 2
    for result in (first, later, again):
        assert isinstance(result.error, CustomerioTerminalError)
        assert error in str(result.error)
        assert result.rejections == []
    assert ledger_on_disk(ledger.path) == {}


def test_sends_go_one_at_a_time_until_customerio_answered_one(tmp_path: Path):
    """Rows already sent and answers that leave the credentials unproven (a 502) do not
    open the pool: only an answer of Customer.io's does."""
    in_flight: list[int] = []
    now = [0]
    lock = threading.Lock()
    answers = {"buyer3@example.com": httpx.Response(502)}

    def answer(request: httpx.Request) -> httpx.Response:
        with lock:
            now[0] += 1
            in_flight.append(now[0])
        time.sleep(0.01)  # a window for a concurrent request to show; none may come
        with lock:
            now[0] -= 1
        to = orjson.loads(request.content)["to"]
        return answers.get(to, httpx.Response(200, json={"delivery_id": "d"}))

    client = AppClient(
        "http://127.0.0.1:1",
        APP_KEY,
        limiter=RateLimiter(10_000),
        transport=httpx.MockTransport(answer),
    )
    ledger = PipelineState.in_file(tmp_path / "state.sqlite").ledger
    for key in ("key-0", "key-1", "key-2"):
        ledger.claim("t", key, "0")
        ledger.mark_sent(key, "d")
    sender = EmailSender(client, max_in_flight=8)
    try:
        result = sender.send(send_entries(5), ledger=ledger, table="t", load_id="1")
    finally:
        sender.close()

    assert result.error is None and result.skipped == 3
    assert in_flight == [1, 1]  # key-3 (502, uncertain) alone, then key-4 alone


class OneStartAtATime:
    """A rate limiter that lets the next request start only once the previous one was answered."""

    def __init__(self) -> None:
        self._turn = threading.Semaphore(1)

    def acquire(self) -> float:
        self._turn.acquire()
        return 0.0

    def answered(self) -> None:
        self._turn.release()

    def throttled(self, pause: float = 0.0) -> None: ...

    def succeeded(self) -> None: ...


class Watcher:
    def __init__(self, events: list[str], *, refuse: bool = False) -> None:
        self.events = events
        self.refuse = refuse

    def leaving(self) -> None:
        if self.refuse:
            raise Blocked
        self.events.append("leaving")

    def failed(self, maybe_taken: bool) -> None:
        self.events.append(f"failed(maybe_taken={maybe_taken})")


class Blocked(Exception):
    pass


def test_the_watcher_hears_each_attempt_once_its_slot_is_taken_and_can_stop_it():
    """The email sender claims a key when an attempt leaves: after that attempt's rate-limit
    slot; it hears of every failed attempt, and a claim that raises sends nothing."""
    events: list[str] = []

    class Slots:
        def acquire(self) -> float:
            events.append("slot")
            return 0.0

        def throttled(self, pause: float = 0.0) -> None: ...

        def succeeded(self) -> None: ...

    answers = iter(
        [
            httpx.Response(429, headers={"Retry-After": "0"}),
            httpx.Response(502),
            httpx.Response(200, json={"delivery_id": "d"}),
        ]
    )

    def answer(request: httpx.Request) -> httpx.Response:
        events.append("request")
        return next(answers)

    client = AppClient(
        "http://127.0.0.1:1",
        APP_KEY,
        limiter=Slots(),
        transport=httpx.MockTransport(answer),
        sleep=lambda _: None,
    )
    stats = SendStats()
    outcome = client.send_email(b"{}", stats, resend_uncertain=True, watcher=Watcher(events))

    assert events == [
        *["slot", "leaving", "request", "failed(maybe_taken=False)"],
        *["slot", "leaving", "request", "failed(maybe_taken=True)"],
        *["slot", "leaving", "request"],
    ]
    assert (outcome.delivery_id, stats.requests, stats.retries) == ("d", 3, 2)

    events.clear()
    unsent = SendStats()
    with pytest.raises(Blocked):
        client.send_email(b"{}", unsent, watcher=Watcher(events, refuse=True))
    assert events == ["slot"]
    assert unsent.requests == 0
    client.close()


def send_entries(count: int, *, key=lambda i: f"key-{i}") -> list[Entry]:
    return [
        Entry(orjson.dumps({"to": f"buyer{i}@example.com", "n": i}), str(i), [{"n": i}], key(i))
        for i in range(count)
    ]


def ledger_on_disk(path: Path) -> dict[str, str]:
    """The ledger as another connection reads it: only what was committed."""
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT send_key, state FROM cio_send_ledger"))


def test_a_send_key_is_pending_only_once_its_request_may_leave(tmp_path: Path):
    limiter = OneStartAtATime()
    ledger = PipelineState.in_file(tmp_path / "state.sqlite").ledger
    started: list[str] = []
    seen_pending: list[set[str]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        key = f"key-{orjson.loads(request.content)['n']}"
        started.append(key)
        seen_pending.append(
            {k for k, s in ledger_on_disk(ledger.path).items() if s == "pending"} - set(started)
        )
        assert ledger_on_disk(ledger.path).get(key) == "pending"  # on disk before it leaves
        limiter.answered()
        return httpx.Response(200, json={"delivery_id": f"d-{key}"})

    client = AppClient(
        "http://127.0.0.1:1", APP_KEY, limiter=limiter, transport=httpx.MockTransport(answer)
    )
    sender = EmailSender(client, max_in_flight=4)
    try:
        result = sender.send(send_entries(12), ledger=ledger, table="receipts", load_id="1")
    finally:
        sender.close()

    assert result.error is None
    assert len(started) == 12
    # no key is pending before its own request started: the ones waiting for their turn are not
    assert seen_pending == [set()] * 12
    assert ledger_on_disk(ledger.path) == {f"key-{i}": "sent" for i in range(12)}


def test_claims_queued_while_the_ledger_commits_share_the_next_commit(tmp_path: Path):
    state = PipelineState.in_file(tmp_path / "state.sqlite")
    ledger = state.ledger
    _, generation = ledger.identity()
    claimed: list[str | None] = []

    def claim(i: int) -> None:
        claimed.append(ledger.claim("t", f"key-{i}", "1"))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    with state.store._lock:  # the first claim's commit is under way: the other seven queue up
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60  # only a broken queue gets here
        while len(ledger._queue) < 7:
            assert time.monotonic() < deadline
            time.sleep(0.001)
    for thread in threads:
        thread.join()

    assert claimed == [None] * 8
    assert ledger.identity()[1] == generation + 2  # two commits, not eight
    assert ledger_on_disk(ledger.path) == {f"key-{i}": "pending" for i in range(8)}


def test_a_key_twice_in_one_call_is_sent_once(tmp_path: Path):
    sent: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(orjson.loads(request.content)["to"])
        return httpx.Response(200, json={"delivery_id": "d"})

    client = AppClient(
        "http://127.0.0.1:1",
        APP_KEY,
        limiter=RateLimiter(10_000),
        transport=httpx.MockTransport(answer),
    )
    ledger = PipelineState.in_file(tmp_path / "state.sqlite").ledger
    sender = EmailSender(client, max_in_flight=4)
    try:
        result = sender.send(
            send_entries(6, key=lambda i: f"key-{i % 3}"), ledger=ledger, table="t", load_id="1"
        )
    finally:
        sender.close()

    assert result.error is None
    assert len(sent) == 3
    assert result.skipped == 3
    assert result.rejections == []


def test_a_send_httpx_refuses_to_write_is_not_sent_and_its_key_stays_free(tmp_path: Path):
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.LocalProtocolError("Illegal header value")

    client = AppClient(
        "http://127.0.0.1:1",
        APP_KEY,
        limiter=RateLimiter(10_000),
        transport=httpx.MockTransport(refuse),
    )
    ledger = PipelineState.in_file(tmp_path / "state.sqlite").ledger
    sender = EmailSender(client, max_in_flight=2)
    try:
        result = sender.send(send_entries(3), ledger=ledger, table="t", load_id="1")
    finally:
        sender.close()

    assert isinstance(result.error, CustomerioTerminalError)
    assert "destination.customerio.app_api_key" in str(result.error)
    assert result.rejections == []  # not uncertain: it never left
    assert ledger_on_disk(ledger.path) == {}


def answering(*answers: httpx.Response | Exception):
    """A transport answering each request with the next of `answers` (the last one for ever)."""
    queue = list(answers)

    def answer(request: httpx.Request) -> httpx.Response:
        outcome = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    return httpx.MockTransport(answer)


def send_through(transport, tmp_path: Path, *, resend_uncertain: bool, sleep=lambda _: None):
    ledger = PipelineState.in_file(tmp_path / "state.sqlite").ledger
    client = AppClient(
        "http://127.0.0.1:1",
        APP_KEY,
        limiter=RateLimiter(10_000),
        transport=transport,
        retry=RetryPolicy(max_attempts=3),
        sleep=sleep,
    )
    sender = EmailSender(client, max_in_flight=1)
    try:
        result = sender.send(
            send_entries(1),
            ledger=ledger,
            table="t",
            load_id="1",
            resend_uncertain=resend_uncertain,
        )
    finally:
        sender.close()
    return result, ledger_on_disk(ledger.path)


THROTTLED = httpx.Response(429, headers={"Retry-After": "0"})


@pytest.mark.parametrize(
    "answers",
    [
        [httpx.Response(502)],
        [httpx.Response(500)],
        [httpx.ReadTimeout("no answer")],
        [httpx.RemoteProtocolError("dropped")],
        [httpx.Response(502), THROTTLED],  # maybe taken, then throttled until the end
        [httpx.Response(504), httpx.ConnectError("refused")],
    ],
    ids=["502", "500", "read_timeout", "dropped", "502_then_429", "504_then_refused"],
)
def test_with_resend_uncertain_a_send_that_may_have_been_taken_stays_uncertain_when_retries_run_out(
    tmp_path: Path, answers: list
):
    result, ledger = send_through(answering(*answers), tmp_path, resend_uncertain=True)

    assert isinstance(result.error, CustomerioTransientError)
    assert ledger == {"key-0": "pending"}  # a run without resend_uncertain does not send it


def test_with_resend_uncertain_a_send_that_may_have_been_taken_stays_uncertain_when_refused_next(
    tmp_path: Path,
):
    transport = answering(httpx.Response(502), httpx.Response(401))

    result, ledger = send_through(transport, tmp_path, resend_uncertain=True)

    assert isinstance(result.error, CustomerioTerminalError)
    assert ledger == {"key-0": "pending"}


@pytest.mark.parametrize("resend_uncertain", [False, True])
@pytest.mark.parametrize(
    "answer", [THROTTLED, httpx.ConnectError("refused")], ids=["429", "refused"]
)
def test_a_send_never_taken_is_not_pending_when_retries_run_out(
    tmp_path: Path, answer, resend_uncertain: bool
):
    result, ledger = send_through(answering(answer), tmp_path, resend_uncertain=resend_uncertain)

    assert isinstance(result.error, CustomerioTransientError)
    assert ledger == {}


@pytest.mark.parametrize(
    ("answers", "resend_uncertain", "while_waiting"),
    [
        ([THROTTLED, THROTTLED], False, {}),
        ([httpx.ConnectError("refused"), THROTTLED], False, {}),
        ([httpx.ConnectTimeout("no route"), THROTTLED], True, {}),
        ([httpx.Response(502), THROTTLED], True, {"key-0": "pending"}),
    ],
    ids=["429", "refused", "connect_timeout", "502_then_429_with_resend_uncertain"],
)
def test_a_send_key_is_not_pending_while_its_send_waits_to_retry_after_an_answer_not_taken(
    tmp_path: Path, answers: list, resend_uncertain: bool, while_waiting: dict
):
    """A crash while a send waits out its backoff leaves uncertain only a send that may have
    been taken: after a 429 or a refused connection, its key is claimed again before the next
    attempt, not kept pending through the wait."""
    seen: list[dict[str, str]] = []
    path = tmp_path / "state.sqlite"
    transport = answering(*answers, httpx.Response(200, json={"delivery_id": "d"}))

    result, ledger = send_through(
        transport,
        tmp_path,
        resend_uncertain=resend_uncertain,
        sleep=lambda _: seen.append(ledger_on_disk(path)),
    )

    assert result.error is None
    assert seen == [while_waiting, while_waiting]
    assert ledger == {"key-0": "sent"}


def _app_callback(answers: dict[str, httpx.Response | Exception], sent: list[str]):
    def answer(request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        to = body["to"]
        outcome = answers.get(to)
        if isinstance(outcome, Exception):
            raise outcome
        if outcome is not None:
            return outcome
        sent.append(to)
        return httpx.Response(200, json={"delivery_id": f"d-{to}", "queued_at": 1})

    return answer


@pytest.mark.slow
def test_a_400_rejects_the_row_and_a_429_is_retried(httpx_mock: HTTPXMock, tmp_path: Path):
    sent: list[str] = []
    throttled = {"buyer1@example.com": httpx.Response(429, headers={"Retry-After": "0"})}
    answers = {"buyer0@example.com": httpx.Response(400, json={"meta": {"error": "bad data"}})}

    def answer(request: httpx.Request) -> httpx.Response:
        to = orjson.loads(request.content)["to"]
        if throttled.pop(to, None) is not None:
            return httpx.Response(429, headers={"Retry-After": "0"})
        return _app_callback(answers, sent)(request)

    httpx_mock.add_callback(with_region(answer), is_reusable=True)
    pipeline = send_pipeline(tmp_path, "http://127.0.0.1:1")

    pipeline.run(receipts_resource(receipts(3)))

    assert sorted(sent) == ["buyer1@example.com", "buyer2@example.com"]
    rejected = list(rejected_rows(pipeline))
    assert [(r["row_key"], r["reason"], r["message"]) for r in rejected] == [
        ("0", "http_400", "bad data")
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    "lost",
    [
        httpx.ReadTimeout("no answer"),
        httpx.Response(502),
        httpx.Response(504),
        httpx.Response(524),
        httpx.Response(500),
    ],
    ids=["read-timeout", "502", "504", "524", "500"],
)
def test_a_send_whose_answer_is_lost_is_reported_and_never_repeated(
    httpx_mock: HTTPXMock, tmp_path: Path, lost: httpx.Response | Exception
):
    sent: list[str] = []
    answers: dict = {"buyer1@example.com": lost}
    httpx_mock.add_callback(with_region(_app_callback(answers, sent)), is_reusable=True)
    pipeline = send_pipeline(tmp_path, "http://127.0.0.1:1")

    pipeline.run(receipts_resource(receipts(3)))
    answers.clear()
    pipeline.run(receipts_resource(receipts(3)))

    assert sorted(sent) == ["buyer0@example.com", "buyer2@example.com"]
    calls_for_1 = [
        r
        for r in httpx_mock.get_requests(method="POST")
        if orjson.loads(r.content)["to"] == "buyer1@example.com"
    ]
    assert len(calls_for_1) == 1  # neither retried nor resent by the second run
    reasons = [(r["row_key"], r["reason"]) for r in rejected_rows(pipeline)]
    assert reasons == [("1", "send_outcome_unknown"), ("1", "send_outcome_unknown")]

    resend = send_pipeline(tmp_path, "http://127.0.0.1:1", resend_uncertain=True)
    resend.run(receipts_resource(receipts(3)))
    assert sorted(sent) == ["buyer0@example.com", "buyer1@example.com", "buyer2@example.com"]


@pytest.mark.slow
def test_sigkill_mid_send_leaves_only_requests_in_flight_uncertain_and_reruns_send_the_rest(
    emulator: Emulator, tmp_path: Path
):
    rows, in_flight, kills = 2_000, 4, 3
    marker = tmp_path / "done"
    command = [
        sys.executable,
        "-m",
        "tests.send_child",
        str(tmp_path / "pipelines"),
        emulator.url,
        str(rows),
        str(marker),
        str(in_flight),
    ]
    rng = random.Random(99)
    killed = 0
    for _ in range(kills):
        # each run is killed after it has made between 50 and 400 more requests: mid-load
        killed += kill_after_progress(
            command, lambda: len(emulator.requests), step=rng.randint(50, 400)
        )
    for _ in range(3):
        if marker.exists():
            break
        run_to_completion(command)

    delivered = Counter(d["message_data"]["receipt_id"] for d in emulator.deliveries)
    assert max(delivered.values()) == 1  # nothing sent twice
    pipeline = dlt.pipeline("killed_sends", pipelines_dir=str(tmp_path / "pipelines"))
    uncertain = {
        int(r["row_key"]) for r in rejected_rows(pipeline) if r["reason"] == "send_outcome_unknown"
    }
    # only the requests that may have left the machine when a kill hit are uncertain
    assert len(uncertain) <= kills * in_flight
    # every other row was sent, by the run that was killed or by a later one
    assert set(range(rows)) - uncertain <= set(delivered)
    assert set(delivered) <= set(range(rows))
    assert marker.exists()
    assert killed == kills
    assert state_path(pipeline.working_dir).exists()


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("42", 42),
        (" 42", " 42"),
        ("42\n", "42\n"),
        ("²", "²"),  # a digit to str.isdigit(), not to int()
        ("\uff14\uff12", "\uff14\uff12"),  # fullwidth digits: a trigger name, not 42
        ("order_receipt", "order_receipt"),
    ],
)
def test_message_id_from_a_column_is_a_number_only_when_it_is_ascii_digits(template, expected):
    mapping = parse_mapping(
        "receipts",
        {
            "action": "send_email",
            "identifier": "user_id",
            "transactional_message_id_column": "template",
            "event_id": "receipt_id",
        },
    )
    columns = {c: {"name": c} for c in ("receipt_id", "user_id", "template")}
    mapper = RowMapper(compile_mapping("receipts", mapping, columns))

    mapped = mapper.map_rows([{"receipt_id": 1, "user_id": 7, "template": template}])

    assert orjson.loads(mapped.entries[0].data)["transactional_message_id"] == expected
