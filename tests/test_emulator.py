"""Tests of the Customer.io emulator (loopback only)."""

from __future__ import annotations

import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from cio_destination.emulator import MAX_BATCH_BYTES, MAX_ENTRY_BYTES, Emulator, Faults

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
REPO = Path(__file__).resolve().parents[1]


def ulid(n: int) -> str:
    """A valid ULID derived from ``n``."""
    digits = []
    for _ in range(24):
        digits.append(CROCKFORD[n % 32])
        n //= 32
    return "01" + "".join(reversed(digits))


def identify(pid: Any, **attributes: Any) -> dict[str, Any]:
    return {
        "type": "person",
        "action": "identify",
        "identifiers": {"id": pid},
        "attributes": attributes,
    }


def event(pid: Any, name: str | None = "purchase", **extra: Any) -> dict[str, Any]:
    op: dict[str, Any] = {"type": "person", "action": "event", "identifiers": {"id": pid}}
    if name is not None:
        op["name"] = name
    op.update(extra)
    return op


@pytest.fixture(scope="module")
def shared_emulator() -> Iterator[Emulator]:
    with Emulator() as emulator:
        yield emulator


@pytest.fixture
def emu(shared_emulator: Emulator) -> Iterator[Emulator]:
    """The module's emulator, as new: empty state, empty request log, no faults."""
    shared_emulator.set_faults(None)
    shared_emulator.reset()
    yield shared_emulator
    assert shared_emulator.server_errors == []


