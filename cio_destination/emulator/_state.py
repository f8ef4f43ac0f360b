"""The emulated workspace: people, events, objects, relationships, devices, deliveries.

All mutating methods expect the caller to hold :attr:`State.lock` (a batch is applied under one
acquisition, so it is atomic with respect to other requests and to inspection).  Operations reach
this module already validated (see ``_validate``).
"""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any

import orjson

from ._validate import (
    EVENT_ACTIONS,
    PERSON_IDENTIFIER_KEYS,
    normalize_object_identifier,
    normalize_person_identifier,
    number_str,
)

_EXPORT_KEYS = ("id", "email", "phone", "cio_id")


class _Person:
    __slots__ = ("attributes", "devices", "identifiers", "last_timestamp", "serial")

    def __init__(self, serial: int, identifiers: dict[str, str]) -> None:
        self.serial = serial
        self.identifiers = identifiers
        self.attributes: dict[str, Any] = {}
        self.devices: dict[str, dict[str, Any]] = {}
        self.last_timestamp: int | None = None

    def export(self) -> dict[str, Any]:
        ids = self.identifiers
        out: dict[str, Any] = {
            "identifiers": {k: ids[k] for k in _EXPORT_KEYS if k in ids},
            "attributes": self.attributes,
        }
        if self.devices:
            out["devices"] = list(self.devices.values())
        return out


class _Object:
    __slots__ = ("attributes", "cio_object_id", "object_id", "object_type_id")

    def __init__(self, object_type_id: str, object_id: str, cio_object_id: str) -> None:
        self.object_type_id = object_type_id
        self.object_id = object_id
        self.cio_object_id = cio_object_id
        self.attributes: dict[str, Any] = {}

    def export(self) -> dict[str, Any]:
        return {
            "object_type_id": self.object_type_id,
            "object_id": self.object_id,
            "cio_object_id": self.cio_object_id,
            "attributes": self.attributes,
        }


def _merge_attributes(target: dict[str, Any], changes: dict[str, Any]) -> None:
    """Customer.io's merge: set each value; ``""`` or ``null`` removes the attribute."""
    for name, value in changes.items():
        if value is None or value == "":
            target.pop(name, None)
        else:
            target[name] = value


def _copy(value: Any) -> Any:
    return orjson.loads(orjson.dumps(value))


