"""Customer.io's request rules, as the emulator enforces them.

Every check raises or returns an :class:`OpError` that names the field and the limit and never
echoes the offending value (values may be personal data).  The order of the checks is fixed: the
first failure of an operation is the one reported, as Customer.io reports one error per batch entry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

# --- Limits (bytes are UTF-8 bytes; "KB" in Customer.io's docs is read as 1000 bytes) -----------

#: A ``/api/v2/batch`` request body must be at most this many bytes.  Customer.io documents
#: "smaller than 500kb"; the decimal reading (500 * 1000) is the stricter one, so a client that
#: passes the emulator also passes Customer.io under either reading of "kb".
MAX_BATCH_BYTES = 500_000
#: Each batch entry (re-serialized compactly), and the whole ``/api/v2/entity`` body, at most this.
MAX_ENTRY_BYTES = 32_000
#: Person identifier values and object ids.
MAX_ID_BYTES = 150
MAX_ATTRIBUTE_NAME_BYTES = 150
#: A string attribute value's UTF-8 bytes, or any other value's JSON serialization.
MAX_ATTRIBUTE_VALUE_BYTES = 1000
#: Attributes in one identify call.
MAX_ATTRIBUTES = 300
MAX_EVENT_NAME_BYTES = 100
#: The JSON serialization of an event's ``attributes`` (v2) or ``data`` (v1).
MAX_EVENT_DATA_BYTES = 100_000
#: Object attributes, and all relationship attributes of one operation together (JSON bytes).
MAX_OBJECT_ATTRIBUTES_BYTES = 100_000

PERSON_IDENTIFIER_KEYS: tuple[str, ...] = ("id", "email", "cio_id", "phone")
SEND_IDENTIFIER_KEYS: tuple[str, ...] = ("id", "email", "cio_id")
ENTITY_TYPES = frozenset({"person", "object", "delivery"})
PERSON_ACTIONS = frozenset(
    {
        "identify",
        "delete",
        "event",
        "page",
        "screen",
        "add_relationships",
        "delete_relationships",
        "add_device",
        "delete_device",
        "merge",
        "suppress",
        "unsuppress",
    }
)
OBJECT_ACTIONS = frozenset(
    {"identify", "identify_anonymous", "delete", "add_relationships", "delete_relationships"}
)
EVENT_ACTIONS = frozenset({"event", "page", "screen"})
DEVICE_PLATFORMS = frozenset({"ios", "android"})
V1_CONTROL_KEYS = frozenset({"_update", "_timestamp"})

# Crockford base32, 26 characters, first one 0-7 (a 128-bit value).  re.ASCII keeps IGNORECASE
# from matching look-alikes such as the Kelvin sign.
_ULID = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}", re.IGNORECASE | re.ASCII)


@dataclass(frozen=True, slots=True)
class OpError:
    """One validation failure: a machine ``reason``, the ``field`` it concerns, a human message."""

    reason: str
    field: str
    message: str

    def to_dict(self, batch_index: int | None = None) -> dict[str, Any]:
        """The error as Customer.io reports it, with ``batch_index`` first when given."""
        out: dict[str, Any] = {} if batch_index is None else {"batch_index": batch_index}
        out["reason"] = self.reason
        out["field"] = self.field
        out["message"] = self.message
        return out


class Invalid(Exception):
    """Raised by the checks; carries the :class:`OpError`."""

    def __init__(self, reason: str, field: str, message: str) -> None:
        super().__init__(message)
        self.error = OpError(reason, field, message)


# --- small helpers ----------------------------------------------------------------------------


def utf8_len(text: str) -> int:
    """Length of ``text`` in UTF-8 bytes."""
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def json_len(value: Any) -> int:
    """Length of ``value``'s compact JSON serialization in bytes."""
    return len(orjson.dumps(value))


def value_size(value: Any) -> int:
    """An attribute value's size as Customer.io measures it."""
    if isinstance(value, str):
        return utf8_len(value)
    if value is None or isinstance(value, (bool, int, float)):
        return len(orjson.dumps(value))
    return json_len(value)


def is_int(value: Any) -> bool:
    """True for a JSON integer (``bool`` excluded)."""
    return isinstance(value, int) and not isinstance(value, bool)


