"""A dict job's file (dlt's typed-jsonl) read straight into Arrow, its rows made dicts only when
something reads them.

dlt writes each batch of dict rows as one line of typed-jsonl: a JSON list of the rows, a value
of a type JSON lacks written as a text led by a marker character (`dlt.common.json`'s PUA
markers: a timestamp is the marker and its isoformat). Decoding that into a dict per row
(`typed_loadb`) and building Arrow columns back from the dicts took about two thirds of a dict
sync's load step. Here each line is read by Arrow's JSON reader (C++, outside the GIL) with an
explicit schema from the table's columns, its rows one a line: a list's rows are split at
`},{`, and any `},{` that was not between two rows (in a text, in a nested value) breaks the
parse, which then falls back to `typed_loadb`, as does any other line Arrow cannot read.

`JsonlRows` are the rows of one unit. `JsonlRows.batch` gives the Arrow columns the mapping
reads, exactly as `mapper` builds them from the dicts (same types, same values), or None
wherever that is not certain: a column type it does not convert, a text that starts with a
marker (dlt would decode it), a timestamp or date whose text is not the isoformat dlt writes
under its marker, an integer in a double column (the dicts keep an int there), a timestamp
with an offset other than UTC's, or a variant column. Then the dicts are made, and the mapping
goes the way it always went. A row is made a dict, by `typed_loadb` from its own text, only
when it is read (a rejection's payload, a row the row path decides).
"""

from __future__ import annotations

import bisect
import datetime as dt
import io
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import accumulate
from typing import Any, overload

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
from dlt.common.json import PUA_CHARACTER_MAX, PUA_START, custom_pua_encode, json
from dlt.common.storages import FileStorage

from cio_destination.entries import Row

_READ_TYPES = {
    "text": pa.string(),
    "bigint": pa.int64(),
    "double": pa.float64(),
    "bool": pa.bool_(),
    "timestamp": pa.string(),  # the marker and the isoformat, checked and cast per unit
    "date": pa.string(),
}
"""The type Arrow's JSON reader reads each dlt data type it converts as; a column of any other
type is not read (a mapping that wants it gets the dicts)."""

# the markers dlt writes (and reads back) before a timestamp's and a date's text: dlt's own
# encoder's, so DLT_JSON_TYPED_PUA_START moves them here too
_DATETIME_MARKER = str(custom_pua_encode(dt.datetime(2000, 1, 1)))[0]
_DATE_MARKER = str(custom_pua_encode(dt.date(2000, 1, 1)))[0]
_FIRST_DECODED = chr(PUA_START)
_LAST_DECODED = chr(PUA_START + PUA_CHARACTER_MAX)  # dlt tries every marker up to this one
_ISO_TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?"
_TIMESTAMP = f"^{re.escape(_DATETIME_MARKER)}{_ISO_TIME}(\\+00:00)?$"
_DATE = f"^{re.escape(_DATE_MARKER)}\\d{{4}}-\\d\\d-\\d\\d$"
_UTC = "+00:00"


class _Line:
    """One line of the file: its rows' texts one a line and the table Arrow read of them, or
    (where Arrow could not read it) its rows as `typed_loadb` gives them."""

    __slots__ = ("_texts", "body", "ints", "records", "table")

    def __init__(
        self,
        body: bytes,
        table: pa.Table | None,
        records: list[Row] | None,
        ints: frozenset[str] = frozenset(),
    ) -> None:
        self.body = body
        self.table = table
        self.records = records
        self.ints = ints  # double columns an integer was written in (somewhere in the line)
        self._texts: list[bytes] | None = None

    @property
    def rows(self) -> int:
        return len(self.records) if self.records is not None else self.table.num_rows  # type: ignore[union-attr]

    def row(self, index: int, wanted: frozenset[str]) -> Row:
        """Row `index` of the line as dlt's `JsonlFileBatchIterator` gives it."""
        if self.records is not None:
            return self.records[index]
        if self._texts is None:
            self._texts = self.body.split(b"\n")
        return _only(json.typed_loadb(self._texts[index]), wanted)


def _only(record: Row, wanted: frozenset[str]) -> Row:
    """`record` with only the keys in `wanted` (all when empty), copied only if it has others."""
    if wanted and not wanted.issuperset(record):
        return {key: value for key, value in record.items() if key in wanted}
    return record


