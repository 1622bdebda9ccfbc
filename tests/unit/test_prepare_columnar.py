"""The columnar path: its Unicode tables agree with this Python, and on random alpaca objects
it gives exactly what the per-record path gives (train, validation, manifest, errors)."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from finetune_contract import RunLayout
from finetune_contract.storage import Storage
from finetune_operator.prepare import PrepareError, columnar, jsonl_table, pipeline, prepare_run
from finetune_operator.prepare.clean import norm
from finetune_operator.spec import FineTuneTaskSpec


def test_nfc_table_matches_this_pythons_unicodedata() -> None:
    assert columnar.NFC_RANGES == columnar.nfc_sensitive()


def test_whitespace_is_str_isspace() -> None:
    assert columnar._WHITESPACE == "".join(chr(c) for c in range(0x110000) if chr(c).isspace())


def test_text_without_sensitive_characters_is_already_nfc() -> None:
    sensitive = {cp for a, b in columnar.NFC_RANGES for cp in range(a, b + 1)}
    others = "".join(chr(c) for c in range(0x110000)
                     if c not in sensitive and not 0xD800 <= c <= 0xDFFF)
    assert unicodedata.normalize("NFC", others) == others
    assert unicodedata.normalize("NFC", others[::-1]) == others[::-1]


INTERESTING = list("ab é東\n\t\"\\\x00\x1f\x7f\x85\xa0\u2028\u3000\u0301\uf900\u1161\U0001F600\U0001D15E")
_text = st.one_of(st.text(st.sampled_from(INTERESTING), max_size=12),
                  st.text(st.characters(exclude_categories=("Cs",)), max_size=12),
                  st.sampled_from(["ok", "yes", "no", "q"]))
_record = st.fixed_dictionaries(
    {"instruction": _text, "output": _text},
    optional={"input": st.one_of(_text, st.none()), "system": st.one_of(_text, st.none()),
              "label": st.one_of(st.sampled_from(["x", "y", ""]), st.none())})


def _run(root: Path, data: Path, dataset: dict) -> dict[str, bytes] | str:
    out = root / "out"
    spec = FineTuneTaskSpec.model_validate(
        {"baseModel": {"name": "x"}, "dataset": {"uri": str(data) + "/", "minSamples": 1,
                                                 "minValidationSamples": 1, **dataset},
         "output": {"uri": str(out)}}, context={"allow_local_paths": True})
    layout = RunLayout(root=str(out), namespace="ns", task="t", run_id="r0")
    try:
        prepare_run(spec, layout, Storage())
    except PrepareError as err:
        return str(err)
    folder = Path(layout.manifest).parent
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.pop("createdAt")
    files = {name: (folder / name).read_bytes() for name in ("train.jsonl", "validation.jsonl")}
    for name in files:
        (folder / name).unlink()
    (folder / "manifest.json").unlink()
    return {**files, "manifest": json.dumps(manifest).encode()}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=st.lists(_record, min_size=1, max_size=40), dup=st.integers(0, 5),
       ascii_json=st.booleans(), stratify=st.booleans(), max_chars=st.sampled_from([16, 40, 16000]))
def test_columnar_path_equals_the_per_record_path(tmp_path_factory: pytest.TempPathFactory, records,
                                                  dup, ascii_json, stratify, max_chars) -> None:
    lines = [json.dumps(r, ensure_ascii=ascii_json) for r in records]
    lines += lines[:dup]
    root = tmp_path_factory.mktemp("case")
    (root / "data").mkdir()
    (root / "data" / "a.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    dataset = {"validationFraction": 0.5, "maxChars": max_chars,
               **({"stratifyBy": "label"} if stratify else {})}
    taken: list[bool] = []
    real = pipeline.alpaca_batch

    def spy(*args, **kwargs):
        got = real(*args, **kwargs)
        taken.append(got is not None)
        return got

    pipeline.alpaca_batch = spy
    try:
        fast = _run(root, root / "data", dataset)
        pipeline.alpaca_batch = lambda *a, **k: None
        slow = _run(root, root / "data", dataset)
    finally:
        pipeline.alpaca_batch = real
    assert taken == [True]  # every line is one alpaca record: the columnar path takes it
    assert fast == slow


def test_a_surrogate_escape_or_nan_sends_the_object_the_per_record_way(tmp_path: Path) -> None:
    good = json.dumps({"instruction": "q", "output": "a"})
    for bad in ('{"instruction": "\\ud800", "output": "a"}', '{"instruction": "q2", "output": "a", "x": NaN}'):
        assert jsonl_table.table_of(f"{good}\n{bad}\n".encode(), "auto", False) is None
    assert jsonl_table.table_of(f"{good}\n{good}\n".encode(), "auto", False) is not None


@pytest.mark.parametrize("s", ["a", " a", "a\u3000", "\x1fa", "e\u0301", "\ufb01", "\u2126"])
def test_norm_reference(s: str) -> None:  # what the fast rows rely on: clean text is unchanged
    sensitive = any(a <= ord(c) <= b for c in s for a, b in columnar.NFC_RANGES)
    if not sensitive and s == s.strip():
        assert norm(s) == s


# ---- the quote-split reader (jsonl_table._split_on_quotes) on messy objects ---------------------

_PLAIN_TEXT = st.text(st.sampled_from(list("ab é東 :,{}[]\u3000\u0301\uf900\U0001F600")),
                      max_size=8)
_SEPARATORS = [(", ", ": "), (",", ":"), (" , ", " : "), (",  ", ":")]
_VALUES = st.one_of(_text, st.integers(-5, 5), st.none(), st.booleans(), st.just(1.5),
                    st.just(["x"]), st.just({"k": "v"}))


@st.composite
def _messy_lines(draw, max_size: int) -> list[str]:
    """Lines of an alpaca-ish object: mostly string records with the same keys in json.dumps'
    shapes (what the quote split takes), and now and then a line it must refuse or read
    exactly as orjson does: other values, key order, duplicate or missing keys, blank lines,
    spaces, CRLF, tabs, a non-object, bad UTF-8, a raw control character in a string."""
    keys = ["instruction", "output"] + draw(st.lists(st.sampled_from(["input", "system", "label"]),
                                                     unique=True))
    keys = draw(st.permutations(keys))
    item, key = draw(st.sampled_from(_SEPARATORS))
    ascii_json = draw(st.integers(0, 4)) == 0  # \u escapes: the JSON reader's object
    lines = []
    for _ in range(draw(st.integers(1, max_size))):
        record = {k: draw(_PLAIN_TEXT if draw(st.integers(0, 9)) else _text) for k in keys}
        kind = draw(st.sampled_from(["plain"] * 16 + [
            "value", "order", "dupkey", "missing", "blank", "spaces", "crlf", "tab", "notobject",
            "badutf8", "separators", "rawcontrol"]))
        if kind == "value":
            record[draw(st.sampled_from(keys))] = draw(_VALUES)
        if kind == "order":
            record = dict(reversed(list(record.items())))
        if kind == "missing":
            record.pop(draw(st.sampled_from(keys)))
        seps = (item, key) if kind != "separators" else draw(st.sampled_from(_SEPARATORS))
        line = json.dumps(record, ensure_ascii=ascii_json, separators=seps)
        if kind == "dupkey":
            line = line[:-1] + item + '"instruction"' + key + '"again"}'
        if kind == "blank":
            line = ""
        if kind == "spaces":
            line = " " + line + "  "
        if kind == "crlf":
            line += "\r"
        if kind == "tab":
            line = line.replace(key, key + "\t", 1)
        if kind == "notobject":
            line = json.dumps([record.get("output")])
        if kind == "rawcontrol":  # invalid JSON: a control character inside a string
            line = line[:-1] + item + '"raw"' + key + '"a\x01b"}'
        if kind == "badutf8":
            line = line[:-1] + item + '"bad"' + key + '"\udcff"}'
        lines.append(line)
    return lines


def _plain_object(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=_messy_lines(12))
def test_quote_split_reads_what_the_json_reader_reads(lines) -> None:
    """Whenever the quote split takes a plain object, its table holds exactly what a JSON parser
    reads line by line, and what pyarrow's JSON reader reads when that takes the object too."""
    data = _plain_object(lines)
    try:
        first = json.loads(lines[0])
    except ValueError:
        return
    if not isinstance(first, dict):
        return
    if b"\\" in data or any(b < 0x20 and b != 0x0A for b in data):
        return  # not plain: table_of never asks the quote split
    split = jsonl_table._split_on_quotes(data, first)
    reference = jsonl_table._parsed(data)
    event(f"quote split takes it: {split is not None}")
    if split is None:
        return
    rows = [json.loads(raw) for raw in data.split(b"\n")[:-1]]  # not str.splitlines: U+0085
    assert split.num_rows == len(rows)
    assert split.column_names == list(rows[0])
    for name in split.column_names:
        got = split.column(name).to_pylist()
        assert got == [r[name] for r in rows]
        if reference is not None:  # it refuses lines with spaces around the record
            assert got == reference.column(name).to_pylist()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=_messy_lines(25), dup=st.integers(0, 4),
       max_chars=st.sampled_from([16, 16000]), stratify=st.booleans())
