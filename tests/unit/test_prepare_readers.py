"""Readers: rows out of JSONL, JSON, CSV and parquet bytes, with line references."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from finetune_operator.prepare import PrepareError
from finetune_operator.prepare.readers import (Unparsable, csv_rows, extension, json_rows,
                                               jsonl_rows)


def _kinds(rows: list) -> list:
    return [(n, v.detail.split(" ")[0] if isinstance(v, Unparsable) else v) for n, v in rows]


def test_jsonl_numbers_lines_skips_blanks_and_flags_bad_ones() -> None:
    data = (b'\xef\xbb\xbf{"a": 1}\n\n  \n{"a": 2}\r\n{bad\n{"a": "\xff"}\n[1, 2]\n{"a": "\\udc80"}\n')
    rows = list(jsonl_rows(data))
    assert _kinds(rows) == [(1, {"a": 1}), (4, {"a": 2}), (5, "not"), (6, "not"), (7, [1, 2]),
                            (8, "not")]
    assert rows[2][1].detail.startswith("not valid JSON")
    assert rows[3][1].detail.startswith("not UTF-8")


def test_jsonl_without_final_newline() -> None:
    assert list(jsonl_rows(b'{"a": 1}\n{"a": 2}')) == [(1, {"a": 1}), (2, {"a": 2})]


def test_json_list_rows_are_numbered_from_one() -> None:
    assert list(json_rows("s3://b/x.json", b'[{"a": 1}, 2]')) == [(1, {"a": 1}), (2, 2)]


@pytest.mark.parametrize(("data", "message"), [
    (b'{"instruction": "q", "output": "a"}', "s3://b/x.json: the JSON is an object, expected a list of records"),
    (b'[{"a": 1},\n{"a": ]', "s3://b/x.json:2: not valid JSON"),
    (b'[{"a": "\xff"}]', "s3://b/x.json:1: not UTF-8 text"),
])
def test_json_that_is_not_a_list_of_records(data: bytes, message: str) -> None:
    with pytest.raises(PrepareError, match=message) as err:
        list(json_rows("s3://b/x.json", data))
    assert err.value.reason == "BadFormat"


def test_csv_rows_carry_the_line_they_start_on() -> None:
    data = 'prompt,completion\nP1,C1\n"multi\nline",C2\n\nP3\nP4,"caf\u00e9"\n'.encode()
    columns, rows = csv_rows("x.csv", data)
    assert columns == ["prompt", "completion"]
    assert _kinds(list(rows)) == [(2, {"prompt": "P1", "completion": "C1"}),
                                  (3, {"prompt": "multi\nline", "completion": "C2"}),
                                  (6, "row"), (7, {"prompt": "P4", "completion": "caf\u00e9"})]


def test_csv_with_bad_bytes_drops_only_that_row() -> None:
    _, rows = csv_rows("x.csv", b"text\nok\nbad \xff here\nfine\n")
    assert _kinds(list(rows)) == [(2, {"text": "ok"}), (3, "not"), (4, {"text": "fine"})]


def test_csv_without_a_header_is_no_data() -> None:
    with pytest.raises(PrepareError, match="has no header row"):
        csv_rows("s3://b/x.csv", b"")


def test_parquet_rows() -> None:
    from finetune_operator.prepare.readers import parquet_rows

    buf = io.BytesIO()
    pq.write_table(pa.table({"input": ["a", "b"], "output": ["1", None]}), buf)
    columns, rows = parquet_rows("x.parquet", buf.getvalue())
    assert columns == ["input", "output"]
    assert list(rows) == [(1, {"input": "a", "output": "1"}), (2, {"input": "b", "output": None})]


def test_parquet_that_is_not_parquet() -> None:
    from finetune_operator.prepare.readers import parquet_rows

    with pytest.raises(PrepareError, match="x.parquet: not a readable parquet file"):
        parquet_rows("x.parquet", b"PAR1 nope")


@pytest.mark.parametrize(("name", "ext"), [
    ("s3://b/a.jsonl", ".jsonl"), ("s3://b/A.JSON", ".json"), ("b/c.csv", ".csv"),
    ("d.parquet", ".parquet"), ("README.md", ""), ("x.jsonl.gz", ""),
])
def test_extension(name: str, ext: str) -> None:
    assert extension(name) == ext
