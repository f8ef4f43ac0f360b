"""Customer.io's documented Track API limits, and the checks that hold rows to them locally.

Each check has its row form (one row's value: the value it sends, or a `Reject` naming the reason
and the column, never the value) and, where the columnar paths need it, its column form (a whole
Arrow column: the JSON text it sends, and a flag per row the row form must decide), side by side.
A row a column form flags goes through the row form, so what is sent and what is rejected is the
row form's, byte for byte, whichever path a row takes.

Sizes are in bytes of UTF-8 / serialized JSON. "500 KB" and "32 KB" are taken as decimal kilobytes,
the stricter reading, so a body this destination builds is valid under either.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from cio_destination.arrow_json import (
    Member,
    any_byte_outside,
    as_string,
    float_pieces,
    float_text,
    is_text,
    json_key,
    json_string_body,
)
from cio_destination.entries import Rejection, Row
from cio_destination.values import (
    MAX_INT,
    MIN_INT,
    Unreadable,
    ValueProblem,
    decimal_column,
    floor_seconds,
    int_text,
    is_temporal,
    outside_timestamp_range,
    to_json_value,
)

MAX_REQUEST_BYTES = 500_000
MAX_ENTRY_BYTES = 32_000
MAX_IDENTIFIER_BYTES = 150
MAX_ATTRIBUTE_NAME_BYTES = 150
MAX_ATTRIBUTE_VALUE_BYTES = 1_000
MAX_ATTRIBUTES_PER_IDENTIFY = 300
MAX_EVENT_NAME_BYTES = 100
MAX_EVENT_DATA_BYTES = 100_000
MAX_OBJECT_DATA_BYTES = 100_000


class Reject(Exception):
    """A row a check refuses: the reason, the column (or key) at fault, and a message that
    never holds the value."""

    def __init__(self, reason: str, field: str | None, message: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.field = field
        self.message = message


def utf8_len(text: str, limit: int) -> int:
    """The UTF-8 size of `text`, skipping the encode when it cannot exceed `limit` (<= 4 B/char)."""
    return len(text) if len(text) * 4 <= limit else len(text.encode("utf-8"))


def is_blank(value: Any) -> bool:
    """A value that holds nothing to send: None, or text of whitespace only."""
    return value is None or (isinstance(value, str) and not value.strip())


def text_value(value: Any, column: str, reason: str, what: str) -> str:
    """The text a value is sent as where Customer.io takes a string from a column (an event
    name, a device token, a recipient, a message id): text as it is, other scalars (numbers,
    dates) as their text; a `Reject` with `reason` for a value that has no such text (a
    boolean, an object or a list, bytes, NaN or infinity), never its Python repr."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        raise Reject(reason, column, f"a boolean is not a {what}")
    if isinstance(value, int):
        return int_text(value)
    if isinstance(value, Unreadable):
        raise Reject(reason, column, str(value.problem()))
    if isinstance(value, (dict, list, tuple, bytes, bytearray, memoryview)):
        raise Reject(reason, column, f"a {type(value).__name__} is not a {what}")
    if (isinstance(value, float) and not math.isfinite(value)) or (
        isinstance(value, Decimal) and not value.is_finite()
    ):
        raise Reject(reason, column, f"not a finite number, not a {what}")
    return str(value)


# bytes that can be part of a character Python's str.isspace() calls whitespace
_SPACE_BYTES = bytes([*range(0x09, 0x0E), *range(0x1C, 0x21), *range(0x80, 0x100)])
_NOT_SPACE = bytes(b for b in range(256) if b not in _SPACE_BYTES)


def blank_flags(column: Any) -> list[Any]:
    """The column form of `is_blank` for the non-empty texts of a string column: a flag of the
    texts of whitespace only (none when no byte of the column can be part of whitespace)."""
    if not any_byte_outside(column, _NOT_SPACE):
        return []
    return [pa.array([text is not None and text.isspace() for text in column.to_pylist()])]


