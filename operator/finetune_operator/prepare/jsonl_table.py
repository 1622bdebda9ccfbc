"""An alpaca JSONL object as a pyarrow table, one row per line, when the columnar path can
take it; None sends the object the per-line way (see columnar.py for what the table must
prove). Two readers, the first that can take the object wins:

  - plain objects (`plain`: no backslash and no control character but the newlines) are split
    on `"` by pyarrow's CSV reader. Without a backslash every `"` opens or closes a string,
    so a line of string fields splits into `{`, key, `:`, value, `,`, key, ..., `}`. The
    table is taken only if every line has the first line's keys in the same order, every
    piece between the strings is one of those punctuation marks with spaces around it (any
    other value, `null`, a number, a list or an object, would have left something else
    there), and the values are UTF-8 (the CSV reader checks). The value between two quotes
    is then exactly the JSON string, as no escape can be in it. ~40% less CPU than the JSON
    reader, and it checks UTF-8 and the line shape on its way.
  - anything else goes through pyarrow's JSON reader, with the checks in `_parsed`.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.json as pj

from .formats import detect

_LINE_BREAKS = re.compile(rb"\n(?:(?<!}\n)(?<!}\r\n)|(?!\{))")  # a line not `{...}`
_MAX_BLOCK = 2**31 - 1
_CSV_BLOCK = 1 << 22  # a longer line makes the CSV reader refuse: the JSON reader takes it
# What may stand between the strings of a line of string fields (JSON whitespace is only
# spaces here: tabs and carriage returns are control characters, which `plain` excludes).
_OPENING = re.compile(rb" *\{ *")
_COLON = re.compile(rb" *: *")
_COMMA = re.compile(rb" *, *")
_CLOSING = re.compile(rb" *\} *")


def table_of(data: bytes, wanted: str, plain: bool) -> pa.Table | None:
    """The object as a table, one row per line, or None."""
    if not data.startswith(b"{") or len(data) >= _MAX_BLOCK:
        return None
    first = data.find(b"\n")
    try:
        head = orjson.loads(data[:first] if first >= 0 else data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(head, dict) or (wanted == "auto" and detect(head) != "alpaca") or \
            wanted not in ("auto", "alpaca"):
        return None
    table = _split_on_quotes(data, head) if plain else None
    return table if table is not None else _parsed(data)


def _split_on_quotes(data: bytes, head: dict[str, Any]) -> pa.Table | None:
    """A plain object whose lines all have the first line's string fields, or None."""
    names = list(head)
    if not names or any(type(v) is not str for v in head.values()):
        return None
    pieces = [f"p{i}" for i in range(4 * len(names) + 1)]  # { k : v , k : v }
    values = pieces[3::4]
    types = {p: pa.binary() for p in pieces}
    types.update({p: pa.string() for p in values})  # the reader checks their UTF-8
    try:
        table = pcsv.read_csv(
            pa.BufferReader(data),
            read_options=pcsv.ReadOptions(use_threads=False, block_size=_CSV_BLOCK,
                                          column_names=pieces),
            parse_options=pcsv.ParseOptions(delimiter='"', quote_char=False, escape_char=False,
                                            newlines_in_values=False, ignore_empty_lines=False),
            convert_options=pcsv.ConvertOptions(column_types=types, strings_can_be_null=False,
                                                check_utf8=True))
    except (pa.ArrowException, ValueError):  # a line with another number of strings, bad UTF-8
        return None
    # An empty line reads as a row of empty pieces: the opening check refuses it.
    marks = [_OPENING] + [None, _COLON, None, _COMMA] * len(names)
    marks[-1] = _CLOSING
    for piece, mark in zip(pieces, marks):
        if mark is None:
            continue
        if not all(mark.fullmatch(v) for v in pc.unique(table.column(piece)).to_pylist()):
            return None
    for name, piece in zip(names, pieces[1::4]):
        if not pc.all(pc.equal(table.column(piece), pa.scalar(name.encode("utf-8")))).as_py():
            return None
    return pa.table([table.column(p) for p in values], names=names)


def _string_ok(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_null(t)


def _parsed(data: bytes) -> pa.Table | None:
    """The object through pyarrow's JSON reader, when its lines are one `{...}` record each
    and every value is of a type orjson reads the same way; else None."""
    end = len(data) - 1 if data.endswith(b"\n") else len(data)
    if not (data[end - 1:end] == b"}" or data[end - 2:end] == b"}\r") or \
            _LINE_BREAKS.search(data, 0, end):
        return None
    bounds = pa.array([0, len(data)], pa.int32()).buffers()[1]
    whole = pa.Array.from_buffers(pa.string(), 1, [None, bounds, pa.py_buffer(data)])
    try:
        whole.validate(full=True)  # UTF-8 (pyarrow's JSON parser does not check it)
    except pa.ArrowInvalid:
        return None
    try:
        table = pj.read_json(pa.BufferReader(data),
                             read_options=pj.ReadOptions(use_threads=False, block_size=len(data) + 1))
    except (pa.ArrowException, ValueError):  # whatever pyarrow refuses goes the per-line way
        return None
    if table.num_rows != data.count(b"\n", 0, end) + 1:
        return None
    for field in table.schema:
        t = field.type
        if pa.types.is_floating(t):  # orjson refuses NaN and Infinity, pyarrow takes them
            if pc.any(pc.invert(pc.is_finite(table.column(field.name)))).as_py():
                return None
        elif not (_string_ok(t) or pa.types.is_boolean(t) or pa.types.is_int64(t)
                  or pa.types.is_timestamp(t)):
            return None
    return table