def number_str(value: int | float) -> str:
    """The string form Customer.io stores for a numeric person id."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def is_ulid(value: Any) -> bool:
    """True when ``value`` is a ULID string (case-insensitive Crockford base32)."""
    return isinstance(value, str) and len(value) == 26 and _ULID.fullmatch(value) is not None


def normalize_person_identifier(identifiers: dict[str, Any]) -> tuple[str, str]:
    """``(key, value)`` of a validated one-key person identifier; numeric ids become strings."""
    ((key, value),) = identifiers.items()
    if not isinstance(value, str):
        value = number_str(value)
    return key, value


def normalize_object_identifier(identifiers: dict[str, Any]) -> tuple[str, str] | str:
    """``(object_type_id, object_id)`` or the ``cio_object_id`` string, of validated identifiers."""
    if "cio_object_id" in identifiers:
        return str(identifiers["cio_object_id"])
    type_id = identifiers["object_type_id"]
    return (type_id if isinstance(type_id, str) else str(type_id), identifiers["object_id"])


# --- checks -----------------------------------------------------------------------------------


def check_identifier_value(key: str, value: Any, field: str) -> None:
    """A person identifier value: non-empty string (a number for ``id``), at most 150 bytes."""
    if value is None or value == "":
        raise Invalid("required", field, f"{field}: {key} must be a non-empty string")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and key == "id":
        value = number_str(value)
    elif not isinstance(value, str):
        raise Invalid("invalid", field, f"{field}: {key} must be a string")
    size = utf8_len(value)
    if size > MAX_ID_BYTES:
        raise Invalid(
            "too_long",
            field,
            f"{field}: {key} is {size} bytes; the limit is {MAX_ID_BYTES} bytes",
        )


def check_person_identifiers(
    identifiers: Any, field: str, keys: tuple[str, ...] = PERSON_IDENTIFIER_KEYS
) -> None:
    """An object with exactly one identifier among ``keys`` and a valid value."""
    if identifiers is None:
        raise Invalid("required", field, f"{field} is required")
    if not isinstance(identifiers, dict) or len(identifiers) != 1:
        raise Invalid(
            "invalid", field, f"{field} must be an object with exactly one of {', '.join(keys)}"
        )
    ((key, value),) = identifiers.items()
    if key not in keys:
        raise Invalid(
            "invalid", field, f"{field} must be an object with exactly one of {', '.join(keys)}"
        )
    check_identifier_value(key, value, field)


def check_object_identifiers(identifiers: Any, field: str) -> None:
    """``{"object_type_id", "object_id"}`` or ``{"cio_object_id"}``."""
    shape = f"{field} must be {{object_type_id, object_id}} or {{cio_object_id}}"
    if identifiers is None:
        raise Invalid("required", field, f"{field} is required")
    if not isinstance(identifiers, dict):
        raise Invalid("invalid", field, shape)
    keys = identifiers.keys()
    if keys == {"object_type_id", "object_id"}:
        type_id = identifiers["object_type_id"]
        if not ((isinstance(type_id, str) and type_id) or is_int(type_id)):
            raise Invalid("invalid", field, f"{field}: object_type_id must be a string or integer")
        object_id = identifiers["object_id"]
        if not isinstance(object_id, str) or not object_id:
            raise Invalid("invalid", field, f"{field}: object_id must be a non-empty string")
        size = utf8_len(object_id)
        if size > MAX_ID_BYTES:
            raise Invalid(
                "too_long",
                field,
                f"{field}: object_id is {size} bytes; the limit is {MAX_ID_BYTES} bytes",
            )
    elif keys == {"cio_object_id"}:
        cio_object_id = identifiers["cio_object_id"]
        if not isinstance(cio_object_id, str) or not cio_object_id:
            raise Invalid("invalid", field, f"{field}: cio_object_id must be a non-empty string")
    else:
        raise Invalid("invalid", field, shape)


def check_timestamp(value: Any, field: str = "timestamp") -> None:
    """When present, an integer (unix seconds)."""
    if value is not None and not is_int(value):
        raise Invalid("invalid", field, f"{field} must be an integer (unix seconds)")


def check_person_attributes(attributes: Any, field: str = "attributes") -> None:
    """Identify attributes: an object of at most 300 names of 150 bytes, values of 1000 bytes."""
    if attributes is None:
        return
    if not isinstance(attributes, dict):
        raise Invalid("invalid", field, f"{field} must be an object")
    count = len(attributes)
    if count > MAX_ATTRIBUTES:
        raise Invalid(
            "too_many",
            field,
            f"{field} has {count} attributes; the limit is {MAX_ATTRIBUTES} per call",
        )
    for name, value in attributes.items():
        name_size = utf8_len(name)
        if name_size > MAX_ATTRIBUTE_NAME_BYTES:
            raise Invalid(
                "too_long",
                field,
                f"an attribute name is {name_size} bytes; "
                f"the limit is {MAX_ATTRIBUTE_NAME_BYTES} bytes",
            )
        size = value_size(value)
        if size > MAX_ATTRIBUTE_VALUE_BYTES:
            raise Invalid(
                "too_large",
                f"{field}.{name}",
                f"the value of {field}.{name} is {size} bytes; "
                f"the limit is {MAX_ATTRIBUTE_VALUE_BYTES} bytes",
            )


def check_json_object(value: Any, field: str, limit: int) -> None:
    """When present, an object whose JSON is at most ``limit`` bytes."""
    if value is None:
        return
    if not isinstance(value, dict):
        raise Invalid("invalid", field, f"{field} must be an object")
    size = json_len(value)
    if size > limit:
        raise Invalid(
            "too_large", field, f"{field} is {size} bytes as JSON; the limit is {limit} bytes"
        )


def check_event_name(name: Any, field: str = "name") -> None:
    """A non-empty string of at most 100 bytes."""
    if name is None or name == "":
        raise Invalid("required", field, f"{field} is required")
    if not isinstance(name, str):
        raise Invalid("invalid", field, f"{field} must be a string")
    size = utf8_len(name)
    if size > MAX_EVENT_NAME_BYTES:
        raise Invalid(
            "too_long",
            field,
            f"{field} is {size} bytes; the limit is {MAX_EVENT_NAME_BYTES} bytes",
        )


def check_event_id(event_id: Any, field: str = "id") -> None:
    """When present, a ULID."""
    if event_id is not None and not is_ulid(event_id):
        raise Invalid("invalid", field, f"{field} must be a ULID (26 Crockford base32 characters)")


def _check_relationships(
    relationships: Any, field: str, *, person_side: bool, required: bool
) -> None:
    """A list of ``{"identifiers": ..., "relationship_attributes"?: {}}``.

    ``person_side`` means the identifiers name people (object operations); otherwise objects.
    """
    if relationships is None:
        if required:
            raise Invalid("required", field, f"{field} is required")
        return
    if not isinstance(relationships, list):
        raise Invalid("invalid", field, f"{field} must be a list")
    if required and not relationships:
        raise Invalid("required", field, f"{field} must not be empty")
    total = 0
    for item in relationships:
        if not isinstance(item, dict):
            raise Invalid("invalid", field, f"each {field} entry must be an object")
        if person_side:
            check_person_identifiers(item.get("identifiers"), field)
        else:
            check_object_identifiers(item.get("identifiers"), field)
        attributes = item.get("relationship_attributes")
        if attributes is not None:
            if not isinstance(attributes, dict):
                raise Invalid(
                    "invalid", field, f"{field}: relationship_attributes must be an object"
                )
            total += json_len(attributes)
    if total > MAX_OBJECT_ATTRIBUTES_BYTES:
        raise Invalid(
            "too_large",
            field,
            f"{field}: relationship attributes are {total} bytes as JSON in all; "
            f"the limit is {MAX_OBJECT_ATTRIBUTES_BYTES} bytes",
        )


def _check_device(device: Any, action: str) -> None:
    if device is None:
        raise Invalid("required", "device", "device is required")
    if not isinstance(device, dict):
        raise Invalid("invalid", "device", "device must be an object")
    token = device.get("token")
    if token is None or token == "":
        raise Invalid("required", "device.token", "device.token is required")
    if not isinstance(token, str):
        raise Invalid("invalid", "device.token", "device.token must be a string")
    if action == "add_device":
        platform = device.get("platform")
        if platform is not None and platform not in DEVICE_PLATFORMS:
            raise Invalid("invalid", "device.platform", "device.platform must be ios or android")
        check_timestamp(device.get("last_used"), "device.last_used")
        attributes = device.get("attributes")
        if attributes is not None and not isinstance(attributes, dict):
            raise Invalid("invalid", "device.attributes", "device.attributes must be an object")


def _check_person_op(op: dict[str, Any], action: str) -> None:
    if action != "merge":
        check_person_identifiers(op.get("identifiers"), "identifiers")
    check_timestamp(op.get("timestamp"))
    if action == "identify":
        check_person_attributes(op.get("attributes"))
        _check_relationships(
            op.get("cio_relationships"), "cio_relationships", person_side=False, required=False
        )
    elif action in EVENT_ACTIONS:
        check_event_name(op.get("name"))
        check_event_id(op.get("id"))
        check_json_object(op.get("attributes"), "attributes", MAX_EVENT_DATA_BYTES)
    elif action == "merge":
        check_person_identifiers(op.get("primary"), "primary")
        check_person_identifiers(op.get("secondary"), "secondary")
    elif action in ("add_device", "delete_device"):
        _check_device(op.get("device"), action)
    elif action in ("add_relationships", "delete_relationships"):
        _check_relationships(
            op.get("cio_relationships"), "cio_relationships", person_side=False, required=True
        )


def _check_object_op(op: dict[str, Any], action: str) -> None:
    check_object_identifiers(op.get("identifiers"), "identifiers")
    check_timestamp(op.get("timestamp"))
    if action == "identify":
        check_json_object(op.get("attributes"), "attributes", MAX_OBJECT_ATTRIBUTES_BYTES)
        _check_relationships(
            op.get("cio_relationships"), "cio_relationships", person_side=True, required=False
        )
    elif action == "identify_anonymous":
        check_json_object(op.get("attributes"), "attributes", MAX_OBJECT_ATTRIBUTES_BYTES)
        relationships = op.get("cio_relationships")
        if relationships is not None and (
            not isinstance(relationships, list)
            or not all(isinstance(item, dict) for item in relationships)
        ):
            raise Invalid(
                "invalid", "cio_relationships", "cio_relationships must be a list of objects"
            )
    elif action in ("add_relationships", "delete_relationships"):
        _check_relationships(
            op.get("cio_relationships"), "cio_relationships", person_side=True, required=True
        )


def check_op(op: Any) -> None:
    """Validate one v2 operation; raise :class:`Invalid` at the first failure."""
    if not isinstance(op, dict):
        raise Invalid("invalid", "", "each operation must be a JSON object")
    entity_type = op.get("type")
    if entity_type is None:
        raise Invalid("required", "type", "type is required")
    if not isinstance(entity_type, str) or entity_type not in ENTITY_TYPES:
        raise Invalid("invalid", "type", "type must be one of person, object, delivery")
    if entity_type == "delivery":
        return  # accepted and ignored
    action = op.get("action")
    if action is None:
        raise Invalid("required", "action", "action is required")
    actions = PERSON_ACTIONS if entity_type == "person" else OBJECT_ACTIONS
    if not isinstance(action, str) or action not in actions:
        raise Invalid(
            "invalid",
            "action",
            f"action is not valid for type {entity_type}; expected one of "
            + ", ".join(sorted(actions)),
        )
    if entity_type == "person":
        _check_person_op(op, action)
    else:
        _check_object_op(op, action)


def validate_op(op: Any) -> OpError | None:
    """The first validation failure of a v2 operation, or ``None`` when it is valid."""
    try:
        check_op(op)
    except Invalid as exc:
        return exc.error
    return None


# --- Track v1 ---------------------------------------------------------------------------------


def check_v1_identifier(identifier: str) -> None:
    """The ``{identifier}`` path segment of the v1 customer endpoints."""
    if not identifier:
        raise Invalid("required", "identifier", "the customer identifier is required")
    size = utf8_len(identifier)
    if size > MAX_ID_BYTES:
        raise Invalid(
            "too_long",
            "identifier",
            f"the customer identifier is {size} bytes; the limit is {MAX_ID_BYTES} bytes",
        )


def check_v1_identify(body: Any) -> None:
    """``PUT /api/v1/customers/{identifier}``: an object of attributes (plus ``_update``, ...)."""
    if not isinstance(body, dict):
        raise Invalid("invalid", "body", "the request body must be a JSON object of attributes")
    check_timestamp(body.get("_timestamp"), "_timestamp")
    attributes = {k: v for k, v in body.items() if k not in V1_CONTROL_KEYS}
    check_person_attributes(attributes, "attributes")


def check_v1_event(body: Any) -> None:
    """``POST /api/v1/customers/{identifier}/events``."""
    if not isinstance(body, dict):
        raise Invalid("invalid", "body", "the request body must be a JSON object")
    check_event_name(body.get("name"))
    check_event_id(body.get("id"))
    check_timestamp(body.get("timestamp"))
    event_type = body.get("type")
    if event_type is not None and event_type not in EVENT_ACTIONS:
        raise Invalid("invalid", "type", "type must be event, page or screen")
    check_json_object(body.get("data"), "data", MAX_EVENT_DATA_BYTES)


# --- App API ----------------------------------------------------------------------------------


def send_email_error(body: Any) -> str | None:
    """Why a ``POST /v1/send/email`` body is rejected, or ``None`` when it is acceptable."""
    if not isinstance(body, dict):
        return "the request body must be a JSON object"
    message_id = body.get("transactional_message_id")
    if message_id is None or message_id == "":
        return "transactional_message_id is required"
    if not (is_int(message_id) or isinstance(message_id, str)):
        return "transactional_message_id must be a number or a trigger name"
    try:
        check_person_identifiers(body.get("identifiers"), "identifiers", SEND_IDENTIFIER_KEYS)
    except Invalid as exc:
        return exc.error.message
    to = body.get("to")
    if to is not None and not isinstance(to, str):
        return "to must be a string"
    message_data = body.get("message_data")
    if message_data is not None and not isinstance(message_data, dict):
        return "message_data must be an object"
    send_at = body.get("send_at")
    if send_at is not None and not is_int(send_at):
        return "send_at must be an integer (unix seconds)"
    return None