class State:
    """One workspace's data.  Read it through the ``export_*`` methods (deep copies)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._delivery_serial = 0
        self.clear()

    def clear(self) -> None:
        """Forget everything: afterwards the state is that of a new workspace.

        ``cio_id`` and ``cio_object_id`` numbering restarts; delivery ids take a new random
        prefix, so they never repeat.
        """
        self._person_serial = 0
        self._object_serial = 0
        self._delivery_prefix = secrets.token_hex(4)
        self._people: dict[int, _Person] = {}
        self._index: dict[str, dict[str, _Person]] = {k: {} for k in PERSON_IDENTIFIER_KEYS}
        self._device_owner: dict[str, _Person] = {}
        # each suppressed (identifier key, value) -> every identifier suppressed with it
        self._suppressed: dict[tuple[str, str], dict[str, str]] = {}
        self._objects: dict[tuple[str, str], _Object] = {}
        self._objects_by_cio: dict[str, _Object] = {}
        # (person serial, object_type_id, object_id) -> relationship attributes
        self._relationships: dict[tuple[int, str, str], dict[str, Any]] = {}
        self._events: list[dict[str, Any]] = []
        self._seen_event_ids: set[str] = set()
        self._deliveries: list[dict[str, Any]] = []
        self._merges: list[dict[str, Any]] = []
        self.duplicate_events = 0
        self.ignored_ops = 0
        self.stale_identifies = 0

    # --- people ---------------------------------------------------------------------------

    def _lookup(self, key: str, value: str) -> _Person | None:
        return self._index[key].get(value)

    def _create(self, key: str, value: str) -> _Person:
        self._person_serial += 1
        serial = self._person_serial
        cio_id = f"cio_{serial}"
        person = _Person(serial, {key: value, "cio_id": cio_id})
        self._people[serial] = person
        self._index[key][value] = person
        self._index["cio_id"][cio_id] = person
        return person

    def _resolve(self, key: str, value: str, *, create: bool) -> _Person | None:
        """The person the identifier names, created if allowed; ``None`` when the op is ignored.

        Operations on a suppressed identifier are ignored; an unknown ``cio_id`` cannot be
        created (Customer.io assigns those).  Both count in :attr:`ignored_ops`.
        """
        if (key, value) in self._suppressed:
            self.ignored_ops += 1
            return None
        person = self._index[key].get(value)
        if person is None:
            if not create or key == "cio_id":
                if key == "cio_id":
                    self.ignored_ops += 1
                return None
            return self._create(key, value)
        return person

    def _set_identifier(self, person: _Person, key: str, value: str) -> None:
        """Give ``person`` identifier ``key`` unless another person already holds that value."""
        if person.identifiers.get(key) == value:
            return
        index = self._index[key]
        if value in index or (key, value) in self._suppressed:
            return  # identifier conflict: Customer.io refuses the change
        old = person.identifiers.get(key)
        if old is not None:
            index.pop(old, None)
        person.identifiers[key] = value
        index[value] = person

    def _unset_identifier(self, person: _Person, key: str) -> None:
        old = person.identifiers.pop(key, None)
        if old is not None:
            self._index[key].pop(old, None)

    def _remove_person(self, person: _Person) -> None:
        serial = person.serial
        del self._people[serial]
        for key, value in person.identifiers.items():
            self._index[key].pop(value, None)
        for token in person.devices:
            self._device_owner.pop(token, None)
        for rel_key in [k for k in self._relationships if k[0] == serial]:
            del self._relationships[rel_key]

    def _update_person(self, person: _Person, attributes: dict[str, Any], via: str) -> None:
        """Merge identify attributes; ``email`` also sets the email identifier, ``id`` the id."""
        for name, value in attributes.items():
            if name == "id":
                # An id in attributes adds an id to a person identified another way.
                if "id" not in person.identifiers and value not in (None, ""):
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        value = number_str(value)
                    if isinstance(value, str):
                        self._set_identifier(person, "id", value)
                continue
            if value is None or value == "":
                person.attributes.pop(name, None)
                if name == "email" and via != "email":
                    self._unset_identifier(person, "email")
                continue
            person.attributes[name] = value
            if name == "email" and isinstance(value, str):
                self._set_identifier(person, "email", value)

    def identify(
        self,
        key: str,
        value: str,
        attributes: dict[str, Any],
        timestamp: int | None,
        *,
        create: bool = True,
    ) -> _Person | None:
        person = self._resolve(key, value, create=create)
        if person is None:
            return None
        if timestamp is not None:
            if person.last_timestamp is not None and timestamp < person.last_timestamp:
                self.stale_identifies += 1
                return None
            person.last_timestamp = timestamp
        self._update_person(person, attributes, key)
        return person

    def event(
        self,
        kind: str,
        key: str,
        value: str,
        name: str,
        event_id: str | None,
        timestamp: int | None,
        attributes: dict[str, Any],
    ) -> None:
        if (key, value) in self._suppressed:
            self.ignored_ops += 1
            return
        existing = self._index[key].get(value)
        if existing is None and key == "cio_id":
            self.ignored_ops += 1
            return
        if event_id is not None:
            dedupe_key = event_id.upper()
            if dedupe_key in self._seen_event_ids:
                self.duplicate_events += 1
                return
            self._seen_event_ids.add(dedupe_key)
        if existing is None:
            self._create(key, value)
        self._events.append(
            {
                "type": kind,
                "id": event_id,
                "name": name,
                "timestamp": timestamp,
                "attributes": attributes,
                "identifiers": {key: value},
            }
        )

    def delete_person(self, key: str, value: str) -> None:
        if (key, value) in self._suppressed:
            self.ignored_ops += 1
            return
        person = self._index[key].get(value)
        if person is None:
            return
        self._remove_person(person)

    def _suppress(self, key: str, value: str) -> None:
        """Customer.io's suppress: the profile is deleted, attributes and all, and its ``id`` and
        ``email`` (and the identifier named) can never come back until unsuppressed."""
        if (key, value) in self._suppressed:
            return
        person = self._index[key].get(value)
        if person is None and key == "cio_id":
            self.ignored_ops += 1
            return
        suppressed = {key: value}
        if person is not None:
            suppressed.update((k, v) for k, v in person.identifiers.items() if k in ("id", "email"))
            self._remove_person(person)
        for pair in suppressed.items():
            self._suppressed[pair] = suppressed

    def _unsuppress(self, key: str, value: str) -> None:
        """Every identifier suppressed together becomes available again; the profile stays
        deleted (a later identify creates a new person)."""
        suppressed = self._suppressed.get((key, value))
        if suppressed is None:
            return
        for pair in suppressed.items():
            self._suppressed.pop(pair, None)

    def _merge(self, primary_ids: dict[str, Any], secondary_ids: dict[str, Any]) -> None:
        primary = self._lookup(*normalize_person_identifier(primary_ids))
        secondary = self._lookup(*normalize_person_identifier(secondary_ids))
        if primary is None or secondary is None or primary is secondary:
            self.ignored_ops += 1
            return
        for name, value in secondary.attributes.items():
            primary.attributes.setdefault(name, value)
        devices = list(secondary.devices.values())
        secondary_serial = secondary.serial
        primary_serial = primary.serial
        moved = {
            (primary_serial, k[1], k[2]): v
            for k, v in self._relationships.items()
            if k[0] == secondary_serial
        }
        identifiers = {k: v for k, v in secondary.identifiers.items() if k != "cio_id"}
        self._merges.append(
            {"primary": dict(primary.identifiers), "secondary": dict(secondary.identifiers)}
        )
        self._remove_person(secondary)
        for key, value in identifiers.items():
            if key not in primary.identifiers:
                self._set_identifier(primary, key, value)
        for device in devices:
            if device["token"] not in primary.devices:
                primary.devices[device["token"]] = device
                self._device_owner[device["token"]] = primary
        for rel_key, attributes in moved.items():
            self._relationships.setdefault(rel_key, attributes)
        if secondary.last_timestamp is not None and (
            primary.last_timestamp is None or secondary.last_timestamp > primary.last_timestamp
        ):
            primary.last_timestamp = secondary.last_timestamp

    def _add_device(self, person: _Person, device: dict[str, Any]) -> None:
        token = device["token"]
        owner = self._device_owner.get(token)
        previous = person.devices.get(token)
        if owner is not None and owner is not person:
            owner.devices.pop(token, None)  # a token belongs to one person
        attributes = dict(previous["attributes"]) if previous else {}
        _merge_attributes(attributes, device.get("attributes") or {})
        last_used = device.get("last_used")
        person.devices[token] = {
            "token": token,
            "platform": device.get("platform") or (previous or {}).get("platform"),
            "last_used": last_used if last_used is not None else int(time.time()),
            "attributes": attributes,
        }
        self._device_owner[token] = person

    def _delete_device(self, person: _Person, token: str) -> None:
        if person.devices.pop(token, None) is not None:
            self._device_owner.pop(token, None)

    # --- objects and relationships --------------------------------------------------------

    def _object(self, identifiers: dict[str, Any], *, create: bool) -> _Object | None:
        ref = normalize_object_identifier(identifiers)
        if isinstance(ref, str):
            obj = self._objects_by_cio.get(ref)
            if obj is None:
                self.ignored_ops += 1
            return obj
        obj = self._objects.get(ref)
        if obj is None and create:
            self._object_serial += 1
            obj = _Object(ref[0], ref[1], f"obj_{self._object_serial}")
            self._objects[ref] = obj
            self._objects_by_cio[obj.cio_object_id] = obj
        return obj

    def _relate(
        self, person: _Person, obj: _Object, attributes: dict[str, Any] | None, add: bool
    ) -> None:
        rel_key = (person.serial, obj.object_type_id, obj.object_id)
        if add:
            target = self._relationships.setdefault(rel_key, {})
            _merge_attributes(target, attributes or {})
        else:
            self._relationships.pop(rel_key, None)

    def _person_relationships(
        self, person: _Person, relationships: list[dict[str, Any]], add: bool
    ) -> None:
        for item in relationships:
            obj = self._object(item["identifiers"], create=add)
            if obj is not None:
                self._relate(person, obj, item.get("relationship_attributes"), add)

    def _object_relationships(
        self, obj: _Object, relationships: list[dict[str, Any]], add: bool
    ) -> None:
        for item in relationships:
            key, value = normalize_person_identifier(item["identifiers"])
            person = self._resolve(key, value, create=add)
            if person is not None:
                self._relate(person, obj, item.get("relationship_attributes"), add)

    def _delete_object(self, obj: _Object) -> None:
        del self._objects[(obj.object_type_id, obj.object_id)]
        del self._objects_by_cio[obj.cio_object_id]
        for rel_key in [
            k for k in self._relationships if k[1] == obj.object_type_id and k[2] == obj.object_id
        ]:
            del self._relationships[rel_key]

    # --- v2 operations --------------------------------------------------------------------

    def apply(self, op: dict[str, Any]) -> None:
        """Apply one validated v2 operation.  Caller holds :attr:`lock`."""
        entity_type = op["type"]
        if entity_type == "person":
            self._apply_person(op)
        elif entity_type == "object":
            self._apply_object(op)
        # "delivery" operations are accepted and ignored.

    def _apply_person(self, op: dict[str, Any]) -> None:
        action = op["action"]
        if action == "merge":
            self._merge(op["primary"], op["secondary"])
            return
        key, value = normalize_person_identifier(op["identifiers"])
        if action == "identify":
            person = self.identify(key, value, op.get("attributes") or {}, op.get("timestamp"))
            relationships = op.get("cio_relationships")
            if person is not None and relationships:
                self._person_relationships(person, relationships, add=True)
        elif action in EVENT_ACTIONS:
            self.event(
                action,
                key,
                value,
                op["name"],
                op.get("id"),
                op.get("timestamp"),
                op.get("attributes") or {},
            )
        elif action == "delete":
            self.delete_person(key, value)
        elif action == "suppress":
            self._suppress(key, value)
        elif action == "unsuppress":
            self._unsuppress(key, value)
        elif action == "add_device":
            person = self._resolve(key, value, create=True)
            if person is not None:
                self._add_device(person, op["device"])
        elif action == "delete_device":
            person = self._resolve(key, value, create=False)
            if person is not None:
                self._delete_device(person, op["device"]["token"])
        elif action in ("add_relationships", "delete_relationships"):
            add = action == "add_relationships"
            person = self._resolve(key, value, create=add)
            if person is not None:
                self._person_relationships(person, op["cio_relationships"], add)

    def _apply_object(self, op: dict[str, Any]) -> None:
        action = op["action"]
        if action in ("identify", "identify_anonymous"):
            obj = self._object(op["identifiers"], create=True)
            if obj is None:
                return
            _merge_attributes(obj.attributes, op.get("attributes") or {})
            relationships = op.get("cio_relationships")
            # Anonymous people are not modelled: identify_anonymous relationships are dropped.
            if action == "identify" and relationships:
                self._object_relationships(obj, relationships, add=True)
        elif action == "delete":
            obj = self._object(op["identifiers"], create=False)
            if obj is not None:
                self._delete_object(obj)
        elif action in ("add_relationships", "delete_relationships"):
            add = action == "add_relationships"
            obj = self._object(op["identifiers"], create=add)
            if obj is not None:
                self._object_relationships(obj, op["cio_relationships"], add)

    # --- App API --------------------------------------------------------------------------

    def add_delivery(self, body: dict[str, Any], queued_at: int) -> str:
        self._delivery_serial += 1
        delivery_id = f"dlv_{self._delivery_prefix}{self._delivery_serial:06d}"
        key, value = normalize_person_identifier(body["identifiers"])
        self._deliveries.append(
            {
                "delivery_id": delivery_id,
                "transactional_message_id": body["transactional_message_id"],
                "to": body.get("to"),
                "identifiers": {key: value},
                "message_data": body.get("message_data"),
                "send_at": body.get("send_at"),
                "queued_at": queued_at,
                "body": body,
            }
        )
        return delivery_id

    # --- inspection (take the lock) -------------------------------------------------------

    def _export_relationships(self) -> list[dict[str, Any]]:
        out = []
        for (serial, type_id, object_id), attributes in self._relationships.items():
            person = self._people[serial]
            out.append(
                {
                    "person": {
                        k: person.identifiers[k] for k in _EXPORT_KEYS if k in person.identifiers
                    },
                    "object_type_id": type_id,
                    "object_id": object_id,
                    "attributes": attributes,
                }
            )
        return out

    def _exported(self, what: str) -> Any:
        if what == "people":
            return [p.export() for p in self._people.values()]
        if what == "events":
            return self._events
        if what == "deliveries":
            return self._deliveries
        if what == "merges":
            return self._merges
        if what == "objects":
            return [o.export() for o in self._objects.values()]
        if what == "relationships":
            return self._export_relationships()
        if what == "suppressions":
            groups = {id(group): group for group in self._suppressed.values()}
            return [{k: g[k] for k in _EXPORT_KEYS if k in g} for g in groups.values()]
        raise KeyError(what)

    def export(self, what: str) -> Any:
        """A deep copy of ``people``, ``events``, ``deliveries``, ``merges``, ``objects``,
        ``relationships`` or ``suppressions``."""
        with self.lock:
            data = orjson.dumps(self._exported(what))
        return orjson.loads(data)

    def export_json(self, *parts: str) -> bytes:
        """JSON of several collections and the counters, taken atomically."""
        with self.lock:
            doc: dict[str, Any] = {part: self._exported(part) for part in parts}
            doc["duplicate_events"] = self.duplicate_events
            doc["ignored_ops"] = self.ignored_ops
            doc["stale_identifies"] = self.stale_identifies
            return orjson.dumps(doc)

    def find_person(self, **identifiers: str | None) -> dict[str, Any] | None:
        given = {k: v for k, v in identifiers.items() if v is not None}
        if not given:
            return None
        with self.lock:
            first_key, first_value = next(iter(given.items()))
            person = self._index[first_key].get(str(first_value))
            if person is None:
                return None
            if any(person.identifiers.get(k) != str(v) for k, v in given.items()):
                return None
            return _copy(person.export())
