"""Readers: list a dataset URI, check the size cap, and stream raw rows out of each object.

Why rows are streamed: a 256 MiB dataset holds millions of lines; keeping one parsed dict per
line alive would cost gigabytes. Each object is read whole (bounded by the cap, which is
checked from the listed sizes before any download) and its rows are yielded one at a time.
A row that cannot be parsed is yielded as `Unparsable` with its line, so the cleaner counts
it with an `object:line` reference instead of failing the whole dataset.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from finetune_contract.storage import ObjectInfo, Storage
from .errors import PrepareError

DATA_EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet")
_BOM = b"\xef\xbb\xbf"
_SURROGATE = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of non-UTF-8 bytes


@dataclass(frozen=True, slots=True)
class Unparsable:
    """A row that is not a record: the reason goes into strict-mode errors."""

    detail: str


Row = tuple[int, Any]  # (line or row number, dict | Unparsable | other JSON value)


@dataclass
class SourceRows:
    """One object's rows. `columns` is known up front for CSV and parquet (None for JSON)."""

    info: ObjectInfo
    kind: str
    columns: list[str] | None
    rows: Iterator[Row]


def extension(uri: str) -> str:
    lower = uri.lower()
    return next((ext for ext in DATA_EXTENSIONS if lower.endswith(ext)), "")


def list_sources(storage: Storage, uri: str, max_bytes: int) -> list[ObjectInfo]:
    """The data objects at `uri` (sorted), refusing none-found, empty and over-cap datasets.

    Objects under a prefix without a data extension (READMEs, _SUCCESS markers) are ignored;
    a single object named directly must have one.
    """
    listed = storage.list(uri)
    data = [o for o in listed if extension(o.uri)]
    if not listed:
        raise PrepareError("NoData", f"no objects at {uri}")
    if not data:
        if len(listed) == 1 and listed[0].uri.rstrip("/") == uri.rstrip("/"):
            raise PrepareError("BadFormat", f"{uri}: unsupported file type; use one of "
                                            f"{', '.join(DATA_EXTENSIONS)}")
        names = ", ".join(_short(o.uri, uri) for o in listed[:5])
        raise PrepareError("NoData", f"no .jsonl/.json/.csv/.parquet objects under {uri} "
                                     f"({len(listed)} other object(s) ignored: {names})")
    empty = [o.uri for o in data if o.size == 0]
    if empty:
        raise PrepareError("NoData", f"{empty[0]} is empty (0 bytes)")
    total = sum(o.size for o in data)
    if total > max_bytes:
        raise PrepareError("TooLarge", f"dataset {uri} is {total} bytes in {len(data)} object(s), "
                                       f"over the cap of {max_bytes} bytes (spec.dataset.maxBytes)")
    return data


def _short(name: str, base: str) -> str:
    return name[len(base):].lstrip("/") if name.startswith(base) else name


def open_source(storage: Storage, info: ObjectInfo, max_bytes: int) -> SourceRows:
    """Read one object (bounded) and return its rows as a lazy iterator."""
    return source_rows(info, storage.read_bytes(info.uri, max_bytes=max_bytes))


def source_rows(info: ObjectInfo, data: bytes) -> SourceRows:
    """The rows of one object already read."""
    kind = extension(info.uri)
    if kind == ".jsonl":
        return SourceRows(info, kind, None, jsonl_rows(data))
    if kind == ".json":
        return SourceRows(info, kind, None, json_rows(info.uri, data))
    if kind == ".csv":
        columns, rows = csv_rows(info.uri, data)
        return SourceRows(info, kind, columns, rows)
    columns, rows = parquet_rows(info.uri, data)
    return SourceRows(info, kind, columns, rows)


def without_bom(data: bytes) -> bytes:
    return data[len(_BOM):] if data.startswith(_BOM) else data


def jsonl_rows(data: bytes) -> Iterator[Row]:
    """One JSON value per line; blank lines skipped; bad bytes or bad JSON -> Unparsable.

    orjson parses (it also rejects invalid UTF-8 and unpaired surrogates, so every string that
    comes out is valid Unicode); the line is decoded again only to explain a failure.
    """
    if data.startswith(_BOM):
        data = data[len(_BOM):]
    loads, error = orjson.loads, orjson.JSONDecodeError
    for number, raw in enumerate(io.BytesIO(data), 1):
        try:
            yield number, loads(raw)
        except error as err:
            if raw.isspace():
                continue
            yield number, Unparsable(_why(raw, err))


def _why(raw: bytes, err: Exception) -> str:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"not UTF-8 (byte {bad.start + 1} of the line)"
    return f"not valid JSON: {str(err).split(': line ')[0]}"


def _decode_whole(uri: str, data: bytes) -> str:
    if data.startswith(_BOM):
        data = data[len(_BOM):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise PrepareError("BadFormat", f"{uri}:{line}: not UTF-8 text") from None


def json_rows(uri: str, data: bytes) -> Iterator[Row]:
    """A .json object must be a list of records; its rows are numbered from 1."""
    text = _decode_whole(uri, data)
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as err:
        raise PrepareError("BadFormat", f"{uri}:{err.lineno}: not valid JSON: {err.msg}") from None
    if not isinstance(value, list):
        raise PrepareError("BadFormat", f"{uri}: the JSON is {_json_kind(value)}, expected a list of "
                                        "records (or use .jsonl, one record per line)")
    return iter(enumerate(value, 1))


def _json_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool) or value is None:
        return "true/false/null"
    return "a number"


def csv_rows(uri: str, data: bytes) -> tuple[list[str], Iterator[Row]]:
    """CSV with a header row; row references are the line the row starts on."""
    if data.startswith(_BOM):
        data = data[len(_BOM):]
    try:
        text, dirty = data.decode("utf-8"), False
    except UnicodeDecodeError:
        # Keep going: the rows with bad bytes are dropped one by one, the rest are kept.
        text, dirty = data.decode("utf-8", "surrogateescape"), True
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise PrepareError("NoData", f"{uri} has no header row") from None
    except csv.Error as err:
        raise PrepareError("BadFormat", f"{uri}:1: not valid CSV: {err}") from None
    columns = [c.strip() for c in header]
    if dirty and any(_SURROGATE.search(c) for c in columns):
        raise PrepareError("BadFormat", f"{uri}:1: the CSV header is not UTF-8 text")

    def rows() -> Iterator[Row]:
        width = len(columns)
        start = reader.line_num + 1
        while True:
            try:
                values = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                yield start, Unparsable(f"not valid CSV: {err}")
                start = reader.line_num + 1
                continue
            line, start = start, reader.line_num + 1
            if not values or (len(values) == 1 and not values[0].strip() and width > 1):
                continue  # blank line
            if len(values) != width:
                yield line, Unparsable(f"row has {len(values)} fields, the header has {width}")
            elif dirty and any(_SURROGATE.search(v) for v in values):
                yield line, Unparsable("not UTF-8")
            else:
                yield line, dict(zip(columns, values))

    return columns, rows()


def parquet_rows(uri: str, data: bytes) -> tuple[list[str], Iterator[Row]]:
    """Parquet through pyarrow, one record batch at a time; rows are numbered from 1."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError, ValueError) as err:
        raise PrepareError("BadFormat", f"{uri}: not a readable parquet file: {err}") from None

    def rows() -> Iterator[Row]:
        number = 0
        for batch in table.to_batches(max_chunksize=65536):
            for record in batch.to_pylist():
                number += 1
                yield number, record

    return list(table.column_names), rows()
