"""`add_device` and `delete_device`: a person's push device, added (or updated) or removed."""

from __future__ import annotations

from typing import Any

import orjson

from cio_destination.actions.rows import RowReader, person_op
from cio_destination.actions.spec import IDENTIFIER, PERSON_KEYS, Action, OneOf, Required
from cio_destination.entries import Row
from cio_destination.limits import Reject, is_blank, text_value

_TOKEN = Required("device_token", "(the column holding the device token)")


def _token(reader: RowReader, row: Row) -> str:
    column = reader.mapping.device_token
    assert column is not None
    token = row.get(column)
    if is_blank(token):
        raise Reject("missing_device_token", column, "the device token is empty")
    return text_value(token, column, "invalid_device_token", "device token")


def _platform(reader: RowReader, row: Row) -> str:
    if reader.mapping.device_platform is not None:
        return reader.mapping.device_platform
    column = reader.mapping.device_platform_column
    assert column is not None
    value = row.get(column)
    platform = value.strip().lower() if isinstance(value, str) else None
    if platform not in ("ios", "android"):
        raise Reject("invalid_device_platform", column, "the platform must be ios or android")
    return platform


def add_device_op(reader: RowReader, row: Row, dropped: list[str] | None) -> dict[str, Any]:
    """The row builder of `add_device`: the device's token, platform, last use and attributes
    (strings in Customer.io's API); an attribute over the value limit may be `dropped`."""
    op = person_op(reader, row)
    device: dict[str, Any] = {"token": _token(reader, row), "platform": _platform(reader, row)}
    last_used = reader.unix(row, reader.mapping.device_last_used)
    if last_used is not None:
        device["last_used"] = last_used
    attributes = reader.attributes(row, per_value_limit=True, dropped=dropped)
    if attributes:
        device["attributes"] = {
            k: v if isinstance(v, str) else orjson.dumps(v).decode() for k, v in attributes.items()
        }
    op["device"] = device
    return op


def delete_device_op(reader: RowReader, row: Row, dropped: list[str] | None) -> dict[str, Any]:
    """The row builder of `delete_device`: the person and the device's token."""
    op = person_op(reader, row)
    op["device"] = {"token": _token(reader, row)}
    return op


ACTIONS = (
    Action(
        name="add_device",
        keys=PERSON_KEYS
        | {
            "device_token",
            "device_platform",
            "device_platform_column",
            "device_last_used",
            "attributes",
            "json_columns",
            "oversized_attribute",
        },
        requires=(IDENTIFIER, _TOKEN, OneOf("device_platform", "device_platform_column")),
        build=add_device_op,
        row_key=("identifier", "device_token"),
    ),
    Action(
        name="delete_device",
        keys=PERSON_KEYS | {"device_token"},
        requires=(IDENTIFIER, _TOKEN),
        build=delete_device_op,
        row_key=("identifier", "device_token"),
    ),
)
