"""Pure tests of cio_destination.mapping and customerio_adapter: declared mappings and their errors."""

from __future__ import annotations

from typing import Any

import dlt
import pytest

from cio_destination import MappingError, customerio_adapter
from cio_destination.mapping import (
    compile_mapping,
    declared_from_hints,
    hint_name,
    parse_mapping,
    resolve_mapping,
)
from cio_destination.mapping_keys import CompiledMapping, TableMapping


def columns(*names: str, pk: tuple[str, ...] = (), json: tuple[str, ...] = ()) -> dict[str, Any]:
    """A dlt-like column schema, in declaration order."""
    out: dict[str, Any] = {}
    for name in names:
        column: dict[str, Any] = {"name": name, "data_type": "json" if name in json else "text"}
        if name in pk:
            column["primary_key"] = True
            column["nullable"] = False
        out[name] = column
    return out


USERS = columns("id", "email", "name", "plan", "updated_at", pk=("id",))
ORDERS = columns(
    "order_id", "user_id", "kind", "total", "props", "created_at", pk=("order_id",), json=("props",)
)


def assert_mapping_error(info: pytest.ExceptionInfo[MappingError], table: str, key: str) -> None:
    error = info.value
    assert isinstance(error, MappingError)
    assert error.table == table
    assert error.key == key
    message = str(error)
    assert f"'{table}'" in message
    assert f"key '{key}'" in message


# --- valid mappings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("declared", "expected"),
    [
        pytest.param(
            {"action": "identify", "identifier": "id"},
            {"action": "identify", "identifier": "id", "identifier_type": "id"},
            id="identify-minimal",
        ),
        pytest.param(
            {
                "action": "identify",
                "identifier": "email",
                "identifier_type": "email",
                "timestamp": "updated_at",
                "attributes": ["name", "plan"],
                "clear_nulls": True,
            },
            {
                "identifier_type": "email",
                "timestamp": "updated_at",
                "attributes": ("name", "plan"),
                "clear_nulls": True,
            },
            id="identify-full",
        ),
        pytest.param(
            {"action": "identify", "identifier": "id", "attributes": "plan"},
            {"attributes": ("plan",)},
            id="attributes-single-string",
        ),
        pytest.param(
            {"action": "identify", "identifier": "phone", "identifier_type": "phone"},
            {"identifier_type": "phone"},
            id="identify-phone",
        ),
        pytest.param(
            {"action": "identify", "identifier": "cio", "identifier_type": "cio_id"},
            {"identifier_type": "cio_id"},
            id="identify-cio-id",
        ),
        pytest.param(
            {
                "action": "event",
                "identifier": "user_id",
                "event_name": "purchase_completed",
                "event_id": "order_id",
                "timestamp": "created_at",
            },
            {
                "action": "event",
                "event_name": "purchase_completed",
                "event_name_column": None,
                "event_id": ("order_id",),
                "timestamp": "created_at",
            },
            id="event-literal-name",
        ),
        pytest.param(
            {
                "action": "event",
                "identifier": "user_id",
                "event_name_column": "kind",
                "event_data_column": "props",
                "event_id": ["order_id", "user_id"],
            },
            {
                "event_name": None,
                "event_name_column": "kind",
                "event_data_column": "props",
                "event_id": ("order_id", "user_id"),
            },
            id="event-name-column",
        ),
    ],
)
def test_parse_mapping_valid(declared, expected):
    mapping = parse_mapping("t", declared)
    assert isinstance(mapping, TableMapping)
    for key, value in expected.items():
        assert getattr(mapping, key) == value, key


