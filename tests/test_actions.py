"""The Track actions beyond identify and event: page, screen, delete, suppress, unsuppress, merge,
devices, relationships and objects.

Three tiers: the exact v2 operation each row becomes (pure), the effect of whole dlt pipelines on
the emulator (loopback), and the mapping errors of these actions.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import dlt
import orjson
import pytest
from dlt.pipeline.exceptions import PipelineStepFailed

from cio_destination import MappingError, customerio_adapter, rejected_rows
from cio_destination.emulator import Emulator
from cio_destination.entries import Mapped
from cio_destination.event_ids import canonical_key, deterministic_ulid
from cio_destination.mapper import RowMapper
from cio_destination.mapping import compile_mapping, parse_mapping

UTC = dt.timezone.utc
T = 1_705_314_600  # 2024-01-15T10:30:00Z
WHEN = dt.datetime(2024, 1, 15, 10, 30, tzinfo=UTC)


def cols(**types: str) -> dict[str, dict[str, Any]]:
    """dlt column schemas: `cols(uid="bigint", name="text")`."""
    return {name: {"name": name, "data_type": data_type} for name, data_type in types.items()}


def map_rows(
    table: str, table_columns: dict[str, Any], rows: list[dict[str, Any]], **declared: Any
) -> Mapped:
    compiled = compile_mapping(table, parse_mapping(table, declared), table_columns)
    return RowMapper(compiled).map_rows(rows)


def ops(mapped: Mapped) -> list[dict[str, Any]]:
    return [orjson.loads(entry.data) for entry in mapped.entries]


def one_op(table: str, table_columns: dict[str, Any], row: dict[str, Any], **declared: Any):
    mapped = map_rows(table, table_columns, [row], **declared)
    assert mapped.rejections == []
    assert mapped.rows_in == 1
    (op,) = ops(mapped)
    return op


def rejects(mapped: Mapped) -> list[tuple[str, str, str | None, dict[str, Any]]]:
    return [(r.row_key, r.reason, r.field, r.row) for r in mapped.rejections]


PEOPLE = cols(uid="bigint", email="text", name="text", plan="text", seen_at="timestamp")


# --- pure: person actions without data ----------------------------------------------------------


@pytest.mark.parametrize("action", ["delete", "suppress", "unsuppress"])
def test_bare_person_action_carries_only_the_identifier(action: str):
    row = {"uid": 7, "email": "ann@example.com", "name": "Ann", "plan": "pro", "seen_at": WHEN}

    op = one_op("people", PEOPLE, row, action=action, identifier="uid")

    assert op == {"type": "person", "action": action, "identifiers": {"id": "7"}}


@pytest.mark.parametrize("action", ["delete", "suppress", "unsuppress"])
def test_bare_person_action_by_email(action: str):
    row = {"uid": 7, "email": "ann@example.com", "name": "Ann"}

    op = one_op("people", PEOPLE, row, action=action, identifier="email", identifier_type="email")

    assert op == {"type": "person", "action": action, "identifiers": {"email": "ann@example.com"}}


@pytest.mark.parametrize("action", ["delete", "suppress", "unsuppress"])
def test_bare_person_action_rejects_an_empty_identifier_and_maps_the_rest(action: str):
    rows = [{"uid": 1, "name": "A"}, {"uid": None, "name": "B"}, {"uid": 3, "name": "C"}]

    mapped = map_rows("people", PEOPLE, rows, action=action, identifier="uid")

    assert ops(mapped) == [
        {"type": "person", "action": action, "identifiers": {"id": "1"}},
        {"type": "person", "action": action, "identifiers": {"id": "3"}},
    ]
    assert rejects(mapped) == [("", "missing_identifier", "uid", {"uid": None, "name": "B"})]
    assert mapped.rows_in == 3


# --- pure: merge --------------------------------------------------------------------------------

MERGES = cols(uid="bigint", old_email="text", old_id="text", note="text")


def test_merge_operation_has_primary_and_secondary_and_nothing_else():
    row = {"uid": 1, "old_email": "a@b.co", "old_id": "x", "note": "dupe"}

    op = one_op(
        "merges",
        MERGES,
        row,
        action="merge",
        identifier="uid",
        secondary_identifier="old_email",
        secondary_identifier_type="email",
    )

    assert op == {
        "type": "person",
        "action": "merge",
        "primary": {"id": "1"},
        "secondary": {"email": "a@b.co"},
    }


def test_merge_by_email_into_id_defaults_secondary_type_to_id():
    row = {"uid": 1, "old_email": "a@b.co", "old_id": "legacy-9"}

    op = one_op(
        "merges",
        MERGES,
        row,
        action="merge",
        identifier="old_email",
        identifier_type="email",
        secondary_identifier="old_id",
    )

    assert op == {
        "type": "person",
        "action": "merge",
        "primary": {"email": "a@b.co"},
        "secondary": {"id": "legacy-9"},
    }


@pytest.mark.parametrize(
    ("secondary", "reason"),
    [
        pytest.param(None, "missing_identifier", id="none"),
        pytest.param("", "missing_identifier", id="empty"),
        pytest.param("   ", "missing_identifier", id="blank"),
        pytest.param("not-an-email", "invalid_identifier", id="not-email"),
    ],
)
def test_merge_rejects_a_bad_secondary_identifier(secondary: str | None, reason: str):
    bad = {"uid": 2, "old_email": secondary}
    rows = [{"uid": 1, "old_email": "a@b.co"}, bad, {"uid": 3, "old_email": "c@d.co"}]

    mapped = map_rows(
        "merges",
        MERGES,
        rows,
        action="merge",
        identifier="uid",
        secondary_identifier="old_email",
        secondary_identifier_type="email",
    )

    assert [(op["primary"], op["secondary"]) for op in ops(mapped)] == [
        ({"id": "1"}, {"email": "a@b.co"}),
        ({"id": "3"}, {"email": "c@d.co"}),
    ]
    assert rejects(mapped) == [("2", reason, "old_email", bad)]
    assert "a@b.co" not in mapped.rejections[0].message


def test_merge_rejects_an_empty_primary_identifier():
    bad = {"uid": None, "old_email": "a@b.co"}

    mapped = map_rows(
        "merges",
        MERGES,
        [bad],
        action="merge",
        identifier="uid",
        secondary_identifier="old_email",
        secondary_identifier_type="email",
    )

    assert mapped.entries == []
    assert rejects(mapped) == [("", "missing_identifier", "uid", bad)]


# --- pure: devices ------------------------------------------------------------------------------

DEVICES = cols(
    uid="bigint",
    token="text",
    platform="text",
    last_seen="timestamp",
    app_version="text",
    push_enabled="bool",
    build="bigint",
    score="double",
)


def test_add_device_with_literal_platform_last_used_and_stringified_attributes():
    row = {
        "uid": 1,
        "token": "tok-1",
        "platform": "android",  # a column that the literal platform does not use: an attribute
        "last_seen": WHEN,
        "app_version": "1.2.3",
        "push_enabled": True,
        "build": 42,
        "score": 1.5,
    }

    op = one_op(
        "devices",
        DEVICES,
        row,
        action="add_device",
        identifier="uid",
        device_token="token",
        device_platform="ios",
        device_last_used="last_seen",
    )

    assert op == {
        "type": "person",
        "action": "add_device",
        "identifiers": {"id": "1"},
        "device": {
            "token": "tok-1",
            "platform": "ios",
            "last_used": T,
            "attributes": {
                "platform": "android",
                "app_version": "1.2.3",
                "push_enabled": "true",
                "build": "42",
                "score": "1.5",
            },
        },
    }


@pytest.mark.parametrize(
    ("value", "platform"),
    [("ios", "ios"), ("android", "android"), ("Android ", "android"), ("IOS", "ios")],
)
def test_add_device_platform_from_a_column(value: str, platform: str):
    row = {"uid": 1, "token": "tok-1", "platform": value, "last_seen": "2024-01-15T10:30:00Z"}

    op = one_op(
        "devices",
        DEVICES,
        row,
        action="add_device",
        identifier="uid",
        device_token="token",
        device_platform_column="platform",
        device_last_used="last_seen",
        attributes=[],
    )

    assert op == {
        "type": "person",
        "action": "add_device",
        "identifiers": {"id": "1"},
        "device": {"token": "tok-1", "platform": platform, "last_used": T},
    }


def test_add_device_without_last_used_or_attributes_sends_token_and_platform():
    op = one_op(
        "devices",
        cols(uid="bigint", token="text"),
        {"uid": 1, "token": "tok-1"},
        action="add_device",
        identifier="uid",
        device_token="token",
        device_platform="android",
    )

    assert op == {
        "type": "person",
        "action": "add_device",
        "identifiers": {"id": "1"},
        "device": {"token": "tok-1", "platform": "android"},
    }


def test_add_device_last_used_null_is_left_out():
    op = one_op(
        "devices",
        cols(uid="bigint", token="text", last_seen="timestamp"),
        {"uid": 1, "token": "tok-1", "last_seen": None},
        action="add_device",
        identifier="uid",
        device_token="token",
        device_platform="ios",
        device_last_used="last_seen",
    )

    assert op["device"] == {"token": "tok-1", "platform": "ios"}


def test_delete_device_carries_only_the_token():
    row = {"uid": 1, "token": "tok-1", "platform": "ios", "app_version": "1.2.3", "build": 4}

    op = one_op(
        "devices", DEVICES, row, action="delete_device", identifier="uid", device_token="token"
    )

    assert op == {
        "type": "person",
        "action": "delete_device",
        "identifiers": {"id": "1"},
        "device": {"token": "tok-1"},
    }


@pytest.mark.parametrize("action", ["add_device", "delete_device"])
@pytest.mark.parametrize("token", [None, "", "  "])
def test_empty_device_token_is_rejected_and_other_rows_map(action: str, token: str | None):
    declared: dict[str, Any] = {"action": action, "identifier": "uid", "device_token": "token"}
    if action == "add_device":
        declared.update(device_platform="ios", attributes=[])
    bad = {"uid": 2, "token": token}
    rows = [{"uid": 1, "token": "tok-1"}, bad, {"uid": 3, "token": "tok-3"}]

    mapped = map_rows("devices", DEVICES, rows, **declared)

    assert [(op["identifiers"], op["device"]["token"]) for op in ops(mapped)] == [
        ({"id": "1"}, "tok-1"),
        ({"id": "3"}, "tok-3"),
    ]
    assert rejects(mapped) == [
        (orjson.dumps([2, token]).decode(), "missing_device_token", "token", bad)
    ]


@pytest.mark.parametrize("platform", ["web", "", None, 1, "iphone"])
def test_bad_platform_from_a_column_is_rejected_and_other_rows_map(platform: Any):
    bad = {"uid": 2, "token": "tok-2", "platform": platform}
    rows = [{"uid": 1, "token": "tok-1", "platform": "ios"}, bad]

    mapped = map_rows(
        "devices",
        DEVICES,
        rows,
        action="add_device",
        identifier="uid",
        device_token="token",
        device_platform_column="platform",
        attributes=[],
    )

    assert ops(mapped) == [
        {
            "type": "person",
            "action": "add_device",
            "identifiers": {"id": "1"},
            "device": {"token": "tok-1", "platform": "ios"},
        }
    ]
    assert rejects(mapped) == [('[2,"tok-2"]', "invalid_device_platform", "platform", bad)]


def test_add_device_bad_last_used_is_rejected():
    bad = {"uid": 2, "token": "tok-2", "last_seen": "yesterday"}

    mapped = map_rows(
        "devices",
        DEVICES,
        [{"uid": 1, "token": "tok-1", "last_seen": T}, bad],
        action="add_device",
        identifier="uid",
        device_token="token",
        device_platform="ios",
        device_last_used="last_seen",
        attributes=[],
    )

    assert [op["device"] for op in ops(mapped)] == [
        {"token": "tok-1", "platform": "ios", "last_used": T}
    ]
    assert rejects(mapped) == [('[2,"tok-2"]', "invalid_timestamp", "last_seen", bad)]


# --- pure: relationships ------------------------------------------------------------------------

MEMBERS = cols(uid="bigint", company="text", kind="bigint", role="text", since="timestamp")


def test_add_relationships_operation_with_relationship_attributes():
    row = {"uid": 1, "company": "acme", "role": "admin", "since": WHEN}

    op = one_op(
        "members",
        MEMBERS,
        row,
        action="add_relationships",
        identifier="uid",
        object_type_id=1,
        object_id="company",
        attributes=["role", "since"],
    )

    assert op == {
        "type": "person",
        "action": "add_relationships",
        "identifiers": {"id": "1"},
        "cio_relationships": [
            {
                "identifiers": {"object_type_id": "1", "object_id": "acme"},
                "relationship_attributes": {"role": "admin", "since": T},
            }
        ],
    }


def test_add_relationships_default_attributes_exclude_mapped_columns():
    row = {"uid": 1, "company": "acme", "kind": 2, "role": "admin"}

    op = one_op(
        "members",
        MEMBERS,
        row,
        action="add_relationships",
        identifier="uid",
        object_type_id_column="kind",
        object_id="company",
    )

    assert op == {
        "type": "person",
        "action": "add_relationships",
        "identifiers": {"id": "1"},
        "cio_relationships": [
            {
                "identifiers": {"object_type_id": "2", "object_id": "acme"},
                "relationship_attributes": {"role": "admin"},
            }
        ],
    }


def test_add_relationships_without_attribute_values_has_no_relationship_attributes():
    op = one_op(
        "members",
        MEMBERS,
        {"uid": 1, "company": "acme", "role": None},
        action="add_relationships",
        identifier="uid",
        object_type_id="1",
        object_id="company",
    )

    assert op["cio_relationships"] == [
        {"identifiers": {"object_type_id": "1", "object_id": "acme"}}
    ]


def test_delete_relationships_is_bare_even_with_extra_columns():
    row = {"uid": 1, "company": "acme", "kind": 2, "role": "admin", "since": WHEN}

    op = one_op(
        "members",
        MEMBERS,
        row,
        action="delete_relationships",
        identifier="uid",
        object_type_id="1",
        object_id="company",
    )

    assert op == {
        "type": "person",
        "action": "delete_relationships",
        "identifiers": {"id": "1"},
        "cio_relationships": [{"identifiers": {"object_type_id": "1", "object_id": "acme"}}],
    }


@pytest.mark.parametrize("action", ["add_relationships", "delete_relationships"])
@pytest.mark.parametrize("company", [None, "", "   "])
def test_relationship_with_empty_object_id_is_rejected(action: str, company: str | None):
    bad = {"uid": 2, "company": company}

    mapped = map_rows(
        "members",
        MEMBERS,
        [{"uid": 1, "company": "acme"}, bad],
        action=action,
        identifier="uid",
        object_type_id="1",
        object_id="company",
    )

    assert [op["cio_relationships"][0]["identifiers"] for op in ops(mapped)] == [
        {"object_type_id": "1", "object_id": "acme"}
    ]
    assert rejects(mapped) == [
        (orjson.dumps([2, company]).decode(), "missing_object_id", "company", bad)
    ]


def test_relationship_with_empty_object_type_id_column_is_rejected():
    bad = {"uid": 2, "company": "acme", "kind": None}

    mapped = map_rows(
        "members",
        MEMBERS,
        [{"uid": 1, "company": "acme", "kind": 1}, bad],
        action="add_relationships",
        identifier="uid",
        object_type_id_column="kind",
        object_id="company",
        attributes=[],
    )

    assert [op["cio_relationships"] for op in ops(mapped)] == [
        [{"identifiers": {"object_type_id": "1", "object_id": "acme"}}]
    ]
    assert rejects(mapped) == [('[2,"acme"]', "missing_object_type_id", "kind", bad)]


def test_relationship_with_empty_person_identifier_is_rejected():
    bad = {"uid": None, "company": "acme"}

    mapped = map_rows(
        "members",
        MEMBERS,
        [bad],
        action="add_relationships",
        identifier="uid",
        object_type_id="1",
        object_id="company",
    )

    assert mapped.entries == []
    assert [(r.reason, r.field) for r in mapped.rejections] == [("missing_identifier", "uid")]


# --- pure: objects ------------------------------------------------------------------------------

COMPANIES = cols(company_id="text", kind="bigint", name="text", seats="bigint", founded="date")


def test_object_identify_operation():
    row = {"company_id": "acme", "name": "Acme", "seats": 10, "founded": dt.date(2024, 1, 15)}

    op = one_op(
        "companies",
        COMPANIES,
        row,
        action="object_identify",
        object_type_id="1",
        object_id="company_id",
    )

    assert op == {
        "type": "object",
        "action": "identify",
        "identifiers": {"object_type_id": "1", "object_id": "acme"},
        "attributes": {"name": "Acme", "seats": 10, "founded": 1_705_276_800},
    }


def test_object_identify_type_from_a_column_and_chosen_attributes():
    row = {"company_id": "acme", "kind": 3, "name": "Acme", "seats": 10}

    op = one_op(
        "companies",
        COMPANIES,
        row,
        action="object_identify",
        object_type_id_column="kind",
        object_id="company_id",
        attributes=["name"],
    )

    assert op == {
        "type": "object",
        "action": "identify",
        "identifiers": {"object_type_id": "3", "object_id": "acme"},
        "attributes": {"name": "Acme"},
    }


def test_object_identify_clear_nulls_sends_empty_strings():
    row = {"company_id": "acme", "name": "Acme", "seats": None}

    op = one_op(
        "companies",
        cols(company_id="text", name="text", seats="bigint"),
        row,
        action="object_identify",
        object_type_id="1",
        object_id="company_id",
        clear_nulls=True,
    )

    assert op["attributes"] == {"name": "Acme", "seats": ""}


def test_object_delete_is_bare_even_with_extra_columns():
    row = {"company_id": "acme", "kind": 3, "name": "Acme", "seats": 10}

    op = one_op(
        "companies",
        COMPANIES,
        row,
        action="object_delete",
        object_type_id="1",
        object_id="company_id",
    )

    assert op == {
        "type": "object",
        "action": "delete",
        "identifiers": {"object_type_id": "1", "object_id": "acme"},
    }


@pytest.mark.parametrize(
    ("object_id", "expected"),
    [
        pytest.param(7, "7", id="int"),
        pytest.param(Decimal("7"), "7", id="decimal"),
        pytest.param(7.0, "7", id="integral-float"),
        pytest.param(Decimal("7.00"), "7", id="scaled-decimal"),
    ],
)
def test_numeric_object_id_is_sent_as_its_integer_text(object_id: Any, expected: str):
    """An object id of 7 must name the same object whether the column is int, decimal or float
    (as a numeric person identifier does): otherwise one object splits into "7" and "7.0"."""
    op = one_op(
        "companies",
        cols(company_id="bigint"),
        {"company_id": object_id},
        action="object_delete",
        object_type_id="1",
        object_id="company_id",
    )

    assert op["identifiers"] == {"object_type_id": "1", "object_id": expected}


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        pytest.param(2, "2", id="int"),
        pytest.param("2", "2", id="text"),
        pytest.param(2.0, "2", id="integral-float"),
        pytest.param(Decimal("2"), "2", id="decimal"),
    ],
)
def test_object_type_id_from_a_column_is_integer_text(kind: Any, expected: str):
    """Object type ids are string-formatted integers ("1", "2", ...)."""
    op = one_op(
        "companies",
        cols(company_id="text", kind="bigint"),
        {"company_id": "acme", "kind": kind},
        action="object_delete",
        object_type_id_column="kind",
        object_id="company_id",
    )

    assert op["identifiers"] == {"object_type_id": expected, "object_id": "acme"}


@pytest.mark.parametrize("action", ["object_identify", "object_delete"])
@pytest.mark.parametrize("company_id", [None, "", "  "])
def test_object_with_empty_id_is_rejected_and_other_rows_map(action: str, company_id: Any):
    bad = {"company_id": company_id, "name": "Nameless"}

    mapped = map_rows(
        "companies",
        COMPANIES,
        [{"company_id": "acme", "name": "Acme"}, bad, {"company_id": "globex"}],
        action=action,
        object_type_id="1",
        object_id="company_id",
    )

    assert [op["identifiers"]["object_id"] for op in ops(mapped)] == ["acme", "globex"]
    assert rejects(mapped) == [
        ("" if company_id is None else company_id, "missing_object_id", "company_id", bad)
    ]


def test_object_id_over_the_limit_is_rejected():
    bad = {"company_id": "x" * 151}

    mapped = map_rows(
        "companies",
        COMPANIES,
        [bad],
        action="object_delete",
        object_type_id="1",
        object_id="company_id",
    )

    assert mapped.entries == []
    assert [(r.reason, r.field) for r in mapped.rejections] == [
        ("identifier_too_long", "company_id")
    ]


# --- pure: page and screen ----------------------------------------------------------------------

VIEWS = cols(view_id="text", uid="bigint", path="text", referrer="text", viewed_at="timestamp")


def view_mapper(action: str, table: str = "views") -> RowMapper:
    declared = {
        "action": action,
        "identifier": "uid",
        "event_name_column": "path",
        "event_id": "view_id",
        "timestamp": "viewed_at",
    }
    return RowMapper(compile_mapping(table, parse_mapping(table, declared), VIEWS))


@pytest.mark.parametrize("action", ["page", "screen"])
def test_page_and_screen_operation(action: str):
    row = {"view_id": "v-1", "uid": 1, "path": "/pricing", "referrer": "ads", "viewed_at": WHEN}

    (op,) = ops(view_mapper(action).map_rows([row]))

    assert op == {
        "type": "person",
        "action": action,
        "identifiers": {"id": "1"},
        "name": "/pricing",
        "id": deterministic_ulid("views", canonical_key(["v-1"])),
        "timestamp": T,
        "attributes": {"view_id": "v-1", "referrer": "ads"},
    }


@pytest.mark.parametrize("action", ["page", "screen"])
def test_page_and_screen_ids_are_deterministic(action: str):
    row = {"view_id": "v-1", "uid": 1, "path": "/pricing", "viewed_at": WHEN}
    same_key = {**row, "referrer": "changed", "path": "/other"}
    other_key = {**row, "view_id": "v-2"}

    first = ops(view_mapper(action).map_rows([row, same_key, other_key]))
    again = ops(view_mapper(action).map_rows([row]))
    other_table = ops(view_mapper(action, table="other_views").map_rows([row]))

    ids = [op["id"] for op in first]
    assert ids[0] == again[0]["id"] == ids[1]
    assert ids[2] != ids[0]
    assert other_table[0]["id"] != ids[0]
    assert all(len(i) == 26 and i[0] in "01234567" for i in ids)


def test_page_with_a_literal_name_and_no_attributes():
    (op,) = ops(
        RowMapper(
            compile_mapping(
                "views",
                parse_mapping(
                    "views",
                    {
                        "action": "page",
                        "identifier": "uid",
                        "event_name": "https://example.com/pricing",
                        "event_id": "view_id",
                        "attributes": [],
                    },
                ),
                VIEWS,
            )
        ).map_rows([{"view_id": "v-1", "uid": 1, "path": "/x", "referrer": "ads"}])
    )

    assert op == {
        "type": "person",
        "action": "page",
        "identifiers": {"id": "1"},
        "name": "https://example.com/pricing",
        "id": deterministic_ulid("views", canonical_key(["v-1"])),
    }


@pytest.mark.parametrize("action", ["page", "screen"])
def test_page_and_screen_rejections(action: str):
    rows = [
        {"view_id": "v-1", "uid": 1, "path": "/a"},
        {"view_id": "v-2", "uid": 1, "path": None},
        {"view_id": None, "uid": 1, "path": "/c"},
        {"view_id": "v-4", "uid": None, "path": "/d"},
    ]

    mapped = view_mapper(action).map_rows(rows)

    assert [op["name"] for op in ops(mapped)] == ["/a"]
    assert [(r.row_key, r.reason, r.field) for r in mapped.rejections] == [
        ("v-2", "missing_event_name", "path"),
        ("", "missing_event_id", "view_id"),
        ("v-4", "missing_identifier", "uid"),
    ]


# --- mapping errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("declared", "key", "problem"),
    [
        pytest.param(
            {"action": "delete", "identifier": "uid", "device_token": "token"},
            "device_token",
            "only applies to action add_device, delete_device",
            id="device-token-on-delete",
        ),
        pytest.param(
            {"action": "suppress", "identifier": "uid", "attributes": ["plan"]},
            "attributes",
            "only applies to action add_device, add_relationships, event, identify, object_add_relationships, object_identify, page, screen, send_email",
            id="attributes-on-suppress",
        ),
        pytest.param(
            {"action": "unsuppress", "identifier": "uid", "event_name": "x"},
            "event_name",
            "only applies to action event, page, screen",
            id="event-name-on-unsuppress",
        ),
        pytest.param(
            {"action": "delete_device", "identifier": "uid", "device_token": "t", "attributes": []},
            "attributes",
            "only applies to action add_device, add_relationships, event, identify, object_add_relationships, object_identify, page, screen, send_email",
            id="attributes-on-delete-device",
        ),
        pytest.param(
            {
                "action": "delete_device",
                "identifier": "uid",
                "device_token": "t",
                "device_platform": "ios",
            },
            "device_platform",
            "only applies to action add_device",
            id="platform-on-delete-device",
        ),
        pytest.param(
            {"action": "merge", "identifier": "uid", "secondary_identifier": "o", "timestamp": "t"},
            "timestamp",
            "only applies to action event, identify, page, screen",
            id="timestamp-on-merge",
        ),
        pytest.param(
            {"action": "page", "identifier": "uid", "event_name": "p", "object_id": "c"},
            "object_id",
            "only applies to action add_relationships, delete_relationships, object_add_relationships, object_delete, object_delete_relationships, object_identify",
            id="object-id-on-page",
        ),
        pytest.param(
            {
                "action": "object_identify",
                "identifier": "uid",
                "object_type_id": "1",
                "object_id": "c",
            },
            "identifier",
            "only applies to action add_device, add_relationships, delete, delete_device, delete_relationships, event, identify, merge, object_add_relationships, object_delete_relationships, page, screen, send_email, suppress, unsuppress",
            id="identifier-on-object-identify",
        ),
        pytest.param(
            {
                "action": "object_delete",
                "object_type_id": "1",
                "object_id": "c",
                "attributes": ["name"],
            },
            "attributes",
            "only applies to action add_device, add_relationships, event, identify, object_add_relationships, object_identify, page, screen, send_email",
            id="attributes-on-object-delete",
        ),
        pytest.param(
            {
                "action": "delete_relationships",
                "identifier": "uid",
                "object_type_id": "1",
                "object_id": "c",
                "attributes": ["role"],
            },
            "attributes",
            "only applies to action add_device, add_relationships, event, identify, object_add_relationships, object_identify, page, screen, send_email",
            id="attributes-on-delete-relationships",
        ),
        pytest.param(
            {"action": "add_device", "identifier": "uid", "device_token": "t"},
            "device_platform",
            "give exactly one of device_platform or device_platform_column",
            id="add-device-without-platform",
        ),
        pytest.param(
            {
                "action": "add_device",
                "identifier": "uid",
                "device_token": "t",
                "device_platform": "ios",
                "device_platform_column": "p",
            },
            "device_platform",
            "give exactly one of device_platform or device_platform_column",
            id="add-device-with-both-platforms",
        ),
        pytest.param(
            {
                "action": "add_device",
                "identifier": "uid",
                "device_token": "t",
                "device_platform": "web",
            },
            "device_platform",
            "Input should be 'ios' or 'android'",
            id="add-device-unknown-platform",
        ),
        pytest.param(
            {"action": "add_device", "identifier": "uid", "device_platform": "ios"},
            "device_token",
            "required (the column holding the device token)",
            id="add-device-without-token",
        ),
        pytest.param(
            {"action": "delete_device", "identifier": "uid"},
            "device_token",
            "required (the column holding the device token)",
            id="delete-device-without-token",
        ),
        pytest.param(
            {"action": "add_relationships", "identifier": "uid", "object_id": "c"},
            "object_type_id",
            "give exactly one of object_type_id or object_type_id_column",
            id="relationships-without-object-type",
        ),
        pytest.param(
            {"action": "delete_relationships", "identifier": "uid", "object_type_id": "1"},
            "object_id",
            "required (the column holding the object id)",
            id="relationships-without-object-id",
        ),
        pytest.param(
            {"action": "add_relationships", "object_type_id": "1", "object_id": "c"},
            "identifier",
            "required (the column holding the person's identifier)",
            id="relationships-without-identifier",
        ),
        pytest.param(
            {"action": "object_identify", "object_id": "c"},
            "object_type_id",
            "give exactly one of object_type_id or object_type_id_column",
            id="object-without-type",
        ),
        pytest.param(
            {"action": "object_delete", "object_type_id": "1"},
            "object_id",
            "required (the column holding the object id)",
            id="object-without-id",
        ),
        pytest.param(
            {
                "action": "merge",
                "identifier": "p",
                "identifier_type": "phone",
                "secondary_identifier": "o",
            },
            "identifier_type",
            "merge takes id, email or cio_id",
            id="merge-phone",
        ),
        pytest.param(
            {
                "action": "merge",
                "identifier": "uid",
                "secondary_identifier": "o",
                "secondary_identifier_type": "phone",
            },
            "secondary_identifier_type",
            "Input should be 'id', 'email' or 'cio_id'",
            id="merge-secondary-phone",
        ),
        pytest.param(
            {"action": "merge", "identifier": "uid"},
            "secondary_identifier",
            "required for merge",
            id="merge-without-secondary",
        ),
        pytest.param(
            {"action": "delete"},
            "identifier",
            "required (the column holding the person's identifier)",
            id="delete-without-identifier",
        ),
        pytest.param(
            {"action": "page", "identifier": "uid"},
            "event_name",
            "give exactly one of event_name or event_name_column",
            id="page-without-name",
        ),
        pytest.param(
            {
                "action": "screen",
                "identifier": "uid",
                "event_name": "Home",
                "event_name_column": "screen",
            },
            "event_name",
            "give exactly one of event_name or event_name_column",
            id="screen-with-both-names",
        ),
    ],
)
def test_mapping_errors_name_the_table_and_key(declared: dict[str, Any], key: str, problem: str):
    with pytest.raises(MappingError) as raised:
        parse_mapping("t", declared)

    assert (raised.value.table, raised.value.key, raised.value.problem) == ("t", key, problem)
    assert f"Customer.io mapping of table 't', key '{key}'" in str(raised.value)


def test_adapter_refuses_a_key_of_another_action_at_once():
    with pytest.raises(MappingError) as raised:
        customerio_adapter(
            dlt.resource([{"uid": 1}], name="gone"),
            action="delete",
            identifier="uid",
            device_token="token",
        )

    assert (raised.value.table, raised.value.key) == ("gone", "device_token")


@pytest.mark.parametrize(
    ("declared", "key"),
    [
        (
            {
                "action": "add_device",
                "identifier": "uid",
                "device_token": "tok",
                "device_platform": "ios",
            },
            "device_token",
        ),
        (
            {
                "action": "add_device",
                "identifier": "uid",
                "device_token": "token",
                "device_platform_column": "os",
            },
            "device_platform_column",
        ),
        (
            {
                "action": "add_device",
                "identifier": "uid",
                "device_token": "token",
                "device_platform": "ios",
                "device_last_used": "used",
            },
            "device_last_used",
        ),
        (
            {"action": "merge", "identifier": "uid", "secondary_identifier": "old"},
            "secondary_identifier",
        ),
        (
            {
                "action": "add_relationships",
                "identifier": "uid",
                "object_type_id": "1",
                "object_id": "org",
            },
            "object_id",
        ),
        (
            {"action": "object_identify", "object_type_id_column": "type", "object_id": "token"},
            "object_type_id_column",
        ),
    ],
)
def test_mapped_column_missing_from_the_table_is_absent_not_a_mapping_error(
    declared: dict[str, Any], key: str
):
    """dlt leaves a column NULL in every row out of the schema: it is mapped as NULL."""
    table_columns = cols(uid="bigint", token="text", platform="text")

    compiled = compile_mapping("t", parse_mapping("t", declared), table_columns)

    assert [k for k, _ in compiled.absent_columns] == [key]


# --- pipelines against the emulator -------------------------------------------------------------


def adapted(
    rows: list[dict[str, Any]],
    name: str,
    action: str,
    columns: dict[str, Any] | None = None,
    **mapping: Any,
):
    resource = dlt.resource(rows, name=name, columns=columns)
    return customerio_adapter(resource, action=action, **mapping)


def people_by_id(emulator: Emulator) -> dict[str, dict[str, Any]]:
    return {p["identifiers"]["id"]: p for p in emulator.people if "id" in p["identifiers"]}


def assert_clean(info: Any, pipeline: dlt.Pipeline, emulator: Emulator) -> None:
    assert not info.has_failed_jobs
    assert list(rejected_rows(pipeline)) == []
    assert emulator.server_errors == []
    sends = [r for r in emulator.requests if r.method == "POST"]
    assert {(r.path, r.status) for r in sends} == {("/api/v2/batch", 200)}


@pytest.mark.slow
def test_delete_removes_the_people(emulator: Emulator, make_pipeline):
    pipeline = make_pipeline()
    people = [{"uid": i, "plan": "pro"} for i in (1, 2, 3)]
    assert_clean(
        pipeline.run(adapted(people, "people", "identify", identifier="uid")), pipeline, emulator
    )
    assert sorted(people_by_id(emulator)) == ["1", "2", "3"]

    gone = [{"uid": 1, "reason": "gdpr"}, {"uid": 3, "reason": "churn"}, {"uid": 99, "reason": ""}]
    info = pipeline.run(adapted(gone, "gone", "delete", identifier="uid"))

    assert_clean(info, pipeline, emulator)
    assert [(p["identifiers"]["id"], p["attributes"]) for p in emulator.people] == [
        ("2", {"plan": "pro"})
    ]
    assert [r.ops for r in emulator.requests if r.method == "POST"][-1] == 3


@pytest.mark.slow
def test_suppress_deletes_the_person_blocks_later_identifies_and_unsuppress_lets_them_through(
    emulator: Emulator, make_pipeline
):
    pipeline = make_pipeline()

    def identify(plan: str) -> None:
        rows = [{"uid": 1, "plan": plan}, {"uid": 2, "plan": plan}]
        info = pipeline.run(adapted(rows, "people", "identify", identifier="uid"))
        assert_clean(info, pipeline, emulator)

    identify("free")
    info = pipeline.run(
        adapted([{"uid": 1, "why": "spam"}], "blocked", "suppress", identifier="uid")
    )
    assert_clean(info, pipeline, emulator)
    assert sorted(people_by_id(emulator)) == ["2"]  # the profile is gone, attributes and all
    assert emulator.suppressions == [{"id": "1"}]

    identify("pro")
    people = people_by_id(emulator)
    assert [(i, people[i]["attributes"]) for i in sorted(people)] == [("2", {"plan": "pro"})]
    assert emulator.ignored_ops == 1

    info = pipeline.run(adapted([{"uid": 1}], "unblocked", "unsuppress", identifier="uid"))
    assert_clean(info, pipeline, emulator)
    assert emulator.suppressions == []
    assert sorted(people_by_id(emulator)) == ["2"]  # unsuppress does not bring the profile back

    identify("team")
    people = people_by_id(emulator)
    assert [(i, people[i]["attributes"]) for i in sorted(people)] == [
        ("1", {"plan": "team"}),
        ("2", {"plan": "team"}),
    ]


@pytest.mark.slow
def test_suppressing_a_person_by_email_keeps_an_identify_from_recreating_them(
    emulator: Emulator, make_pipeline
):
    pipeline = make_pipeline()
    blocked = [{"email": "spam@example.com"}]
    info = pipeline.run(
        adapted(blocked, "blocked", "suppress", identifier="email", identifier_type="email")
    )
    assert_clean(info, pipeline, emulator)

    rows = [{"email": "spam@example.com", "plan": "pro"}]
    info = pipeline.run(
        adapted(rows, "people", "identify", identifier="email", identifier_type="email")
    )

    assert_clean(info, pipeline, emulator)
    assert emulator.people == []
    assert emulator.suppressions == [{"email": "spam@example.com"}]


@pytest.mark.slow
def test_merge_moves_attributes_to_the_primary_and_removes_the_secondary(
    emulator: Emulator, make_pipeline
):
    pipeline = make_pipeline()
    primaries = [{"uid": 1, "plan": "pro"}, {"uid": 2, "plan": "free"}]
    secondaries = [{"email": "old@example.com", "plan": "trial", "city": "Paris"}]
    info = pipeline.run(
        [
            adapted(primaries, "accounts", "identify", identifier="uid"),
            adapted(secondaries, "leads", "identify", identifier="email", identifier_type="email"),
        ]
    )
    assert_clean(info, pipeline, emulator)
    assert len(emulator.people) == 3

    merges = [{"uid": 1, "lead_email": "old@example.com", "note": "same human"}]
    info = pipeline.run(
        adapted(
            merges,
            "merges",
            "merge",
            identifier="uid",
            secondary_identifier="lead_email",
            secondary_identifier_type="email",
        )
    )

    assert_clean(info, pipeline, emulator)
    assert emulator.ignored_ops == 0
    assert len(emulator.people) == 2
    merged = emulator.find_person(id="1", email="old@example.com")
    assert merged is not None
    assert merged["attributes"] == {"plan": "pro", "city": "Paris"}
    assert people_by_id(emulator)["2"]["attributes"] == {"plan": "free"}
    assert [(m["primary"]["id"], m["secondary"]["email"]) for m in emulator.merges] == [
        ("1", "old@example.com")
    ]


@pytest.mark.slow
def test_devices_are_added_then_deleted(emulator: Emulator, make_pipeline):
    pipeline = make_pipeline()
    devices = [
        {"uid": 1, "token": "tok-a", "os": "iOS", "seen": WHEN, "app": "1.2", "push": True},
        {"uid": 1, "token": "tok-b", "os": "android", "seen": WHEN, "app": "1.3", "push": False},
        {"uid": 2, "token": "tok-c", "os": "web", "seen": WHEN, "app": "1.3", "push": True},
    ]
    info = pipeline.run(
        adapted(
            devices,
            "devices",
            "add_device",
            identifier="uid",
            device_token="token",
            device_platform_column="os",
            device_last_used="seen",
        )
    )

    assert not info.has_failed_jobs
    people = people_by_id(emulator)
    assert sorted(people) == ["1"]
    assert people["1"]["devices"] == [
        {
            "token": "tok-a",
            "platform": "ios",
            "last_used": T,
            "attributes": {"app": "1.2", "push": "true"},
        },
        {
            "token": "tok-b",
            "platform": "android",
            "last_used": T,
            "attributes": {"app": "1.3", "push": "false"},
        },
    ]
    assert [
        (r["table"], r["action"], r["row_key"], r["reason"], r["field"], r["row"]["token"])
        for r in rejected_rows(pipeline)
    ] == [("devices", "add_device", '[2,"tok-c"]', "invalid_device_platform", "os", "tok-c")]

    info = pipeline.run(
        adapted(
            [{"uid": 1, "token": "tok-a", "why": "uninstalled"}],
            "removed_devices",
            "delete_device",
            identifier="uid",
            device_token="token",
        )
    )

    assert not info.has_failed_jobs
    assert [d["token"] for d in people_by_id(emulator)["1"]["devices"]] == ["tok-b"]

    pipeline.run(
        adapted(
            [{"uid": 1, "token": "tok-b"}],
            "removed_devices",
            "delete_device",
            identifier="uid",
            device_token="token",
        )
    )
    person = people_by_id(emulator)["1"]
    assert "devices" not in person
    assert person["attributes"] == {}


@pytest.mark.slow
def test_objects_are_created_updated_and_deleted(emulator: Emulator, make_pipeline):
    pipeline = make_pipeline()
    companies = [
        {"company_id": "acme", "name": "Acme", "seats": 10, "founded": dt.date(2024, 1, 15)},
        {"company_id": "globex", "name": "Globex", "seats": 3, "founded": dt.date(2020, 5, 1)},
    ]
    info = pipeline.run(
        adapted(companies, "companies", "object_identify", object_type_id=1, object_id="company_id")
    )

    assert_clean(info, pipeline, emulator)
    assert sorted(
        (o["object_type_id"], o["object_id"], o["attributes"]) for o in emulator.objects
    ) == [
        ("1", "acme", {"name": "Acme", "seats": 10, "founded": 1_705_276_800}),
        ("1", "globex", {"name": "Globex", "seats": 3, "founded": 1_588_291_200}),
    ]

    info = pipeline.run(
        adapted(
            [{"company_id": "acme", "name": "Acme Inc", "seats": None, "founded": None}],
            "company_updates",
            "object_identify",
            columns={"seats": {"data_type": "bigint"}},
            object_type_id=1,
            object_id="company_id",
            attributes=["name", "seats"],
            clear_nulls=True,
        )
    )
    assert_clean(info, pipeline, emulator)
    assert {o["object_id"]: o["attributes"] for o in emulator.objects}["acme"] == {
        "name": "Acme Inc",
        "founded": 1_705_276_800,
    }

    info = pipeline.run(
        adapted(
            [{"company_id": "acme", "name": "ignored"}, {"company_id": "initech", "name": "x"}],
            "closed_companies",
            "object_delete",
            object_type_id="1",
            object_id="company_id",
        )
    )

    assert_clean(info, pipeline, emulator)
    assert [(o["object_id"], o["attributes"]) for o in emulator.objects] == [
        ("globex", {"name": "Globex", "seats": 3, "founded": 1_588_291_200})
    ]


def relationships(emulator: Emulator) -> list[tuple[str, str, str, dict[str, Any]]]:
    return sorted(
        (r["person"]["id"], r["object_type_id"], r["object_id"], r["attributes"])
        for r in emulator.relationships
    )


@pytest.mark.slow
def test_relationships_are_added_then_deleted(emulator: Emulator, make_pipeline):
    pipeline = make_pipeline()
    members = [
        {"uid": 1, "company": "acme", "role": "admin"},
        {"uid": 2, "company": "acme", "role": "member"},
        {"uid": 1, "company": "globex", "role": None},
    ]
    info = pipeline.run(
        adapted(
            members,
            "members",
            "add_relationships",
            identifier="uid",
            object_type_id="1",
            object_id="company",
        )
    )

    assert_clean(info, pipeline, emulator)
    assert relationships(emulator) == [
        ("1", "1", "acme", {"role": "admin"}),
        ("1", "1", "globex", {}),
        ("2", "1", "acme", {"role": "member"}),
    ]
    assert sorted(o["object_id"] for o in emulator.objects) == ["acme", "globex"]
    assert sorted(people_by_id(emulator)) == ["1", "2"]

    info = pipeline.run(
        adapted(
            [{"uid": 1, "company": "acme", "role": "admin"}],
            "left_members",
            "delete_relationships",
            identifier="uid",
            object_type_id="1",
            object_id="company",
        )
    )

    assert_clean(info, pipeline, emulator)
    assert relationships(emulator) == [
        ("1", "1", "globex", {}),
        ("2", "1", "acme", {"role": "member"}),
    ]
    assert sorted(o["object_id"] for o in emulator.objects) == ["acme", "globex"]


@pytest.mark.slow
def test_relationship_mapping_from_config(emulator: Emulator, make_pipeline):
    pipeline = make_pipeline(
        tables={
            "seats": {
                "action": "add_relationships",
                "identifier": "email",
                "identifier_type": "email",
                "object_type_id_column": "kind",
                "object_id": "org",
                "attributes": ["seat"],
            }
        }
    )
    rows = [
        {"email": "ann@example.com", "kind": 2, "org": "eng", "seat": "lead", "x": 1},
        {"email": "bob@example.com", "kind": 2, "org": "", "seat": "ic", "x": 2},
    ]

    info = pipeline.run(dlt.resource(rows, name="seats"))

    assert not info.has_failed_jobs
    assert [
        (r["person"]["email"], r["object_type_id"], r["object_id"], r["attributes"])
        for r in emulator.relationships
    ] == [("ann@example.com", "2", "eng", {"seat": "lead"})]
    assert [(r["reason"], r["field"]) for r in rejected_rows(pipeline)] == [
        ("missing_object_id", "org")
    ]


def view_rows(prefix: str) -> list[dict[str, Any]]:
    return [
        {"view_id": f"{prefix}-1", "uid": 1, "path": "/home", "ref": "ads", "at": WHEN},
        {"view_id": f"{prefix}-2", "uid": 1, "path": "/pricing", "ref": None, "at": WHEN},
        {"view_id": f"{prefix}-3", "uid": 2, "path": "/home", "ref": "mail", "at": WHEN},
    ]


def views(make_pipeline) -> tuple[dlt.Pipeline, Any]:
    pipeline = make_pipeline(
        tables={
            "screens": {
                "action": "screen",
                "identifier": "uid",
                "event_name_column": "path",
                "event_id": "view_id",
                "timestamp": "at",
            }
        }
    )

    def resources() -> list[Any]:
        pages = adapted(
            view_rows("p"),
            "pages",
            "page",
            identifier="uid",
            event_name_column="path",
            event_id="view_id",
            timestamp="at",
        )
        return [pages, dlt.resource(view_rows("s"), name="screens")]

    return pipeline, resources


@pytest.mark.slow
def test_page_and_screen_events_are_stored_and_not_duplicated_on_rerun(
    emulator: Emulator, make_pipeline
):
    pipeline, resources = views(make_pipeline)

    info = pipeline.run(resources())

    assert_clean(info, pipeline, emulator)
    stored = sorted(
        (e["type"], e["id"], e["name"], e["identifiers"], e["timestamp"], e["attributes"])
        for e in emulator.events
    )
    expected = sorted(
        (
            kind,
            deterministic_ulid(table, canonical_key([f"{prefix}-{n}"])),
            path,
            {"id": uid},
            T,
            {"view_id": f"{prefix}-{n}", **({"ref": ref} if ref else {})},
        )
        for kind, table, prefix in (("page", "pages", "p"), ("screen", "screens", "s"))
        for n, uid, path, ref in (
            (1, "1", "/home", "ads"),
            (2, "1", "/pricing", None),
            (3, "2", "/home", "mail"),
        )
    )
    assert stored == expected
    assert sorted(people_by_id(emulator)) == ["1", "2"]

    info = pipeline.run(resources())

    assert_clean(info, pipeline, emulator)
    assert len(emulator.events) == 6
    assert emulator.duplicate_events == 6


@pytest.mark.slow
def test_independent_actions_load_together_in_one_run(emulator: Emulator, make_pipeline):
    pipeline = make_pipeline()
    info = pipeline.run(
        [
            adapted(
                [{"company_id": "acme", "name": "Acme"}],
                "companies",
                "object_identify",
                object_type_id="1",
                object_id="company_id",
            ),
            adapted([{"uid": 5}], "blocked", "suppress", identifier="uid"),
            adapted(
                [{"uid": 6, "token": "tok-6"}],
                "devices",
                "add_device",
                identifier="uid",
                device_token="token",
                device_platform="android",
            ),
            adapted(
                [{"id": "s-1", "uid": 7, "name": "Home"}],
                "screens",
                "screen",
                identifier="uid",
                event_name_column="name",
                event_id="id",
            ),
        ]
    )

    assert_clean(info, pipeline, emulator)
    assert [(o["object_id"], o["attributes"]) for o in emulator.objects] == [
        ("acme", {"name": "Acme"})
    ]
    people = people_by_id(emulator)
    assert sorted(people) == ["6", "7"]
    assert emulator.suppressions == [{"id": "5"}]
    assert [(d["token"], d["platform"]) for d in people["6"]["devices"]] == [("tok-6", "android")]
    assert [(e["type"], e["name"], e["attributes"]) for e in emulator.events] == [
        ("screen", "Home", {"id": "s-1"})
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mapping", "key"),
    [
        ({"action": "delete", "identifier": "uid", "device_token": "token"}, "device_token"),
        ({"action": "add_device", "identifier": "uid", "device_token": "token"}, "device_platform"),
        (
            {"action": "add_relationships", "identifier": "uid", "object_id": "token"},
            "object_type_id",
        ),
        (
            {
                "action": "merge",
                "identifier": "uid",
                "identifier_type": "phone",
                "secondary_identifier": "token",
            },
            "identifier_type",
        ),
        ({"action": "object_delete", "object_type_id": "1"}, "object_id"),
    ],
)
def test_bad_mapping_of_these_actions_stops_the_load_before_any_request(
    mapping: dict[str, Any], key: str, emulator: Emulator, make_pipeline
):
    good = adapted([{"uid": i} for i in range(3)], "good", "delete", identifier="uid")
    bad = dlt.resource([{"uid": 1, "token": "t"}], name="bad")
    pipeline = make_pipeline(tables={"bad": mapping})

    with pytest.raises(PipelineStepFailed) as raised:
        pipeline.run([good, bad])

    assert f"Customer.io mapping of table 'bad', key '{key}'" in str(raised.value)
    assert emulator.requests == []


@pytest.mark.parametrize("key", [float("nan"), 2**70, 1e300], ids=["nan", "huge-int", "huge-float"])
def test_an_event_id_value_json_cannot_hold_rejects_the_row(key: Any):
    rows = [{"uid": 1, "k": key}, {"uid": 2, "k": 5}]

    mapped = map_rows(
        "orders",
        cols(uid="bigint", k="double"),
        rows,
        action="event",
        identifier="uid",
        event_name="placed",
        event_id=["k"],
    )

    assert [(r.reason, r.field) for r in mapped.rejections] == [("invalid_event_id", "k")]
    assert len(mapped.entries) == 1