# -- identifiers ---------------------------------------------------------------------------------

# used with fullmatch: `$` would also match before a trailing newline
_PHONE = re.compile(r"\+[1-9][0-9]{1,14}")
# at most 4 bytes a character: an identifier this short is under the byte limit whatever it holds
_SHORT_IDENTIFIER = MAX_IDENTIFIER_BYTES // 4


def identifier_text(value: Any, column: str, kind: str) -> str:
    """An identifier's text: numbers as integer text (7, 7.0 and Decimal('7.00') all give "7")."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        raise Reject("invalid_identifier", column, f"a boolean is not a valid {kind}")
    if isinstance(value, int):
        return int_text(value)
    try:
        number = to_json_value(value)
    except ValueProblem as exc:
        raise Reject("invalid_identifier", column, str(exc)) from None
    if isinstance(number, float) and number.is_integer():
        return str(int(number))
    if isinstance(number, (int, str)):
        return str(number)
    raise Reject("invalid_identifier", column, f"a {type(value).__name__} is not a valid {kind}")


def identifier_or_none(value: Any) -> str | None:
    """The identifier text the row path writes for `value`, None where it rejects the value."""
    try:
        return identifier_text(value, "identifier", "identifier")
    except Reject:
        return None


def person_identifier(value: Any, column: str, kind: str) -> str:
    """The text of a person's identifier of `kind` (`id`, `email`, `cio_id`, `phone`) held by
    `column`; a `Reject` when it is empty, too long, or not of its kind."""
    if (
        type(value) is str
        and 0 < len(value) <= _SHORT_IDENTIFIER
        and not value.isspace()
        and (kind == "id" or kind == "cio_id" or (kind == "email" and "@" in value))
    ):
        return value  # the common case: a short, plain identifier that passes every check
    if is_blank(value):
        raise Reject("missing_identifier", column, f"the {kind} identifier is empty")
    text = identifier_text(value, column, kind)
    if utf8_len(text, MAX_IDENTIFIER_BYTES) > MAX_IDENTIFIER_BYTES:
        raise Reject(
            "identifier_too_long",
            column,
            f"the identifier is over Customer.io's {MAX_IDENTIFIER_BYTES}-byte limit",
        )
    if kind == "email" and "@" not in text:
        raise Reject("invalid_identifier", column, "not an email address")
    if kind == "phone" and not _PHONE.fullmatch(text):
        raise Reject("invalid_identifier", column, "not an E.164 phone number (+ and digits)")
    return text


def object_type_id_text(value: Any, column: str) -> str:
    """The text of an object type id held by `column`; a `Reject` when it is empty."""
    if value is None or value == "":
        raise Reject("missing_object_type_id", column, "the object type id is empty")
    return identifier_text(value, column, "object type id")


def object_id_text(value: Any, column: str) -> str:
    """The text of an object id held by `column`; a `Reject` when it is empty or too long."""
    if is_blank(value):
        raise Reject("missing_object_id", column, "the object id is empty")
    text = identifier_text(value, column, "object id")
    if utf8_len(text, MAX_IDENTIFIER_BYTES) > MAX_IDENTIFIER_BYTES:
        raise Reject(
            "identifier_too_long",
            column,
            f"the object id is over Customer.io's {MAX_IDENTIFIER_BYTES}-byte limit",
        )
    return text


def identifier_column(batch: Any, column: str | None) -> Any | None:
    """The column form of `identifier_text`: a text or integer identifier column as text
    (integers as their digits), or None if it has no such form (the row form decides)."""
    if column is None or column not in batch.schema.names:
        return None
    ident = batch.column(column)
    if not (pa.types.is_integer(ident.type) or is_text(ident.type)):
        return None
    return as_string(ident)


def identifier_flags(ident: Any, kind: str) -> list[Any]:
    """The column form of `person_identifier`'s checks: rows whose identifier it rejects (or
    might: the row form decides those)."""
    length = pc.binary_length(ident)
    flags: list[Any] = [
        ident.is_null(),
        pc.equal(length, 0),
        pc.greater(length, MAX_IDENTIFIER_BYTES),
        *blank_flags(ident),
    ]
    if kind == "email":
        flags.append(pc.invert(pc.match_substring(ident, "@")))
    elif kind == "phone":
        # RE2's `$` is the end of the text only (Python's also matches before a final newline)
        flags.append(pc.invert(pc.match_substring_regex(ident, f"^{_PHONE.pattern}$")))
    return flags


# -- attribute values ----------------------------------------------------------------------------

_VALUE_LIMIT = MAX_ATTRIBUTE_VALUE_BYTES
ATTRIBUTE_DROPPED = "attribute_dropped"
"""The reason of the record of an attribute left out of a row that was sent."""
_DROPPED_MESSAGE = (
    f"the value is over Customer.io's {_VALUE_LIMIT}-byte attribute value limit; the row was"
    " sent without this attribute (oversized_attribute = drop_attribute)"
)


def _value_size(value: Any) -> int:
    if isinstance(value, str):
        return utf8_len(value, _VALUE_LIMIT)
    if isinstance(value, (dict, list)):
        return len(orjson.dumps(value))
    return 0  # numbers and booleans are far below any limit


def _oversized(column: str, value: Any, dropped: list[str] | None) -> bool:
    """Whether a value is over the attribute value limit and is to be left out (listed in
    `dropped`); without a `dropped` list such a value rejects its row."""
    if _value_size(value) <= _VALUE_LIMIT:
        return False
    if dropped is None:
        raise Reject(
            "attribute_value_too_long",
            column,
            f"the value is over Customer.io's {_VALUE_LIMIT}-byte attribute value limit",
        )
    dropped.append(column)
    return True


def attribute_values(
    row: Row,
    columns: tuple[str, ...],
    *,
    clear_nulls: bool,
    per_value_limit: bool,
    dropped: list[str] | None = None,
) -> dict[str, Any]:
    """The row's values of the attribute `columns`, JSON-ready; a NULL is left out, or sent as
    "" with `clear_nulls`. With `per_value_limit`, a value over Customer.io's limit rejects the
    row, or, given a `dropped` list, is left out and its column listed there."""
    attributes: dict[str, Any] = {}
    # this loop runs for every column of every row: plain str/int/bool/float values, by far
    # the most common, take a short path that skips the general conversion
    for column in columns:
        value = row.get(column)
        if value is None:
            if clear_nulls:
                attributes[column] = ""
            continue
        kind = type(value)
        if kind is str:
            if (
                per_value_limit
                and len(value) * 4 > _VALUE_LIMIT
                and _oversized(column, value, dropped)
            ):
                continue
            attributes[column] = value
            continue
        if kind is bool or (kind is int and MIN_INT <= value <= MAX_INT):
            attributes[column] = value
            continue
        if kind is float and math.isfinite(value):
            attributes[column] = value
            continue
        try:
            value = to_json_value(value)
        except ValueProblem as exc:
            raise Reject("invalid_value", column, str(exc)) from None
        if per_value_limit and _oversized(column, value, dropped):
            continue
        attributes[column] = value
    return attributes


def dropped_records(row: Row, row_key: str, columns: list[str]) -> list[Rejection]:
    """The records of the attributes left out of a row that is sent, one per column."""
    return [Rejection(row, row_key, ATTRIBUTE_DROPPED, c, _DROPPED_MESSAGE) for c in columns]


def attribute_texts(
    batch: Any,
    columns: list[str],
    flags: list[Any],
    *,
    value_limit: bool,
    split_floats: bool = False,
) -> list[Member] | None:
    """The column form of `attribute_values`: per attribute column, its JSON object member
    (see `arrow_json.Member`); rows the row form treats otherwise are added to `flags`. None when
    a column's type is one this form does not convert (the row form then maps the batch).

    With `split_floats`, a float member's values are the two `float_pieces` (for a caller that
    joins its members' pieces itself), else one column of text."""
    attributes: list[Member] = []
    for name in columns:
        column = batch.column(name)
        kind = column.type
        key = json_key(name)
        if pa.types.is_null(kind):
            continue  # every value is null: the row form leaves the attribute out
        if is_text(kind):
            if pa.types.is_large_string(kind):
                column = as_string(column)  # one offset width for the joins
                if column is None:
                    return None
            if value_limit:
                flags.append(pc.greater(pc.binary_length(column), _VALUE_LIMIT))
            attributes.append((key + '"', json_string_body(column), '"', column.null_count > 0))
            continue
        if pa.types.is_floating(kind):
            flags.append(pc.invert(pc.is_finite(column)))
            text = float_pieces(column) if split_floats else float_text(column)
        elif is_temporal(kind):
            seconds = floor_seconds(column)
            flags.append(outside_timestamp_range(seconds))
            text = pc.cast(seconds, pa.string())
        elif pa.types.is_integer(kind):
            text = pc.cast(column, pa.string())
        elif pa.types.is_boolean(kind):
            text = pc.if_else(column, "true", "false")
        elif pa.types.is_decimal(kind):
            text = decimal_column(column, flags)
            if text is None:
                return None
        else:
            return None  # nested and other types: the row form converts them
        attributes.append((key, text, "", column.null_count > 0))
    return attributes


