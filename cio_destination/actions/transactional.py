"""`send_email`: a transactional email through the App API (`POST /v1/send/email`).

A send is not idempotent at Customer.io: each row carries a send key (the ULID of its `event_id`
columns, as an event's id) that the durable send ledger records before and after the request, so
a row is never emailed twice. The operation is the App API body of one row.
"""

from __future__ import annotations

from typing import Any

from cio_destination.actions.rows import RowReader
from cio_destination.actions.spec import (
    IDENTIFIER,
    PERSON_KEYS,
    Action,
    IdentifierTypes,
    MappingProblem,
    OneOf,
)
from cio_destination.entries import Row
from cio_destination.limits import Reject, is_blank, text_value
from cio_destination.mapping_keys import TableMapping
from cio_destination.values import DIGITS, MAX_INT, MIN_INT, ValueProblem, to_json_value

MESSAGE_OVERRIDE_FIELDS = frozenset(
    {
        "from",
        "subject",
        "body",
        "body_amp",
        "body_plain",
        "preheader",
        "reply_to",
        "bcc",
        "fake_bcc",
        "plaintext_body",
        "language",
        "tracked",
        "headers",
        "attachments",
    }
)
"""Fields of the transactional email body a column may set through `message_overrides`."""
_OPTIONS = ("disable_message_retention", "send_to_unsubscribed", "queue_draft")
_MOST_DIGITS = len(str(MAX_INT))  # of a message number: more is text (int() refuses 4,300)


def _check_overrides(mapping: TableMapping) -> None:
    for field in mapping.message_overrides or {}:
        if field not in MESSAGE_OVERRIDE_FIELDS:
            raise MappingProblem(
                "message_overrides",
                f"'{field}' is not a transactional email field"
                f" (use one of {', '.join(sorted(MESSAGE_OVERRIDE_FIELDS))})",
            )


def _message_id(reader: RowReader, row: Row) -> str | int:
    """The message's number, where it is one JSON consumers take (64 bits), else its text (a
    trigger name, or digits beyond 64 bits, which Customer.io can answer for)."""
    mapping = reader.mapping
    if mapping.transactional_message_id is not None:
        return mapping.transactional_message_id
    column = mapping.transactional_message_id_column
    assert column is not None
    value = row.get(column)
    if is_blank(value):
        raise Reject("missing_message_id", column, "the transactional message id is empty")
    if type(value) is int and MIN_INT <= value <= MAX_INT:
        return value
    text = text_value(value, column, "invalid_message_id", "transactional message id")
    if DIGITS.fullmatch(text) and len(text) <= _MOST_DIGITS and int(text) <= MAX_INT:
        return int(text)
    return text


def send_body(reader: RowReader, row: Row, send_id: str) -> dict[str, Any]:
    """The row builder: the App API `/v1/send/email` body of one row."""
    mapping = reader.mapping
    body: dict[str, Any] = {
        "transactional_message_id": _message_id(reader, row),
        "identifiers": {mapping.identifier_type: reader.identifier(row)},
    }
    if mapping.to is not None:
        to = row.get(mapping.to)
        if is_blank(to):
            raise Reject("missing_recipient", mapping.to, "the recipient is empty")
        body["to"] = text_value(to, mapping.to, "invalid_recipient", "recipient")
    data = reader.event_data(row, mapping.message_data_column)
    if data:
        body["message_data"] = data
    send_at = reader.unix(row, mapping.send_at)
    if send_at is not None:
        body["send_at"] = send_at
    for option in _OPTIONS:
        value = getattr(mapping, option)
        if value is not None:
            body[option] = value
    for name, column in (mapping.message_overrides or {}).items():
        value = row.get(column)
        if value is not None:
            try:
                body[name] = to_json_value(value)
            except ValueProblem as exc:
                raise Reject("invalid_value", column, str(exc)) from None
    return body


ACTIONS = (
    Action(
        name="send_email",
        keys=PERSON_KEYS
        | {
            "transactional_message_id",
            "transactional_message_id_column",
            "to",
            "attributes",
            "json_columns",
            "message_data_column",
            "send_at",
            "event_id",
            *_OPTIONS,
            "message_overrides",
        },
        requires=(
            IDENTIFIER,
            OneOf("transactional_message_id", "transactional_message_id_column"),
            IdentifierTypes(("id", "email", "cio_id")),
        ),
        build=send_body,
        row_key=("event_id",),
        keyed=True,
        check=_check_overrides,
    ),
)