@pytest.mark.parametrize(
    ("declared", "key"),
    [
        pytest.param({"identifier": "id"}, "action", id="missing-action"),
        pytest.param({"action": None, "identifier": "id"}, "action", id="none-action"),
        pytest.param({"action": "upsert", "identifier": "id"}, "action", id="unknown-action"),
        pytest.param({"action": "Identify", "identifier": "id"}, "action", id="wrong-case"),
        pytest.param(
            {"action": "merge", "identifier": "id"}, "secondary_identifier", id="merge-no-secondary"
        ),
        pytest.param(
            {"action": "send_email", "identifier": "id"},
            "transactional_message_id",
            id="send-email-no-message-id",
        ),
        pytest.param({"action": "identify", "identifer": "id"}, "identifer", id="typo-key"),
        pytest.param(
            {"action": "identify", "identifier": "id", "atributes": ["a"]},
            "atributes",
            id="typo-attributes",
        ),
        pytest.param(
            {"action": "event", "identifier": "user_id"}, "event_name", id="event-without-name"
        ),
        pytest.param(
            {
                "action": "event",
                "identifier": "user_id",
                "event_name": "x",
                "event_name_column": "kind",
            },
            "event_name",
            id="event-both-names",
        ),
        pytest.param(
            {"action": "event", "identifier": "user_id", "event_name": "  "},
            "event_name",
            id="event-blank-name",
        ),
        pytest.param({"action": "identify"}, "identifier", id="identify-without-identifier"),
        pytest.param(
            {"action": "event", "event_name": "x"}, "identifier", id="event-without-identifier"
        ),
        pytest.param(
            {"action": "identify", "identifier": "id", "event_name": "x"},
            "event_name",
            id="identify-with-event-name",
        ),
        pytest.param(
            {"action": "identify", "identifier": "id", "event_name_column": "kind"},
            "event_name_column",
            id="identify-with-event-name-column",
        ),
        pytest.param(
            {"action": "identify", "identifier": "id", "event_data_column": "props"},
            "event_data_column",
            id="identify-with-event-data-column",
        ),
        pytest.param(
            {"action": "identify", "identifier": "id", "event_id": "order_id"},
            "event_id",
            id="identify-with-event-id",
        ),
        pytest.param(
            {"action": "identify", "identifier": "id", "identifier_type": "uuid"},
            "identifier_type",
            id="unknown-identifier-type",
        ),
        pytest.param(
            {"action": "identify", "identifier": "id", "clear_nulls": "maybe"},
            "clear_nulls",
            id="clear-nulls-not-bool",
        ),
    ],
)
def test_parse_mapping_errors_name_table_and_key(declared, key):
    with pytest.raises(MappingError) as info:
        parse_mapping("my_table", declared)
    assert_mapping_error(info, "my_table", key)


def test_key_of_another_action_is_refused_naming_the_actions_it_belongs_to():
    with pytest.raises(MappingError) as info:
        parse_mapping("people", {"action": "identify", "identifier": "id", "device_token": "t"})
    assert info.value.key == "device_token"
    assert info.value.problem == "only applies to action add_device, delete_device"


# --- compile_mapping ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "declared", "table_columns", "attributes", "event_id"),
    [
        pytest.param(
            "users",
            {"action": "identify", "identifier": "id"},
            USERS,
            ("email", "name", "plan", "updated_at"),
            (),
            id="identify-default-attributes",
        ),
        pytest.param(
            "users",
            {
                "action": "identify",
                "identifier": "email",
                "identifier_type": "email",
                "timestamp": "updated_at",
            },
            USERS,
            ("id", "name", "plan"),
            (),
            id="identify-timestamp-not-an-attribute",
        ),
        pytest.param(
            "users",
            {"action": "identify", "identifier": "id", "attributes": ["plan", "name"]},
            USERS,
            ("plan", "name"),
            (),
            id="identify-chosen-attributes",
        ),
        pytest.param(
            "users",
            {"action": "identify", "identifier": "id", "attributes": []},
            USERS,
            (),
            (),
            id="identify-no-attributes",
        ),
        pytest.param(
            "orders",
            {
                "action": "event",
                "identifier": "user_id",
                "event_name": "purchase",
                "event_id": "order_id",
                "timestamp": "created_at",
            },
            ORDERS,
            # event_id columns stay in the data, as with a defaulted event id
            ("order_id", "kind", "total", "props"),
            ("order_id",),
            id="event-explicit-event-id",
        ),
        pytest.param(
            "orders",
            {
                "action": "event",
                "identifier": "user_id",
                "event_name_column": "kind",
                "event_data_column": "props",
            },
            ORDERS,
            # a defaulted event id is not named by the mapping: the key column stays in the data
            ("order_id", "total", "created_at"),
            ("order_id",),
            id="event-default-event-id-is-primary-key",
        ),
        pytest.param(
            "lines",
            {"action": "event", "identifier": "user_id", "event_name": "line"},
            columns("order_id", "line_no", "user_id", "sku", pk=("order_id", "line_no")),
            ("order_id", "line_no", "sku"),
            ("order_id", "line_no"),
            id="event-composite-primary-key",
        ),
        pytest.param(
            "clicks",
            {"action": "event", "identifier": "user_id", "event_name": "click"},
            columns("user_id", "url", "at"),
            ("url", "at"),
            (),
            id="event-no-primary-key-whole-row",
        ),
        pytest.param(
            "orders",
            {
                "action": "event",
                "identifier": "user_id",
                "event_name": "purchase",
                "event_id": ["user_id", "created_at"],
            },
            ORDERS,
            # user_id is the identifier; created_at is only part of the key, so it stays
            ("order_id", "kind", "total", "props", "created_at"),
            ("user_id", "created_at"),
            id="event-explicit-event-id-overrides-primary-key",
        ),
    ],
)
def test_compile_mapping_defaults(table, declared, table_columns, attributes, event_id):
    compiled = compile_mapping(table, parse_mapping(table, declared), table_columns)
    assert isinstance(compiled, CompiledMapping)
    assert compiled.table == table
    assert compiled.action == declared["action"]
    assert compiled.attribute_columns == attributes
    assert compiled.event_id_columns == event_id


