"""The columnar path: its Unicode tables agree with this Python, and on random alpaca objects
it gives exactly what the per-record path gives (train, validation, manifest, errors)."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finetune_contract import RunLayout
from finetune_contract.storage import Storage
from finetune_operator.prepare import PrepareError, columnar, pipeline, prepare_run
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
        assert columnar._table(f"{good}\n{bad}\n".encode(), "auto") is None
    assert columnar._table(f"{good}\n{good}\n".encode(), "auto") is not None


@pytest.mark.parametrize("s", ["a", " a", "a\u3000", "\x1fa", "e\u0301", "\ufb01", "\u2126"])
def test_norm_reference(s: str) -> None:  # what the fast rows rely on: clean text is unchanged
    sensitive = any(a <= ord(c) <= b for c in s for a, b in columnar.NFC_RANGES)
    if not sensitive and s == s.strip():
        assert norm(s) == s
