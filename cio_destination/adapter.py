"""`customerio_adapter`: declare how a resource's rows map to Customer.io, as table hints."""

from __future__ import annotations

from typing import Any

from dlt.destinations.utils import get_resource_for_adapter
from dlt.extract import DltResource

from cio_destination.mapping import hint_name, parse_mapping
from cio_destination.non_finite import mark_non_finite

__all__ = ["customerio_adapter"]


def customerio_adapter(data: Any, action: str, **mapping: Any) -> DltResource:
    """Declare how a resource's rows map to a Customer.io operation.

    The mapping is checked now (unknown keys or actions raise `MappingError`) and stored as
    `x-customerio-*` hints on the resource's table, so it travels with the schema to the destination.
    The resource also notes NaN and infinity in its dict rows (`mark_non_finite`), which dlt's
    writer would turn into nulls, so their rows are rejected as they are from Arrow.
    Columns are checked against the table when the load starts: one the table does not have
    (dlt leaves out a column that is NULL in every row) is mapped as NULL, with a warning.

    Args:
        data: a dlt resource, a source with one resource, or plain data (wrapped into a resource).
        action: the Customer.io operation, e.g. "identify" or "event".
        **mapping: the mapping keys of the action (the README's "Mapping keys"), e.g.
            identifier, identifier_type, attributes, json_columns, oversized_attribute,
            event_name, event_name_column, event_data_column, event_id, timestamp, clear_nulls.

    Returns:
        The resource, with the hints applied.

    Example:
        >>> customerio_adapter(orders, action="event", identifier="user_id",
        ...                    event_name="purchase_completed", event_id="order_id",
        ...                    timestamp="created_at")
    """
    resource = get_resource_for_adapter(data)
    table = resource.table_name if isinstance(resource.table_name, str) else resource.name
    declared = {"action": action, **mapping}
    parsed = parse_mapping(table, declared)
    hints: dict[str, Any] = {}
    for key in declared:
        value = getattr(parsed, key)
        hints[hint_name(key)] = list(value) if isinstance(value, tuple) else value
    resource.apply_hints(additional_table_hints=hints)
    return mark_non_finite(resource)  # type: ignore[no-any-return]