def test_compile_mapping_records_json_columns():
    mapping = parse_mapping(
        "orders", {"action": "event", "identifier": "user_id", "event_name": "x"}
    )
    assert compile_mapping("orders", mapping, ORDERS).json_columns == frozenset({"props"})


@pytest.mark.parametrize(
    ("declared", "key", "column"),
    [
        pytest.param(
            {"action": "identify", "identifier": "user_email"},
            "identifier",
            "user_email",
            id="identifier",
        ),
        pytest.param(
            {"action": "identify", "identifier": "id", "timestamp": "modified"},
            "timestamp",
            "modified",
            id="timestamp",
        ),
        pytest.param(
            {"action": "identify", "identifier": "id", "attributes": ["name", "tier"]},
            "attributes",
            "tier",
            id="attributes",
        ),
        pytest.param(
            {"action": "event", "identifier": "id", "event_name": "x", "event_id": "event_uuid"},
            "event_id",
            "event_uuid",
            id="event-id",
        ),
        pytest.param(
            {
                "action": "event",
                "identifier": "id",
                "event_name": "x",
                "event_data_column": "payload",
            },
            "event_data_column",
            "payload",
            id="event-data-column",
        ),
        pytest.param(
            {"action": "event", "identifier": "id", "event_name_column": "event_type"},
            "event_name_column",
            "event_type",
            id="event-name-column",
        ),
    ],
)
def test_compile_mapping_column_not_in_table_is_absent_not_an_error(declared, key, column):
    """dlt leaves a column out of the schema while it is NULL in every row: the mapping then
    maps it as NULL (and the load warns, naming the key and the column)."""
    compiled = compile_mapping("users", parse_mapping("users", declared), USERS)

    assert compiled.absent_columns == ((key, column),)


# --- resolve_mapping ---------------------------------------------------------------------------


def _hinted_schema(declared: dict[str, Any]) -> dict[str, Any]:
    schema: dict[str, Any] = {"name": "users", "columns": USERS, "write_disposition": "append"}
    for key, value in declared.items():
        schema[hint_name(key)] = value
    return schema


@pytest.mark.parametrize(
    ("key", "hint"),
    [
        ("action", "x-customerio-action"),
        ("identifier_type", "x-customerio-identifier-type"),
        ("event_id", "x-customerio-event-id"),
        ("event_data_column", "x-customerio-event-data-column"),
    ],
)
def test_hint_name(key, hint):
    assert hint_name(key) == hint


def test_resolve_mapping_from_hints():
    declared = {
        "action": "identify",
        "identifier": "email",
        "identifier_type": "email",
        "timestamp": "updated_at",
    }
    schema = _hinted_schema(declared)
    assert declared_from_hints(schema) == declared
    assert resolve_mapping("users", schema, None) == parse_mapping("users", declared)


