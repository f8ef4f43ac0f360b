"""`object_add_relationships` and `object_delete_relationships`: an object related to a person.

The exact v2 operation of a row and its rejections (pure), the mapping errors, and the effect of
whole dlt pipelines on the emulator (loopback).
"""

from __future__ import annotations

from typing import Any

import dlt
import orjson
import pytest

from cio_destination import MappingError, customerio_adapter, rejected_rows
from cio_destination.emulator import Emulator
from cio_destination.mapper import RowMapper
from cio_destination.mapping import compile_mapping, parse_mapping

SEATS = {
    name: {"name": name, "data_type": data_type}
    for name, data_type in {
        "account": "text",
        "kind": "bigint",
        "uid": "bigint",
        "email": "text",
        "role": "text",
        "seats": "bigint",
    }.items()
}


def mapped(rows: list[dict[str, Any]], **declared: Any):
    compiled = compile_mapping("seats", parse_mapping("seats", declared), SEATS)
    return RowMapper(compiled).map_rows(rows)


def ops(rows: list[dict[str, Any]], **declared: Any) -> list[dict[str, Any]]:
    result = mapped(rows, **declared)
    assert result.rejections == []
    return [orjson.loads(entry.data) for entry in result.entries]


# --- pure: the operation ------------------------------------------------------------------------


def test_add_relates_the_object_to_the_person_with_relationship_attributes():
    row = {"account": "acme", "uid": 7, "role": "admin", "seats": 3}

    assert ops(
        [row],
        action="object_add_relationships",
        object_type_id="1",
        object_id="account",
        identifier="uid",
    ) == [
        {
            "type": "object",
            "action": "add_relationships",
            "identifiers": {"object_type_id": "1", "object_id": "acme"},
            "cio_relationships": [
                {
                    "identifiers": {"id": "7"},
                    "relationship_attributes": {"role": "admin", "seats": 3},
                }
            ],
        }
    ]


def test_add_by_email_with_the_type_from_a_column_and_no_attribute_values():
    row = {"account": "acme", "kind": 2, "email": "ann@example.com", "role": None}

    assert ops(
        [row],
        action="object_add_relationships",
        object_type_id_column="kind",
        object_id="account",
        identifier="email",
        identifier_type="email",
        attributes=["role"],
    ) == [
        {
            "type": "object",
            "action": "add_relationships",
            "identifiers": {"object_type_id": "2", "object_id": "acme"},
            "cio_relationships": [{"identifiers": {"email": "ann@example.com"}}],
        }
    ]


def test_delete_names_the_object_and_the_person_only():
    row = {"account": "acme", "uid": 7, "role": "admin", "seats": 3}

    assert ops(
        [row],
        action="object_delete_relationships",
        object_type_id="1",
        object_id="account",
        identifier="uid",
    ) == [
        {
            "type": "object",
            "action": "delete_relationships",
            "identifiers": {"object_type_id": "1", "object_id": "acme"},
            "cio_relationships": [{"identifiers": {"id": "7"}}],
        }
    ]


def test_rows_without_an_object_or_a_person_are_rejected_and_the_rest_sent():
    rows = [
        {"account": "acme", "uid": 1},
        {"account": None, "uid": 2},
        {"account": "acme", "uid": None},
        {"account": "a" * 151, "uid": 4},
    ]

    result = mapped(
        rows,
        action="object_delete_relationships",
        object_type_id="1",
        object_id="account",
        identifier="uid",
    )

    assert [orjson.loads(e.data)["cio_relationships"] for e in result.entries] == [
        [{"identifiers": {"id": "1"}}]
    ]
    assert [(r.row_key, r.reason, r.field) for r in result.rejections] == [
        ("[null,2]", "missing_object_id", "account"),
        ('["acme",null]', "missing_identifier", "uid"),
        (f'["{"a" * 151}",4]', "identifier_too_long", "account"),
    ]


# --- mapping errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("declared", "key", "problem"),
    [
        pytest.param(
            {"action": "object_add_relationships", "object_type_id": "1", "object_id": "a"},
            "identifier",
            "required (the column holding the person's identifier)",
            id="no-person",
        ),
        pytest.param(
            {"action": "object_add_relationships", "object_id": "a", "identifier": "uid"},
            "object_type_id",
            "give exactly one of object_type_id or object_type_id_column",
            id="no-object-type",
        ),
        pytest.param(
            {
                "action": "object_add_relationships",
                "object_type_id": "1",
                "object_id": "a",
                "identifier": "phone",
                "identifier_type": "phone",
            },
            "identifier_type",
            "object_add_relationships takes id, email or cio_id",
            id="phone",
        ),
        pytest.param(
            {
                "action": "object_delete_relationships",
                "object_type_id": "1",
                "object_id": "a",
                "identifier": "uid",
                "attributes": ["role"],
            },
            "attributes",
            "only applies to action add_device, add_relationships, event, identify,"
            " object_add_relationships, object_identify, page, screen, send_email",
            id="attributes-on-delete",
        ),
    ],
)
def test_mapping_errors_name_the_key(declared: dict[str, Any], key: str, problem: str):
    with pytest.raises(MappingError) as info:
        parse_mapping("seats", declared)

    assert (info.value.key, info.value.problem) == (key, problem)


# --- pipelines against the emulator -------------------------------------------------------------


def seats(rows: list[dict[str, Any]], name: str, action: str):
    resource = dlt.resource(rows, name=name)
    return customerio_adapter(
        resource, action=action, object_type_id="1", object_id="account", identifier="uid"
    )


def related(emulator: Emulator) -> list[tuple[str, str, dict[str, Any]]]:
    return sorted(
        (r["object_id"], r["person"]["id"], r["attributes"]) for r in emulator.relationships
    )


@pytest.mark.slow
def test_an_account_s_seats_are_related_then_removed(emulator: Emulator, make_pipeline):
    pipeline = make_pipeline()
    rows = [
        {"account": "acme", "uid": 1, "role": "admin"},
        {"account": "acme", "uid": 2, "role": "member"},
        {"account": "globex", "uid": 1, "role": None},
        {"account": "globex", "uid": None, "role": "member"},
    ]

    info = pipeline.run(seats(rows, "seats", "object_add_relationships"))

    assert not info.has_failed_jobs
    assert related(emulator) == [
        ("acme", "1", {"role": "admin"}),
        ("acme", "2", {"role": "member"}),
        ("globex", "1", {}),
    ]
    assert [(r["row_key"], r["reason"]) for r in rejected_rows(pipeline)] == [
        ('["globex",null]', "missing_identifier")
    ]

    left = [{"account": "acme", "uid": 1, "role": "admin"}]
    info = pipeline.run(seats(left, "left_seats", "object_delete_relationships"))

    assert not info.has_failed_jobs
    assert related(emulator) == [("acme", "2", {"role": "member"}), ("globex", "1", {})]
    assert emulator.server_errors == []
    assert {r.status for r in emulator.requests if r.method == "POST"} == {200}