class JsonlRows(Sequence[Row]):
    """Consecutive rows of a typed-jsonl file: dicts (as dlt's own reader gives them) when
    read, or the Arrow columns of them that the mapping reads (`batch`)."""

    def __init__(self, pieces: list[tuple[_Line, int, int]], wanted: frozenset[str]) -> None:
        self._pieces = pieces  # (line, first row, row after the last) of each line it spans
        self._starts = list(accumulate((stop - start for _, start, stop in pieces), initial=0))
        self._wanted = wanted
        self._rows: list[Row] | None = None
        self._read: dict[int, Row] = {}

    def __len__(self) -> int:
        return self._starts[-1]

    @overload
    def __getitem__(self, index: int) -> Row: ...

    @overload
    def __getitem__(self, index: slice) -> list[Row]: ...

    def __getitem__(self, index: int | slice) -> Row | list[Row]:
        if isinstance(index, slice):
            return self.rows()[index]
        if self._rows is not None:
            return self._rows[index]
        position = index + len(self) if index < 0 else index
        if not 0 <= position < len(self):
            raise IndexError("row index out of range")
        row = self._read.get(position)
        if row is None:
            piece = bisect.bisect_right(self._starts, position) - 1
            line, start, _ = self._pieces[piece]
            row = self._read[position] = line.row(
                start + position - self._starts[piece], self._wanted
            )
        return row

    def __iter__(self) -> Iterator[Row]:
        return iter(self.rows())

    def rows(self) -> list[Row]:
        """Every row as a dict (made once, then kept)."""
        if self._rows is None:
            self._rows = [self[i] for i in range(len(self))]
            self._read = {}
        return self._rows

    def batch(
        self, wanted: Iterable[str | None], columns: Mapping[str, Any], variants: Iterable[str]
    ) -> pa.RecordBatch | None:
        """The `wanted` columns of the rows as the mapper builds them from the dicts
        (`mapper._rows_to_batch`), read from Arrow's table of them; None where that is not
        certain (see the module's docstring)."""
        if not len(self) or any(line.table is None for line, _, _ in self._pieces):
            return None
        if any(variant in columns for variant in variants):
            return None  # the row path reads a variant's values back into their column
        names: list[str] = []
        arrays: list[pa.Array] = []
        for name in dict.fromkeys(n for n in wanted if n is not None):
            if name not in columns:
                continue  # no row has a value for it
            array = self._column(name, columns[name].get("data_type") or "")
            if array is None:
                return None
            names.append(name)
            arrays.append(array)
        return pa.RecordBatch.from_arrays(arrays, names=names)

    def _column(self, name: str, data_type: str) -> pa.Array | None:
        chunks = []
        for line, start, stop in self._pieces:
            table = line.table
            assert table is not None
            if name not in table.column_names or name in line.ints:
                return None
            chunks.extend(table.column(name).slice(start, stop - start).chunks)
        raw = chunks[0] if len(chunks) == 1 else pa.concat_arrays(chunks)
        if raw.null_count == len(raw):
            return pa.nulls(len(raw))  # what Arrow makes of a list of Nones
        return _CONVERT[data_type](raw) if data_type in _CONVERT else raw


def _text(raw: pa.Array) -> pa.Array | None:
    first = pc.utf8_slice_codeunits(raw, 0, 1)
    marked = pc.and_(pc.greater_equal(first, _FIRST_DECODED), pc.less_equal(first, _LAST_DECODED))
    return None if pc.any(marked).as_py() else raw


def _timestamp(raw: pa.Array) -> pa.Array | None:
    if not pc.all(pc.match_substring_regex(raw, _TIMESTAMP)).as_py():
        return None
    aware = pc.sum(pc.ends_with(raw, _UTC)).as_py() or 0
    if aware not in (0, len(raw) - raw.null_count):
        return None  # naive and UTC ones together: the dicts' Arrow type depends on the first
    kind = pa.timestamp("us", tz="UTC" if aware else None)
    return _cast(pc.utf8_slice_codeunits(raw, 1), kind)


def _date(raw: pa.Array) -> pa.Array | None:
    if not pc.all(pc.match_substring_regex(raw, _DATE)).as_py():
        return None
    return _cast(pc.utf8_slice_codeunits(raw, 1), pa.date32())