def test_messy_objects_give_the_per_record_paths_output(tmp_path_factory: pytest.TempPathFactory,
                                                        lines, dup, max_chars, stratify) -> None:
    """A mixed, messy object (bad lines, other separators, numbers and nulls, duplicate keys,
    blank lines, CRLF, bad UTF-8) gives the same files, manifest or error either way."""
    root = tmp_path_factory.mktemp("messy")
    (root / "data").mkdir()
    (root / "data" / "a.jsonl").write_bytes(_plain_object(lines + lines[:dup]))
    dataset = {"validationFraction": 0.5, "maxChars": max_chars,
               **({"stratifyBy": "label"} if stratify else {})}
    real = pipeline.alpaca_batch
    try:
        fast = _run(root, root / "data", dataset)
        pipeline.alpaca_batch = lambda *a, **k: None
        slow = _run(root, root / "data", dataset)
    finally:
        pipeline.alpaca_batch = real
    assert fast == slow


@pytest.mark.parametrize("separators", [(", ", ": "), (",", ":")])
def test_quote_split_takes_plain_string_records(separators) -> None:
    """The bench's shape and the compact one go the quote-split way (not the JSON reader's)."""
    rows = [{"instruction": f"q{i} café 東京", "input": "" if i % 2 else "ctx", "output": "a"}
            for i in range(50)]
    data = _plain_object([json.dumps(r, ensure_ascii=False, separators=separators) for r in rows])
    table = jsonl_table._split_on_quotes(data, rows[0])
    assert table is not None and table.to_pylist() == rows
    for bad in (b'{"instruction": "q", "input": 3, "output": "a"}',
                b'{"input": "", "instruction": "q", "output": "a"}',
                b'{"instruction": "q", "input": "", "output": "a", "x": "y"}',
                b'{"instruction": "q", "input": "", "output": "a"}  x', b"",
                b'{"instruction": "q", "input": "\xff", "output": "a"}'):
        assert jsonl_table._split_on_quotes(data + bad + b"\n", rows[0]) is None, bad


def test_prepare_restores_the_default_memory_pool(tmp_path: Path) -> None:
    import pyarrow as pa

    seen: list[str] = []
    real = pipeline.alpaca_batch

    def spy(*args, **kwargs):
        seen.append(pa.default_memory_pool().backend_name)
        return real(*args, **kwargs)

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.jsonl").write_text(
        "\n".join(json.dumps({"instruction": f"q{i}", "output": "a"}) for i in range(4)) + "\n")
    before = pa.default_memory_pool().backend_name
    pipeline.alpaca_batch = spy
    try:
        assert isinstance(_run(tmp_path, tmp_path / "data", {"validationFraction": 0.5}), dict)
    finally:
        pipeline.alpaca_batch = real
    assert pa.default_memory_pool().backend_name == before
    assert seen == ["jemalloc" if "jemalloc" in pa.supported_memory_backends() else before]