@pytest.fixture(scope="module")
def track(shared_emulator: Emulator) -> Iterator[httpx.Client]:
    auth = ("site", "key")
    with httpx.Client(base_url=shared_emulator.url, auth=auth, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def app(shared_emulator: Emulator) -> Iterator[httpx.Client]:
    headers = {"Authorization": "Bearer app-key"}
    with httpx.Client(base_url=shared_emulator.url, headers=headers, timeout=10) as client:
        yield client


def batch(client: httpx.Client, *ops: Any) -> httpx.Response:
    return client.post("/api/v2/batch", json={"batch": list(ops)})


# --- auth and basics -------------------------------------------------------------------------

UNAUTHORIZED = {"meta": {"error": "Unauthorized request"}}


def test_region_and_track_auth(emu: Emulator, track: httpx.Client) -> None:
    response = track.get("/api/v1/accounts/region")
    assert response.status_code == 200
    assert response.json() == {"url": emu.url, "region": "us", "environment_id": 1}

    with httpx.Client(base_url=emu.url) as anonymous:
        assert anonymous.get("/api/v1/accounts/region").status_code == 401
        wrong = anonymous.post(
            "/api/v2/batch", json={"batch": [identify("1")]}, auth=("site", "nope")
        )
        assert wrong.status_code == 401
        assert wrong.json() == UNAUTHORIZED
        bearer = anonymous.post(
            "/api/v2/entity", json=identify("1"), headers={"Authorization": "Bearer key"}
        )
        assert bearer.status_code == 401
        v1 = anonymous.put("/api/v1/customers/1", json={"a": 1}, auth=("other", "key"))
        assert v1.status_code == 401
    assert emu.people == []
    assert [(r.method, r.path, r.status) for r in emu.requests] == [
        ("GET", "/api/v1/accounts/region", 200),
        ("GET", "/api/v1/accounts/region", 401),
        ("POST", "/api/v2/batch", 401),
        ("POST", "/api/v2/entity", 401),
        ("PUT", "/api/v1/customers/1", 401),
    ]


def test_app_api_auth(emu: Emulator) -> None:
    body = {"transactional_message_id": 3, "identifiers": {"id": "1"}}
    with httpx.Client(base_url=emu.url) as client:
        missing = client.post("/v1/send/email", json=body)
        wrong = client.post("/v1/send/email", json=body, headers={"Authorization": "Bearer key"})
        basic = client.post("/v1/send/email", json=body, auth=("site", "key"))
    for response in (missing, wrong, basic):
        assert response.status_code == 401
        assert response.json() == UNAUTHORIZED
    assert emu.deliveries == []


def test_unknown_path_is_404(emu: Emulator, track: httpx.Client) -> None:
    assert track.get("/api/v2/batch").status_code == 404
    assert track.post("/api/v3/nothing", json={}).status_code == 404
    assert [(r.path, r.status, r.ops) for r in emu.requests] == [
        ("/api/v2/batch", 404, 0),
        ("/api/v3/nothing", 404, 0),
    ]


# --- v2 batch: identify ----------------------------------------------------------------------


def test_batch_identify_merges_attributes(emu: Emulator, track: httpx.Client) -> None:
    first = batch(track, identify(42, plan="pro", seats=3, flag=True, email="a@example.com"))
    assert first.status_code == 200
    assert first.json() == {}
    second = batch(track, identify("42", plan="", seats=None, city="Oslo"))
    assert second.status_code == 200
    person = {
        "identifiers": {"id": "42", "email": "a@example.com", "cio_id": "cio_1"},
        "attributes": {"flag": True, "email": "a@example.com", "city": "Oslo"},
    }
    assert emu.people == [person]
    assert emu.find_person(id="42") == person
    assert emu.find_person(email="a@example.com") == person
    assert emu.find_person(cio_id="cio_1", id="42") == person
    assert emu.find_person(id="43") is None
    assert emu.find_person(id="42", email="b@example.com") is None
    assert [(r.status, r.ops) for r in emu.requests] == [(200, 1), (200, 1)]


def test_people_are_copies(emu: Emulator, track: httpx.Client) -> None:
    batch(track, identify("1", nested={"a": [1, 2]}))
    people = emu.people
    people[0]["attributes"]["nested"]["a"].append(3)
    assert emu.people[0]["attributes"] == {"nested": {"a": [1, 2]}}


def test_stale_identify_is_dropped(emu: Emulator, track: httpx.Client) -> None:
    ops = [
        {**identify("1", v="new"), "timestamp": 2000},
        {**identify("1", v="old"), "timestamp": 1000},
        identify("1", w="untimed"),
    ]
    assert batch(track, *ops).status_code == 200
    assert emu.people[0]["attributes"] == {"v": "new", "w": "untimed"}
    assert emu.stale_identifies == 1


def test_207_names_exactly_the_invalid_entries(emu: Emulator, track: httpx.Client) -> None:
    ops = [
        identify("ok-1", name="Ann"),
        event("ok-1", name=None),  # missing name
        event("ok-1", id="SECRET-NOT-A-ULID"),  # bad ULID
        identify("x" * 151),  # id over 150 bytes
        event("ok-1", name="signup", id=ulid(1), timestamp=1700000000),
        identify("ok-1", big="SECRET" + "é" * 498),  # 1002 bytes
        identify("ok-1", **{f"a{i}": i for i in range(301)}),  # 301 attributes
        # exactly at every limit: valid
        identify(
            "é" * 75,
            **{"n" * 150: "é" * 500},
            **{f"b{i}": i for i in range(299)},
        ),
    ]
    response = batch(track, *ops)
    assert response.status_code == 207
    errors = response.json()["errors"]
    assert [(e["batch_index"], e["reason"], e["field"]) for e in errors] == [
        (1, "required", "name"),
        (2, "invalid", "id"),
        (3, "too_long", "identifiers"),
        (5, "too_large", "attributes.big"),
        (6, "too_many", "attributes"),
    ]
    assert all(set(e) == {"batch_index", "reason", "field", "message"} for e in errors)
    assert all(e["message"] for e in errors)
    assert "SECRET" not in response.text
    assert "xxxx" not in response.text
    assert emu.find_person(id="ok-1") == {
        "identifiers": {"id": "ok-1", "cio_id": "cio_1"},
        "attributes": {"name": "Ann"},
    }
    at_limit = emu.find_person(id="é" * 75)
    assert at_limit is not None
    assert len(at_limit["attributes"]) == 300
    assert [(e["name"], e["id"], e["timestamp"]) for e in emu.events] == [
        ("signup", ulid(1), 1700000000)
    ]
    assert len(emu.people) == 2
    assert emu.requests[0].status == 207
    assert emu.requests[0].ops == 8


INVALID_OPS: list[tuple[str, Any, str, str]] = [
    ("not an object", ["person"], "invalid", ""),
    ("missing type", {"action": "identify", "identifiers": {"id": "1"}}, "required", "type"),
    ("bad type", {"type": "people", "action": "identify"}, "invalid", "type"),
    ("missing action", {"type": "person", "identifiers": {"id": "1"}}, "required", "action"),
    ("action of other type", {"type": "object", "action": "event"}, "invalid", "action"),
    ("no identifiers", {"type": "person", "action": "identify"}, "required", "identifiers"),
    (
        "two identifiers",
        {"type": "person", "action": "identify", "identifiers": {"id": "1", "email": "a@b"}},
        "invalid",
        "identifiers",
    ),
    (
        "unknown identifier",
        {"type": "person", "action": "identify", "identifiers": {"user_id": "1"}},
        "invalid",
        "identifiers",
    ),
    (
        "empty id",
        {"type": "person", "action": "delete", "identifiers": {"id": ""}},
        "required",
        "identifiers",
    ),
    (
        "bool id",
        {"type": "person", "action": "delete", "identifiers": {"id": True}},
        "invalid",
        "identifiers",
    ),
    (
        "numeric email",
        {"type": "person", "action": "delete", "identifiers": {"email": 5}},
        "invalid",
        "identifiers",
    ),
    ("float timestamp", {**identify("1"), "timestamp": 1.5}, "invalid", "timestamp"),
    ("bool timestamp", {**identify("1"), "timestamp": True}, "invalid", "timestamp"),
    ("string timestamp", {**event("1"), "timestamp": "1700000000"}, "invalid", "timestamp"),
    (
        "timestamp before action rules",
        {**event("1", None), "timestamp": "x"},
        "invalid",
        "timestamp",
    ),
    ("attributes not object", {**identify("1"), "attributes": [1]}, "invalid", "attributes"),
    ("attribute name 151 bytes", identify("1", **{"n" * 151: 1}), "too_long", "attributes"),
    ("object value over 1000", identify("1", obj={"k": "v" * 1000}), "too_large", "attributes.obj"),
    ("empty event name", event("1", ""), "required", "name"),
    ("event name not string", event("1", 5), "invalid", "name"),  # type: ignore[arg-type]
    ("event name 101 bytes", event("1", "é" * 50 + "x"), "too_long", "name"),
    ("ulid first char 8", event("1", id="8" + ulid(0)[1:]), "invalid", "id"),
    ("ulid with I", event("1", id=ulid(0)[:-1] + "I"), "invalid", "id"),
    ("ulid 25 chars", event("1", id=ulid(0)[:-1]), "invalid", "id"),
    ("ulid number", event("1", id=12345), "invalid", "id"),
    ("event attributes list", event("1", attributes=[1]), "invalid", "attributes"),
    (
        "merge without secondary",
        {"type": "person", "action": "merge", "primary": {"id": "1"}},
        "required",
        "secondary",
    ),
    (
        "merge with two primary keys",
        {
            "type": "person",
            "action": "merge",
            "primary": {"id": "1", "email": "a@b"},
            "secondary": {"id": "2"},
        },
        "invalid",
        "primary",
    ),
    (
        "device without token",
        {
            "type": "person",
            "action": "add_device",
            "identifiers": {"id": "1"},
            "device": {"platform": "ios"},
        },
        "required",
        "device.token",
    ),
    (
        "device bad platform",
        {
            "type": "person",
            "action": "add_device",
            "identifiers": {"id": "1"},
            "device": {"token": "t", "platform": "windows"},
        },
        "invalid",
        "device.platform",
    ),
    (
        "object identifiers missing object_id",
        {"type": "object", "action": "identify", "identifiers": {"object_type_id": "1"}},
        "invalid",
        "identifiers",
    ),
    (
        "object identifiers with person id",
        {"type": "object", "action": "delete", "identifiers": {"id": "1"}},
        "invalid",
        "identifiers",
    ),
    (
        "empty relationships",
        {
            "type": "person",
            "action": "add_relationships",
            "identifiers": {"id": "1"},
            "cio_relationships": [],
        },
        "required",
        "cio_relationships",
    ),
    (
        "relationship to a person from a person",
        {
            "type": "person",
            "action": "add_relationships",
            "identifiers": {"id": "1"},
            "cio_relationships": [{"identifiers": {"id": "2"}}],
        },
        "invalid",
        "cio_relationships",
    ),
    (
        "object relationship to two keys",
        {
            "type": "object",
            "action": "add_relationships",
            "identifiers": {"object_type_id": 1, "object_id": "acme"},
            "cio_relationships": [{"identifiers": {"id": "1", "email": "a@b"}}],
        },
        "invalid",
        "cio_relationships",
    ),
]


@pytest.mark.parametrize(
    ("op", "reason", "field"),
    [pytest.param(op, reason, field, id=name) for name, op, reason, field in INVALID_OPS],
)
def test_entity_rejects_invalid_op(
    emu: Emulator, track: httpx.Client, op: Any, reason: str, field: str
) -> None:
    response = track.post("/api/v2/entity", json=op)
    assert response.status_code == 400
    (error,) = response.json()["errors"]
    assert (error["reason"], error["field"]) == (reason, field)
    assert set(error) == {"reason", "field", "message"}
    assert emu.people == []
    assert emu.events == []
    assert emu.objects == []
    # The same op inside a batch is a 207 entry with its index.
    response = batch(track, identify("keep"), op)
    assert response.status_code == 207
    assert [(e["batch_index"], e["reason"], e["field"]) for e in response.json()["errors"]] == [
        (1, reason, field)
    ]
    assert [p["identifiers"]["id"] for p in emu.people] == ["keep"]


def test_valid_edge_cases_are_accepted(emu: Emulator, track: httpx.Client) -> None:
    ops = [
        event("1", id=ulid(7).lower()),  # case-insensitive ULID
        event("1", "n" * 100, id="7ZZZZZZZZZZZZZZZZZZZZZZZZZ"),
        {"type": "delivery", "action": "anything", "identifiers": {"delivery_id": "d"}},
        {"type": "person", "action": "identify", "identifiers": {"email": "e@x.io"}},
        {"type": "person", "action": "identify", "identifiers": {"phone": "+4712345678"}},
        {**identify("1"), "timestamp": None},
    ]
    response = batch(track, *ops)
    assert response.status_code == 200, response.text
    assert [p["identifiers"] for p in emu.people] == [
        {"id": "1", "cio_id": "cio_1"},
        {"email": "e@x.io", "cio_id": "cio_2"},
        {"phone": "+4712345678", "cio_id": "cio_3"},
    ]
    assert len(emu.events) == 2


# --- v2 batch: 400s ----------------------------------------------------------------------


def batch_body_of_size(total: int) -> bytes:
    """A valid batch body of exactly ``total`` bytes, every entry under 32,000 bytes."""
    ops: list[dict[str, Any]] = []
    while True:
        current = len(orjson.dumps({"batch": ops}))
        remaining = total - current - (1 if ops else 0)
        op = event(f"p{len(ops)}", attributes={"pad": ""})
        minimum = len(orjson.dumps(op))
        pad = remaining - minimum if remaining - minimum <= 30_000 else 30_000
        op["attributes"]["pad"] = "x" * pad
        ops.append(op)
        if pad != 30_000:
            break
    body = orjson.dumps({"batch": ops})
    assert len(body) == total
    return body


def post_raw(client: httpx.Client, path: str, body: bytes) -> httpx.Response:
    return client.post(path, content=body, headers={"Content-Type": "application/json"})


def test_batch_body_limit(emu: Emulator, track: httpx.Client) -> None:
    assert MAX_BATCH_BYTES == 500_000
    over = post_raw(track, "/api/v2/batch", batch_body_of_size(MAX_BATCH_BYTES + 1))
    assert over.status_code == 400
    assert [(e["reason"], e["field"]) for e in over.json()["errors"]] == [("too_large", "body")]
    assert emu.people == []
    assert emu.events == []
    at_limit = post_raw(track, "/api/v2/batch", batch_body_of_size(MAX_BATCH_BYTES))
    assert at_limit.status_code == 200
    assert len(emu.events) == at_limit.request.content.count(b'"action"')
    assert [r.status for r in emu.requests] == [400, 200]


def test_oversize_entry_rejects_whole_batch(emu: Emulator, track: httpx.Client) -> None:
    assert MAX_ENTRY_BYTES == 32_000
    big = event("1", attributes={"pad": ""})
    big["attributes"]["pad"] = "x" * (MAX_ENTRY_BYTES + 1 - len(orjson.dumps(big)))
    assert len(orjson.dumps(big)) == MAX_ENTRY_BYTES + 1
    response = batch(track, identify("1", a=1), big)
    assert response.status_code == 400
    assert [(e["batch_index"], e["reason"], e["field"]) for e in response.json()["errors"]] == [
        (1, "too_large", "batch")
    ]
    assert emu.people == []
    assert emu.events == []
    # exactly at the limit is fine
    big["attributes"]["pad"] = big["attributes"]["pad"][:-1]
    assert batch(track, identify("1", a=1), big).status_code == 200
    assert len(emu.events) == 1


def test_entity_body_limit(emu: Emulator, track: httpx.Client) -> None:
    big = event("1", attributes={"pad": ""})
    big["attributes"]["pad"] = "x" * (MAX_ENTRY_BYTES + 1 - len(orjson.dumps(big)))
    response = post_raw(track, "/api/v2/entity", orjson.dumps(big))
    assert response.status_code == 400
    assert [(e["reason"], e["field"]) for e in response.json()["errors"]] == [("too_large", "body")]
    assert emu.events == []
    ok = track.post("/api/v2/entity", json=identify("1", a=1))
    assert (ok.status_code, ok.json()) == (200, {})
    assert emu.people[0]["attributes"] == {"a": 1}


@pytest.mark.parametrize(
    ("body", "reason", "field"),
    [
        (b"{not json", "invalid", "body"),
        (b"", "invalid", "body"),
        (b"[]", "invalid", "batch"),
        (b"{}", "required", "batch"),
        (b'{"batch": {"type": "person"}}', "invalid", "batch"),
    ],
)
def test_malformed_batch_is_400(
    emu: Emulator, track: httpx.Client, body: bytes, reason: str, field: str
) -> None:
    response = post_raw(track, "/api/v2/batch", body)
    assert response.status_code == 400
    assert [(e["reason"], e["field"]) for e in response.json()["errors"]] == [(reason, field)]
    assert emu.people == []


def test_chunked_request_body(emu: Emulator, track: httpx.Client) -> None:
    body = orjson.dumps({"batch": [identify("c", a=1)]})
    response = track.post(
        "/api/v2/batch",
        content=iter([body[:10], body[10:]]),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 200
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert emu.people[0]["attributes"] == {"a": 1}


# --- events, suppression, merge, devices, objects -------------------------------------------


def test_event_deduplication(emu: Emulator, track: httpx.Client) -> None:
    first = event("1", id=ulid(5), attributes={"n": 1})
    again = event("1", "other", id=ulid(5).lower())
    assert batch(track, first, again, event("1"), event("1")).status_code == 200
    assert track.post("/api/v2/entity", json=first).status_code == 200
    v1 = track.post("/api/v1/customers/1/events", json={"name": "purchase", "id": ulid(5)})
    assert v1.status_code == 200
    assert emu.events == [
        {
            "type": "event",
            "id": ulid(5),
            "name": "purchase",
            "timestamp": None,
            "attributes": {"n": 1},
            "identifiers": {"id": "1"},
        },
        {
            "type": "event",
            "id": None,
            "name": "purchase",
            "timestamp": None,
            "attributes": {},
            "identifiers": {"id": "1"},
        },
        {
            "type": "event",
            "id": None,
            "name": "purchase",
            "timestamp": None,
            "attributes": {},
            "identifiers": {"id": "1"},
        },
    ]
    assert emu.duplicate_events == 3
    # the event created the person
    assert emu.people == [{"identifiers": {"id": "1", "cio_id": "cio_1"}, "attributes": {}}]


def test_page_and_screen_events(emu: Emulator, track: httpx.Client) -> None:
    page = {**event("1", "https://x.io/a"), "action": "page"}
    screen = {**event("1", "Home"), "action": "screen"}
    assert batch(track, page, screen).status_code == 200
    assert [(e["type"], e["name"]) for e in emu.events] == [
        ("page", "https://x.io/a"),
        ("screen", "Home"),
    ]


def person_op(action: str, pid: str, **extra: Any) -> dict[str, Any]:
    return {"type": "person", "action": action, "identifiers": {"id": pid}, **extra}


def test_suppress_deletes_the_profile_and_blocks_its_identifiers(
    emu: Emulator, track: httpx.Client
) -> None:
    """Customer.io deletes a suppressed person's profile, attributes and all, and ignores any
    later operation naming their id or email until one of them is unsuppressed."""
    by_email = {"type": "person", "identifiers": {"email": "one@x.io"}}
    ops = [
        identify("1", a=1, email="one@x.io"),
        identify("3", a=1),
        person_op("suppress", "1"),
        identify("1", a=2, b=3),
        {**by_email, "action": "identify", "attributes": {"a": 4}},
        identify("3", email="one@x.io"),  # an attribute, but not an identifier: still suppressed
        event("1", id=ulid(9)),
        person_op("delete", "1"),
        person_op("suppress", "2"),  # unknown: the identifier alone is suppressed
        identify("2", a=1),
    ]
    assert batch(track, *ops).status_code == 200
    assert emu.people == [
        {"identifiers": {"id": "3", "cio_id": "cio_2"}, "attributes": {"a": 1, "email": "one@x.io"}}
    ]
    assert orjson.loads(track.get("/_emulator/people").content) == emu.people
    assert emu.find_person(id="1") is None and emu.find_person(email="one@x.io") is None
    assert emu.suppressions == [{"id": "1", "email": "one@x.io"}, {"id": "2"}]
    assert orjson.loads(track.get("/_emulator/suppressions").content) == emu.suppressions
    assert emu.events == []
    assert emu.ignored_ops == 5

    # unsuppressing the email frees the id too; the profile does not come back
    ops = [{**by_email, "action": "unsuppress"}, identify("1", a=5)]
    assert batch(track, *ops).status_code == 200
    assert emu.find_person(id="1") == {
        "identifiers": {"id": "1", "cio_id": "cio_3"},
        "attributes": {"a": 5},
    }
    assert emu.suppressions == [{"id": "2"}]
    # the event id was not consumed while suppressed
    assert batch(track, event("1", id=ulid(9))).status_code == 200
    assert len(emu.events) == 1


def test_delete_person(emu: Emulator, track: httpx.Client) -> None:
    assert batch(track, identify("1", a=1), event("1"), person_op("delete", "1")).status_code == 200
    assert emu.people == []
    assert len(emu.events) == 1
    assert batch(track, person_op("delete", "missing")).status_code == 200


def test_merge(emu: Emulator, track: httpx.Client) -> None:
    ops = [
        identify("p", plan="pro", name="Primary"),
        {
            "type": "person",
            "action": "identify",
            "identifiers": {"email": "s@x.io"},
            "attributes": {"name": "Secondary", "city": "Oslo"},
        },
        {
            "type": "person",
            "action": "merge",
            "primary": {"id": "p"},
            "secondary": {"email": "s@x.io"},
        },
    ]
    assert batch(track, *ops).status_code == 200
    assert emu.people == [
        {
            "identifiers": {"id": "p", "email": "s@x.io", "cio_id": "cio_1"},
            "attributes": {"plan": "pro", "name": "Primary", "city": "Oslo"},
        }
    ]
    # merging into a person who does not exist changes nothing
    missing = {
        "type": "person",
        "action": "merge",
        "primary": {"id": "nobody"},
        "secondary": {"id": "p"},
    }
    assert batch(track, missing).status_code == 200
    assert len(emu.people) == 1
    assert emu.ignored_ops == 1


def test_devices(emu: Emulator, track: httpx.Client) -> None:
    add = person_op(
        "add_device",
        "1",
        device={
            "token": "tok",
            "platform": "ios",
            "last_used": 1700000000,
            "attributes": {"a": "1"},
        },
    )
    assert batch(track, add).status_code == 200
    assert emu.people[0]["devices"] == [
        {"token": "tok", "platform": "ios", "last_used": 1700000000, "attributes": {"a": "1"}}
    ]
    # the token moves to the person who adds it last
    move = person_op("add_device", "2", device={"token": "tok", "platform": "android"})
    assert batch(track, move).status_code == 200
    first, second = emu.people
    assert "devices" not in first
    assert [(d["token"], d["platform"]) for d in second["devices"]] == [("tok", "android")]
    assert isinstance(second["devices"][0]["last_used"], int)
    remove = person_op("delete_device", "2", device={"token": "tok"})
    assert batch(track, remove).status_code == 200
    assert all("devices" not in p for p in emu.people)


def test_objects_and_relationships(emu: Emulator, track: httpx.Client) -> None:
    acme = {"object_type_id": "1", "object_id": "acme"}
    ops = [
        {"type": "object", "action": "identify", "identifiers": acme, "attributes": {"n": "Acme"}},
        person_op(
            "add_relationships",
            "1",
            cio_relationships=[
                {
                    "identifiers": {"object_type_id": 1, "object_id": "acme"},
                    "relationship_attributes": {"role": "admin"},
                },
                {"identifiers": {"object_type_id": "2", "object_id": "course"}},
            ],
        ),
        {
            "type": "object",
            "action": "add_relationships",
            "identifiers": acme,
            "cio_relationships": [{"identifiers": {"email": "b@x.io"}}],
        },
    ]
    assert batch(track, *ops).status_code == 200
    assert emu.objects == [
        {
            "object_type_id": "1",
            "object_id": "acme",
            "cio_object_id": "obj_1",
            "attributes": {"n": "Acme"},
        },
        {"object_type_id": "2", "object_id": "course", "cio_object_id": "obj_2", "attributes": {}},
    ]
    assert emu.relationships == [
        {
            "person": {"id": "1", "cio_id": "cio_1"},
            "object_type_id": "1",
            "object_id": "acme",
            "attributes": {"role": "admin"},
        },
        {
            "person": {"id": "1", "cio_id": "cio_1"},
            "object_type_id": "2",
            "object_id": "course",
            "attributes": {},
        },
        {
            "person": {"email": "b@x.io", "cio_id": "cio_2"},
            "object_type_id": "1",
            "object_id": "acme",
            "attributes": {},
        },
    ]
    more = [
        person_op(
            "delete_relationships",
            "1",
            cio_relationships=[{"identifiers": {"object_type_id": "2", "object_id": "course"}}],
        ),
        {
            "type": "object",
            "action": "identify",
            "identifiers": {"cio_object_id": "obj_1"},
            "attributes": {"n": "", "size": 5},
        },
    ]
    assert batch(track, *more).status_code == 200
    assert [(r["person"]["cio_id"], r["object_id"]) for r in emu.relationships] == [
        ("cio_1", "acme"),
        ("cio_2", "acme"),
    ]
    assert emu.objects[0]["attributes"] == {"size": 5}
    delete = {"type": "object", "action": "delete", "identifiers": acme}
    assert batch(track, delete, person_op("delete", "1")).status_code == 200
    assert [o["object_id"] for o in emu.objects] == ["course"]
    assert emu.relationships == []


# --- Track v1 -------------------------------------------------------------------------------


def test_v1_customers(emu: Emulator, track: httpx.Client) -> None:
    assert track.put("/api/v1/customers/7", json={"created_at": 1700000000, "a": 1}).json() == {}
    assert track.put("/api/v1/customers/b%40x.io", json={"a": 2}).status_code == 200
    assert track.put("/api/v1/customers/8", json={"a": 3, "_update": True}).status_code == 200
    assert emu.people == [
        {
            "identifiers": {"id": "7", "cio_id": "cio_1"},
            "attributes": {"created_at": 1700000000, "a": 1},
        },
        {
            "identifiers": {"email": "b@x.io", "cio_id": "cio_2"},
            "attributes": {"a": 2},
        },
    ]
    posted = track.post(
        "/api/v1/customers/7/events",
        json={"name": "buy", "data": {"p": 1}, "timestamp": 1700000001, "id": ulid(3)},
    )
    assert posted.status_code == 200
    assert emu.events == [
        {
            "type": "event",
            "id": ulid(3),
            "name": "buy",
            "timestamp": 1700000001,
            "attributes": {"p": 1},
            "identifiers": {"id": "7"},
        }
    ]
    bad = track.post("/api/v1/customers/7/events", json={"data": {}})
    assert bad.status_code == 400
    assert bad.json() == {"meta": {"error": "name is required", "errors": ["name is required"]}}
    big_data = track.post(
        "/api/v1/customers/7/events", json={"name": "buy", "data": {"k": "v" * 100_000}}
    )
    assert big_data.status_code == 400
    too_big = track.put("/api/v1/customers/7", json={"v": "x" * 1001})
    assert too_big.status_code == 400
    assert track.delete("/api/v1/customers/7").status_code == 200
    assert [p["identifiers"] for p in emu.people] == [{"email": "b@x.io", "cio_id": "cio_2"}]
    assert [(r.method, r.status, r.ops) for r in emu.requests] == [
        ("PUT", 200, 1),
        ("PUT", 200, 1),
        ("PUT", 200, 1),
        ("POST", 200, 1),
        ("POST", 400, 1),
        ("POST", 400, 1),
        ("PUT", 400, 1),
        ("DELETE", 200, 1),
    ]


# --- App API --------------------------------------------------------------------------------


def test_send_email(emu: Emulator, app: httpx.Client) -> None:
    body = {
        "transactional_message_id": 12,
        "to": "a@x.io",
        "identifiers": {"id": "1"},
        "message_data": {"code": "123"},
        "send_at": 1700000000,
    }
    before = int(time.time())
    response = app.post("/v1/send/email", json=body)
    assert response.status_code == 200
    result = response.json()
    assert set(result) == {"delivery_id", "queued_at"}
    assert before <= result["queued_at"] <= int(time.time())
    second = app.post(
        "/v1/send/email",
        json={"transactional_message_id": "welcome", "identifiers": {"email": "b@x.io"}},
    )
    assert second.status_code == 200
    assert second.json()["delivery_id"] != result["delivery_id"]
    assert emu.deliveries[0] == {
        "delivery_id": result["delivery_id"],
        "transactional_message_id": 12,
        "to": "a@x.io",
        "identifiers": {"id": "1"},
        "message_data": {"code": "123"},
        "send_at": 1700000000,
        "queued_at": result["queued_at"],
        "body": body,
    }
    assert len(emu.deliveries) == 2


@pytest.mark.parametrize(
    "body",
    [
        {"identifiers": {"id": "1"}},
        {"transactional_message_id": "", "identifiers": {"id": "1"}},
        {"transactional_message_id": True, "identifiers": {"id": "1"}},
        {"transactional_message_id": 1},
        {"transactional_message_id": 1, "identifiers": {"id": "1", "email": "a@x.io"}},
        {"transactional_message_id": 1, "identifiers": {"phone": "+1"}},
        {"transactional_message_id": 1, "identifiers": {"id": "1"}, "to": 5},
        [1],
    ],
)
def test_send_email_rejects(emu: Emulator, app: httpx.Client, body: Any) -> None:
    response = app.post("/v1/send/email", json=body)
    assert response.status_code == 400
    assert list(response.json()) == ["meta"]
    assert isinstance(response.json()["meta"]["error"], str)
    assert emu.deliveries == []


# --- inspection endpoints -------------------------------------------------------------------


def test_emulator_endpoints(emu: Emulator, track: httpx.Client) -> None:
    batch(track, identify("1", a=1), event("1", id=ulid(1)), event("1", id=ulid(1)))
    with httpx.Client(base_url=emu.url) as client:  # no auth needed
        state = client.get("/_emulator/state").json()
        assert state["people"] == emu.people
        assert state["events"] == emu.events
        assert state["deliveries"] == []
        assert state["duplicate_events"] == 1
        assert state["requests"] == 1
        assert client.get("/_emulator/people").json() == emu.people
        assert client.get("/_emulator/events").json() == emu.events
        requests = client.get("/_emulator/requests").json()
        assert [(r["method"], r["path"], r["status"], r["ops"], r["fault"]) for r in requests] == [
            ("POST", "/api/v2/batch", 200, 3, "")
        ]
        faults = client.post("/_emulator/faults", json={"http429_rate": 1.0, "retry_after": 3})
        assert faults.status_code == 200
        assert faults.json() == {**Faults().to_dict(), "http429_rate": 1.0, "retry_after": 3}
        assert emu.faults == Faults(http429_rate=1.0, retry_after=3)
        assert client.get("/_emulator/faults").json() == faults.json()
        bad = client.post("/_emulator/faults", json={"no_such_fault": 1})
        assert bad.status_code == 400
        assert client.post("/_emulator/faults", json={"error_rate": 2}).status_code == 400
        # inspection is never faulted
        assert client.get("/_emulator/state").status_code == 200
        assert client.post("/_emulator/faults", json={}).json() == Faults().to_dict()
        assert client.post("/_emulator/reset").status_code == 200
        assert client.get("/_emulator/nothing").status_code == 404
    assert emu.people == []
    assert emu.events == []
    assert emu.duplicate_events == 0
    assert emu.requests == []


def test_reset_from_python(emu: Emulator, track: httpx.Client) -> None:
    batch(track, identify("1"), event("1", id=ulid(2)))
    emu.reset()
    assert (emu.people, emu.events, emu.requests) == ([], [], [])
    # de-duplication memory is part of the state
    batch(track, event("1", id=ulid(2)))
    assert len(emu.events) == 1


# --- faults ----------------------------------------------------------------------------------


def test_http429_fault(emu: Emulator, track: httpx.Client) -> None:
    emu.set_faults(Faults(http429_rate=1.0, retry_after=7))
    response = batch(track, identify("1"))
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"
    assert emu.people == []
    (record,) = emu.requests
    assert (record.status, record.ops, record.fault) == (429, 1, "http429")
    emu.set_faults(None)
    assert batch(track, identify("1")).status_code == 200


def test_error_fault(emu: Emulator, track: httpx.Client) -> None:
    emu.set_faults(Faults(error_rate=1.0, seed=1))
    statuses = [batch(track, identify(str(i))).status_code for i in range(20)]
    assert set(statuses) == {500, 503}
    assert emu.people == []
    assert [r.fault for r in emu.requests] == [f"http{s}" for s in statuses]


@pytest.mark.slow
def test_seeded_faults_are_reproducible() -> None:
    runs = []
    for _ in range(2):
        faults = Faults(error_rate=0.3, http429_rate=0.2, seed=42)
        with (
            Emulator(faults=faults) as emu,
            httpx.Client(base_url=emu.url, auth=("site", "key")) as client,
        ):
            runs.append([batch(client, identify("1")).status_code for _ in range(30)])
    assert runs[0] == runs[1]
    assert {200, 429} <= set(runs[0])
    assert set(runs[0]) <= {200, 429, 500, 503}


def test_drop_fault(emu: Emulator, track: httpx.Client) -> None:
    emu.set_faults(Faults(drop_rate=1.0))
    with pytest.raises(httpx.TransportError):
        batch(track, identify("1", a=1))
    assert emu.people == []
    (record,) = emu.requests
    assert (record.status, record.ops, record.fault) == (0, 1, "drop")
    emu.set_faults(Faults())
    assert batch(track, identify("1", a=1)).status_code == 200


def test_lost_response_fault(emu: Emulator, track: httpx.Client) -> None:
    emu.set_faults(Faults(lost_response_rate=1.0))
    with pytest.raises(httpx.TransportError):
        batch(track, identify("1", a=1), event("1", id=ulid(4)))
    assert emu.people[0]["attributes"] == {"a": 1}
    assert len(emu.events) == 1
    (record,) = emu.requests
    assert (record.status, record.ops, record.fault) == (0, 2, "lost_response")
    # a retry of the same batch is applied again, but the event is de-duplicated
    emu.set_faults(None)
    assert batch(track, identify("1", a=1), event("1", id=ulid(4))).status_code == 200
    assert len(emu.events) == 1
    assert emu.duplicate_events == 1


@pytest.mark.slow
def test_rate_limit(emu: Emulator, track: httpx.Client) -> None:
    emu.set_faults(Faults(rate_limit=10, retry_after=2))
    statuses: list[int] = []
    for _ in range(1_000):  # until the first refusal: the 11th request within a second
        response = track.get("/api/v1/accounts/region")
        statuses.append(response.status_code)
        if response.status_code == 429:
            assert response.headers["Retry-After"] == "2"
            break
    assert statuses[:10] == [200] * 10
    assert statuses[-1] == 429
    # each request was refused exactly when ten accepted ones had arrived in the second before
    # it, by the arrival times the emulator took
    accepted: list[float] = []
    for record in emu.requests:  # one at a time: in order of arrival
        full = sum(1 for t in accepted if t > record.time - 1.0) >= 10
        assert (record.status, record.fault) == ((429, "rate_limit") if full else (200, ""))
        if not full:
            accepted.append(record.time)
    time.sleep(1.05)  # at least a second later, whatever the machine: the window has moved on
    assert track.get("/api/v1/accounts/region").status_code == 200


@pytest.mark.slow
def test_latency_does_not_serialize_requests(emu: Emulator, track: httpx.Client) -> None:
    latency = 1.0
    emu.set_faults(Faults(latency=latency))

    def one(i: int) -> tuple[int, float]:
        started = time.monotonic()
        response = batch(track, identify(str(i)))
        return response.status_code, time.monotonic() - started

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(one, range(20)))
    assert all(status == 200 for status, _ in results)
    assert all(duration >= latency for _, duration in results)
    assert len(emu.people) == 20
    # counted at the emulator: a request is in flight for at least `latency` after it arrived,
    # so each arrival finds those of the last `latency` seconds still there; a server that
    # answered one request at a time would never hold two
    arrivals = sorted(r.time for r in emu.requests)
    in_flight = max(sum(1 for t in arrivals if t <= a < t + latency) for a in arrivals)
    assert in_flight >= 10
    # and the emulator's own count of batch requests served at once agrees (20 were sent)
    assert in_flight <= emu.most_batches_in_flight <= 20
    emu.reset()
    assert emu.most_batches_in_flight == 0


def test_faults_validation() -> None:
    with pytest.raises(ValueError):
        Faults(error_rate=1.5)
    with pytest.raises(ValueError):
        Faults(error_rate=0.6, drop_rate=0.6)
    with pytest.raises(ValueError):
        Faults(latency=-1)
    with pytest.raises(ValueError):
        Faults(rate_limit=0)
    with pytest.raises(ValueError):
        Faults.from_dict({"latencyy": 1})
    assert Faults.from_dict({"latency": 1, "seed": 3}) == Faults(latency=1, seed=3)


# --- robustness ------------------------------------------------------------------------------


def test_survives_bad_clients(emu: Emulator, capfd: pytest.CaptureFixture[str]) -> None:
    host, port = "127.0.0.1", emu.port
    # a client that goes away mid-body
    with socket.create_connection((host, port)) as sock:
        sock.sendall(
            b'POST /api/v2/batch HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"batch"'
        )
    # a client that sends garbage
    for garbage, status in [
        (b"NOT HTTP AT ALL\r\n\r\n", b"400"),
        (b"BREW /api/v2/batch HTTP/1.1\r\nHost: x\r\n\r\n", b"501"),
        (b"POST /api/v2/batch HTTP/1.1\r\nContent-Length: nope\r\n\r\n", b"400"),
    ]:
        with socket.create_connection((host, port)) as sock:
            sock.sendall(garbage)
            assert sock.recv(100).startswith(b"HTTP/1.1 " + status + b" ")
    # a client that connects and leaves
    socket.create_connection((host, port)).close()
    time.sleep(0.1)
    with httpx.Client(base_url=emu.url, auth=("site", "key")) as client:
        assert batch(client, identify("1")).status_code == 200
    assert [r.status for r in emu.requests] == [400, 200]  # the bad Content-Length, the batch
    assert emu.server_errors == []
    captured = capfd.readouterr()
    assert captured.err == ""
    assert captured.out == ""


def test_keep_alive_and_stop_closes_connections() -> None:
    emu = Emulator().start()
    with httpx.Client(base_url=emu.url, auth=("site", "key")) as client:
        for i in range(5):
            assert batch(client, identify(str(i))).status_code == 200
        emu.stop()
        with pytest.raises(httpx.TransportError):
            batch(client, identify("x"))
    emu.stop()  # idempotent
    with pytest.raises(RuntimeError):
        _ = emu.url


# --- CLI ---------------------------------------------------------------------------------------


def _read_line(stream: Any, timeout: float) -> str:
    selector = selectors.DefaultSelector()
    selector.register(stream, selectors.EVENT_READ)
    try:
        if not selector.select(timeout):
            raise AssertionError("no output from the emulator CLI")
        return stream.readline()
    finally:
        selector.close()


@pytest.mark.slow
def test_cli_serves_and_exits_on_sigint() -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cio_destination.emulator",
            "--port",
            "0",
            "--site-id",
            "s1",
            "--api-key",
            "k1",
            "--rate-limit",
            "1000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )
    try:
        line = _read_line(proc.stdout, 15)
        match = re.fullmatch(
            r"Customer\.io emulator listening on (http://127\.0\.0\.1:\d+) \(site_id=s1, api_key=k1\)\n",
            line,
        )
        assert match, line
        url = match.group(1)
        response = httpx.get(f"{url}/api/v1/accounts/region", auth=("s1", "k1"))
        assert response.status_code == 200
        assert response.json()["url"] == url
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert proc.stderr is not None
        assert proc.stderr.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_cli_refuses_remote_host() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cio_destination.emulator", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--allow-remote" in result.stderr
    assert result.stdout == ""