# -- event data and object data ------------------------------------------------------------------


def check_event_data(data: dict[str, Any], field: str) -> None:
    """A `Reject` when the event data (or message data) is over Customer.io's limit."""
    if data and len(orjson.dumps(data)) > MAX_EVENT_DATA_BYTES:
        raise Reject(
            "event_data_too_large",
            field,
            f"the event data is over Customer.io's {MAX_EVENT_DATA_BYTES}-byte limit",
        )


def event_data_too_large(sizes: Any, head: str) -> Any:
    """The column form of `check_event_data`: per row, whether the data's JSON object member
    (`head` and the object; no bytes without data), of these byte sizes, is over the limit."""
    return pc.greater(sizes, MAX_EVENT_DATA_BYTES + len(head))


def check_object_data(attributes: dict[str, Any]) -> None:
    """A `Reject` when object (or relationship) attributes are over Customer.io's limit."""
    if len(orjson.dumps(attributes)) > MAX_OBJECT_DATA_BYTES:
        raise Reject(
            "attributes_too_large",
            "attributes",
            f"the attributes are over Customer.io's {MAX_OBJECT_DATA_BYTES}-byte limit",
        )


# -- whole operations ----------------------------------------------------------------------------


def entry_rejections(rows: list[Any], row_key: str, data: bytes) -> list[Rejection]:
    """The rejections of the rows of an operation over Customer.io's size of an entry (none
    when it fits)."""
    if len(data) <= MAX_ENTRY_BYTES:
        return []
    return [
        Rejection(
            row,
            row_key,
            "entry_too_large",
            None,
            f"the operation is {len(data)} bytes, over Customer.io's"
            f" {MAX_ENTRY_BYTES}-byte limit per entry",
        )
        for row in rows
    ]


def unwritable(row: Row, error: Exception) -> Reject:
    """The rejection of a row whose operation JSON cannot carry (orjson refused to write it: an
    integer beyond 64 bits, text with a lone surrogate, ...), naming the first column whose
    value it refuses. A safety net behind the rules above: any such row is rejected, never a
    failed load."""
    column = None
    for name, value in row.items():
        try:
            orjson.dumps(value, default=str)
        except orjson.JSONEncodeError:
            column = name
            break
    return Reject("invalid_value", column, f"a value JSON cannot carry ({error})")


def entries_too_large(operations: Any, trailing: int = 0) -> Any:
    """The column form of `entry_rejections`: per row, whether its operation is over the size
    (each operation written with `trailing` bytes after it, a separator, not counted)."""
    return pc.greater(pc.binary_length(operations), MAX_ENTRY_BYTES + trailing)