@pytest.mark.parametrize(
    "configured",
    [
        pytest.param(
            {"action": "event", "identifier": "id", "event_name": "signed_up"}, id="other-action"
        ),
        pytest.param({"action": "identify", "identifier": "id"}, id="same-action-fewer-keys"),
    ],
)
def test_resolve_mapping_config_replaces_hints(configured):
    schema = _hinted_schema(
        {
            "action": "identify",
            "identifier": "email",
            "identifier_type": "email",
            "timestamp": "updated_at",
            "attributes": ["name"],
        }
    )
    resolved = resolve_mapping("users", schema, configured)
    assert resolved == parse_mapping("users", configured)
    # nothing of the hints leaks into the configured mapping
    assert resolved.identifier == "id"
    assert resolved.identifier_type == "id"
    assert resolved.timestamp is None
    assert resolved.attributes is None


def test_resolve_mapping_config_error_names_table_and_key():
    with pytest.raises(MappingError) as info:
        resolve_mapping(
            "users",
            _hinted_schema({"action": "identify", "identifier": "id"}),
            {"action": "identify", "identifer": "id"},
        )
    assert_mapping_error(info, "users", "identifer")


@pytest.mark.parametrize(
    ("schema", "configured"),
    [
        pytest.param({"name": "users", "columns": USERS}, None, id="no-hints-no-config"),
        pytest.param({"name": "users", "columns": USERS}, {}, id="no-hints-empty-config"),
        pytest.param(
            {"name": "users", "columns": USERS, "x-other-hint": 1}, None, id="unrelated-hints"
        ),
    ],
)
def test_resolve_mapping_table_without_mapping(schema, configured):
    with pytest.raises(MappingError) as info:
        resolve_mapping("users", schema, configured)
    assert_mapping_error(info, "users", "action")


# --- customerio_adapter ------------------------------------------------------------------------


def _users_resource():
    @dlt.resource(name="users", primary_key="id")
    def users():
        yield {"id": 1, "email": "ann@example.com", "updated_at": "2024-01-15T10:30:00Z"}

    return users()


@pytest.mark.parametrize(
    ("action", "mapping", "hints"),
    [
        pytest.param(
            "identify",
            {"identifier": "email", "identifier_type": "email", "timestamp": "updated_at"},
            {
                "x-customerio-action": "identify",
                "x-customerio-identifier": "email",
                "x-customerio-identifier-type": "email",
                "x-customerio-timestamp": "updated_at",
            },
            id="identify",
        ),
        pytest.param(
            "event",
            {
                "identifier": "id",
                "event_name": "signed_up",
                "event_id": "id",
                "attributes": ["email"],
                "timestamp": "at",
            },
            {
                "x-customerio-action": "event",
                "x-customerio-identifier": "id",
                "x-customerio-event-name": "signed_up",
                "x-customerio-event-id": ["id"],
                "x-customerio-attributes": ["email"],
                "x-customerio-timestamp": "at",
            },
            id="event",
        ),
    ],
)
def test_customerio_adapter_stores_hints(action, mapping, hints):
    resource = customerio_adapter(_users_resource(), action=action, **mapping)
    schema = resource.compute_table_schema()
    for hint, value in hints.items():
        assert schema[hint] == value, hint
    stored = {k for k in schema if isinstance(k, str) and k.startswith("x-customerio-")}
    assert stored == set(hints)
    # the hints read back into the same mapping the adapter checked
    assert resolve_mapping("users", schema, None) == parse_mapping(
        "users", {"action": action, **mapping}
    )


def test_customerio_adapter_wraps_plain_data():
    resource = customerio_adapter([{"id": 1}], action="identify", identifier="id")
    schema = resource.compute_table_schema()
    assert schema["x-customerio-action"] == "identify"
    assert schema["x-customerio-identifier"] == "id"


@pytest.mark.parametrize(
    ("action", "mapping", "key"),
    [
        pytest.param("identify", {"identifer": "email"}, "identifer", id="typo-key"),
        pytest.param("upsert", {"identifier": "email"}, "action", id="unknown-action"),
        pytest.param(
            "merge", {"identifier": "email"}, "secondary_identifier", id="merge-no-secondary"
        ),
        pytest.param("identify", {}, "identifier", id="missing-identifier"),
        pytest.param("event", {"identifier": "id"}, "event_name", id="event-without-name"),
        pytest.param(
            "identify", {"identifier": "id", "event_name": "x"}, "event_name", id="event-key"
        ),
    ],
)
def test_customerio_adapter_rejects_bad_mapping_at_once(action, mapping, key):
    resource = _users_resource()
    with pytest.raises(MappingError) as info:
        customerio_adapter(resource, action=action, **mapping)
    assert_mapping_error(info, "users", key)
    schema = resource.compute_table_schema()
    assert not any(isinstance(k, str) and k.startswith("x-customerio-") for k in schema)