def _cast(texts: pa.Array, kind: pa.DataType) -> pa.Array | None:
    try:
        return pc.cast(texts, kind)
    except pa.ArrowInvalid:
        return None  # not a date Python reads either: dlt left the text as it was


_CONVERT = {"text": _text, "timestamp": _timestamp, "date": _date}


def arrow_readable(columns: Mapping[str, Any], names: Iterable[str | None]) -> bool:
    """Whether Arrow's reader reads every one of `names` that is a column of `columns` (a name
    that is not: no row has a value for it) as a type `JsonlRows.batch` converts."""
    return all(
        columns[name].get("data_type") in _READ_TYPES
        for name in names
        if name is not None and name in columns
    )


def typed_jsonl_units(
    path: str, unit_rows: int, offset: int, columns: Mapping[str, Any], *, into_arrow: bool = True
) -> Iterator[JsonlRows]:
    """The rows of a typed-jsonl file after the first `offset`, `unit_rows` at a time (the last
    unit fewer), each kept to the keys in `columns` (all when empty), as dlt's
    `JsonlFileBatchIterator` gives them; read a line at a time. Without `into_arrow` (the
    mapping would decline Arrow's read), each line is read as dlt's dicts only, as dlt does."""
    wanted = frozenset(columns)
    options = _parse_options(columns if into_arrow else {})
    doubles = [name for name, column in columns.items() if column.get("data_type") == "double"]
    pieces: list[tuple[_Line, int, int]] = []
    held = 0
    with FileStorage.open_zipsafe_ro(path, "rb") as lines:
        for text in lines:
            line = _read_line(text, options, doubles, wanted)
            start = min(offset, line.rows)
            offset -= start
            while start < line.rows:
                stop = min(line.rows, start + unit_rows - held)
                pieces.append((line, start, stop))
                held += stop - start
                start = stop
                if held == unit_rows:
                    yield JsonlRows(pieces, wanted)
                    pieces, held = [], 0
    if held:
        yield JsonlRows(pieces, wanted)


def _parse_options(columns: Mapping[str, Any]) -> pa_json.ParseOptions:
    fields = [
        pa.field(name, _READ_TYPES[column.get("data_type")])
        for name, column in columns.items()
        if column.get("data_type") in _READ_TYPES
    ]
    return pa_json.ParseOptions(
        explicit_schema=pa.schema(fields), unexpected_field_behavior="ignore"
    )


def _read_line(
    text: bytes, options: pa_json.ParseOptions, doubles: list[str], wanted: frozenset[str]
) -> _Line:
    """One line of the file: Arrow's read of its rows, or where Arrow cannot read them (or
    where the table has no column to read), the rows `typed_loadb` gives."""
    stripped = text.strip()
    # a list's rows one a line; a line that is one row as it is
    body = stripped[1:-1].replace(b"},{", b"}\n{") if stripped.startswith(b"[") else stripped
    table = None
    if body.startswith(b"{") and len(options.explicit_schema):
        try:
            table = pa_json.read_json(
                io.BytesIO(body),
                read_options=pa_json.ReadOptions(use_threads=False, block_size=_block(body)),
                parse_options=options,
            )
        except pa.ArrowInvalid:
            table = None
    if table is None:
        records = json.typed_loadb(text)
        records = [records] if isinstance(records, dict) else records
        return _Line(b"", None, [_only(record, wanted) for record in records])
    return _Line(body, table, None, _ints_in(body, doubles))


def _block(body: bytes) -> int:
    """Arrow's block: the whole line (fewer, larger chunks read faster), within its int32."""
    return min(max(len(body) + 1, 1 << 20), 1 << 30)


def _ints_in(body: bytes, doubles: list[str]) -> frozenset[str]:
    """The double columns of `doubles` some integer of `body` may be the value of: a key
    followed by a number with no fraction and no exponent (the dicts keep such a value an int,
    which Arrow would read as a float). A key's text is dlt's own encoding of it; a key nested
    in another value counts too (a column is declined, never missed)."""
    if not doubles:
        return frozenset()
    found = set()
    data = pa.array([body], pa.binary())
    for name in doubles:
        key = re.escape(json.dumpb(name).decode())
        if pc.any(pc.match_substring_regex(data, key + r"\s*:\s*-?\d+\s*[,}\]]")).as_py():
            found.add(name)
    return frozenset(found)
