"""`rejected_rows(pipeline)`: every row Customer.io or local validation rejected, as a dlt resource."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dlt
from dlt.extract import DltResource

from cio_destination.state import stored_state

__all__ = ["rejected_rows"]


def rejected_rows(
    pipeline: dlt.Pipeline,
    load_id: str | None = None,
    table: str | None = None,
    *,
    table_name: str = "customerio_rejected_rows",
) -> DltResource:
    """A dlt resource yielding the rows of `pipeline` that were rejected, with the reason.

    Each item has `reject_id`, `load_id`, `table`, `action`, `row_key`, `reason`, `field`,
    `message`, `rejected_at` and `row` (the row as it arrived, as a JSON object). Load it into any
    dlt destination (it merges on `reject_id`, so loading it again adds no duplicates), or iterate
    it in Python: `list(rejected_rows(pipeline))`.

    Args:
        pipeline: the pipeline that loaded to the `customerio` destination.
        load_id: only rejections of this load.
        table: only rejections of this source table.
        table_name: the name of the resource and of the table it loads into.
    """

    def _rows() -> Iterator[dict[str, Any]]:
        state = stored_state(pipeline)
        if state is not None:
            yield from state.rejects.rows(load_id=load_id, table=table)

    return dlt.resource(
        _rows,
        name=table_name,
        write_disposition="merge",
        primary_key="reject_id",
        max_table_nesting=0,
        columns={"row": {"data_type": "json"}},
    )