def test_literal_event_name_over_the_limit_is_a_mapping_error():
    declared = {"action": "event", "identifier": "user_id", "event_name": "é" * 51}
    with pytest.raises(MappingError) as info:
        parse_mapping("orders", declared)
    assert_mapping_error(info, "orders", "event_name")


def test_attribute_column_name_over_the_limit_is_a_mapping_error():
    long_name = "x" * 151
    mapping = parse_mapping("users", {"action": "identify", "identifier": "id"})
    with pytest.raises(MappingError) as info:
        compile_mapping("users", mapping, columns("id", long_name))
    assert_mapping_error(info, "users", "attributes")
    assert long_name not in str(info.value)


# --- json_columns ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "declared",
    [
        {"action": "identify", "identifier": "id"},
        {"action": "event", "identifier": "id", "event_name": "x"},
        {"action": "add_device", "identifier": "id", "device_token": "t", "device_platform": "ios"},
        {
            "action": "add_relationships",
            "identifier": "id",
            "object_type_id": "1",
            "object_id": "o",
        },
        {"action": "object_identify", "object_type_id": "1", "object_id": "o"},
        {"action": "send_email", "identifier": "id", "transactional_message_id": 7},
    ],
    ids=lambda declared: declared["action"],
)
def test_json_columns_apply_where_attributes_do(declared: dict[str, Any]):
    mapping = parse_mapping("t", {**declared, "json_columns": "prefs"})

    assert mapping.json_columns == ("prefs",)


@pytest.mark.parametrize("action", ["delete", "merge", "delete_device", "object_delete"])
def test_json_columns_are_refused_where_nothing_is_sent(action: str):
    declared = {
        "action": action,
        "identifier": "id",
        "secondary_identifier": "other",
        "device_token": "t",
        "object_type_id": "1",
        "object_id": "o",
        "json_columns": ["prefs"],
    }
    needed = {
        "delete": ("identifier",),
        "merge": ("identifier", "secondary_identifier"),
        "delete_device": ("identifier", "device_token"),
        "object_delete": ("object_type_id", "object_id"),
    }[action]
    with pytest.raises(MappingError) as info:
        parse_mapping("t", {k: declared[k] for k in ("action", *needed, "json_columns")})
    assert_mapping_error(info, "t", "json_columns")


def test_compile_mapping_json_columns_are_declared_ones_and_json_typed_ones():
    mapping = parse_mapping(
        "orders",
        {"action": "event", "identifier": "user_id", "event_name": "x", "json_columns": ["kind"]},
    )

    compiled = compile_mapping("orders", mapping, ORDERS)

    assert compiled.json_columns == frozenset({"props", "kind"})


def test_compile_mapping_json_column_not_in_the_table_is_absent():
    mapping = parse_mapping(
        "orders",
        {"action": "event", "identifier": "user_id", "event_name": "x", "json_columns": ["meta"]},
    )

    assert compile_mapping("orders", mapping, ORDERS).absent_columns == (("json_columns", "meta"),)


# --- oversized_attribute -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "declared",
    [
        {"action": "identify", "identifier": "id"},
        {"action": "add_device", "identifier": "id", "device_token": "t", "device_platform": "ios"},
    ],
    ids=lambda declared: declared["action"],
)
def test_oversized_attribute_applies_where_the_value_limit_does(declared: dict[str, Any]):
    assert parse_mapping("t", declared).oversized_attribute == "reject_row"
    mapping = parse_mapping("t", {**declared, "oversized_attribute": "drop_attribute"})
    assert mapping.oversized_attribute == "drop_attribute"


@pytest.mark.parametrize(
    "declared",
    [
        {
            "action": "event",
            "identifier": "id",
            "event_name": "x",
            "oversized_attribute": "drop_attribute",
        },
        {"action": "identify", "identifier": "id", "oversized_attribute": "truncate"},
    ],
    ids=["event-has-no-value-limit", "unknown-choice"],
)
def test_oversized_attribute_errors_name_the_key(declared: dict[str, Any]):
    with pytest.raises(MappingError) as info:
        parse_mapping("t", declared)
    assert_mapping_error(info, "t", "oversized_attribute")
