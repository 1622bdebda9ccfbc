"""Byte-identity of prepare_run's output: train.jsonl, validation.jsonl and manifest.json must not
change when the pipeline is made faster (issue 14, item 8).

The golden sha256 values below were computed from the pipeline as it was BEFORE the columnar
fast path (commit 32e63b5), on:
  - 20,000 records from bench/bench_prepare.py's own generator (the bench's data, smaller);
  - an edge-case corpus (bad bytes, bad JSON, BOM, CRLF, blank lines, NFD text, Unicode spaces,
    numbers/null/bool fields, system prompts, shared prompts, labels, too-long records) that
    sends records down every fallback, in every format and reader, with and without stratifyBy;
  - strict mode's one-line errors;
  - objects the columnar path takes (every line one `{...}` record) with text that exercises
    each of its rules, and objects with one line it must refuse (NaN, a duplicate key, two
    records on a line, ...): these corpora were added with the columnar path, and their
    goldens computed by running commit 32e63b5's prepare package on them.
The manifest is compared after replacing its temporary root and createdAt (the only two things
in it that change from run to run, with a fixed run id); everything else must be identical.
Each of these mutations of the columnar path fails this file: skipping the NFC check, the
whitespace check, the JSON escaping, the row-count check or the NaN check, keeping a later
duplicate, one validation record fewer, one newline instead of two before the input.

Local files under tmp_path only: no server, no network.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import random
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from finetune_contract import RunLayout
from finetune_contract.storage import Storage
from finetune_operator.prepare import PrepareError, prepare_run
from finetune_operator.spec import FineTuneTaskSpec

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_prepare.py"


def _bench_generate():
    spec = importlib.util.spec_from_file_location("bench_prepare", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.generate


def run(tmp_path: Path, data: Path, **dataset: object) -> dict[str, str]:
    """prepare_run on local files; sha256 of each output (manifest normalized)."""
    out = tmp_path / "out"
    spec = FineTuneTaskSpec.model_validate(
        {"baseModel": {"name": "x"}, "dataset": {"uri": str(data) + "/", **dataset},
         "output": {"uri": str(out)}}, context={"allow_local_paths": True})
    layout = RunLayout(root=str(out), namespace="ns", task="t", run_id="r0")  # not spec.run_id():
    # that hashes the spec, whose dataset URI holds tmp_path
    prepare_run(spec, layout, Storage())
    folder = Path(layout.manifest).parent
    manifest = (folder / "manifest.json").read_text(encoding="utf-8")
    manifest = re.sub(r'"createdAt": "[^"]*"', '"createdAt": "T"', manifest)
    manifest = manifest.replace(str(tmp_path), "ROOT")
    return {"train": _sha((folder / "train.jsonl").read_bytes()),
            "validation": _sha((folder / "validation.jsonl").read_bytes()),
            "manifest": _sha(manifest.encode("utf-8"))}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- the edge-case corpus ---------------------------------------------------------------------

WORDS = ("ticket printer login café naïve 東京 résumé e\u0301t\u00e9 refund \u00a0 emoji\U0001F600 "
         "tab\there quote\" back\\slash a\u2028b c\u0085d ctl\x01x del\x7fx nul\x00z").split(" ")
SPACES = ("", " ", "  ", "\t", "\n", "\u00a0", "\u3000", "\u2028", "\x1f", "\r\n", "\u200b")


def _words(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def _pad(rng: random.Random, s: str) -> str:
    return rng.choice(SPACES) + s + rng.choice(SPACES)


def _value(rng: random.Random, s: str) -> object:
    """Mostly text; sometimes a number, null, a bool or a list (bad), or padded text."""
    r = rng.random()
    if r < 0.03:
        return rng.choice([2017, 3.5, -0.0, 1e21, 10**19, 0, 7.25])
    if r < 0.05:
        return None
    if r < 0.055:
        return rng.choice([True, [1], {"a": 1}])
    if r < 0.25:
        return _pad(rng, s)
    if r < 0.3:
        return s.upper() if rng.random() < 0.5 else ""
    return s


def alpaca_record(rng: random.Random, i: int, prompts: list[str]) -> dict:
    if prompts and rng.random() < 0.08:
        instruction = rng.choice(prompts)  # a shared prompt, maybe another answer
    else:
        instruction = _words(rng, 1, 12) + f" #{i % 997}"
        prompts.append(instruction)
    rec: dict = {"instruction": _value(rng, instruction), "output": _value(rng, _words(rng, 0, 6))}
    r = rng.random()
    if r < 0.5:
        rec["input"] = _value(rng, _words(rng, 0, 5))
    elif r < 0.55:
        rec["input"] = rng.choice(["  ", "\n", "\u3000", ""])
    if rng.random() < 0.1:
        rec["system"] = _value(rng, rng.choice(["You are helpful.", "  ", "Be brief\u00a0"]))
    if rng.random() < 0.7:
        rec["label"] = rng.choice(["bug", "billing", "account", 3, None])
    if rng.random() < 0.02:
        rec["instruction"] = "x" * rng.randint(150, 400)  # tooLong when maxChars is small
    if rng.random() < 0.02:
        del rec["output" if rng.random() < 0.5 else "instruction"]
    return rec


BAD_LINES = [b"{not json", b'{"instruction": "caf\xe9", "output": "x"}', b"", b"   \t", b"\r",
             b"[1, 2]", b'"a string"', b"42", b"null", b"{}", b'{"instruction": "x"}',
             b'{"instruction": "dup key", "instruction": "second", "output": "y"}',
             b'{"instruction": "lone \\ud800", "output": "x"}',
             b'{"instruction": "pair \\ud83d\\ude00", "output": "x"}',
             b'{"instruction": "big", "output": 123456789012345678901234567890}',
             b'{"instruction": "inf", "output": 1e400}',
             b'{"instruction": "ff\x0c", "output": "x"}',
             b'{"instruction": "raw nel \xc2\x85 and ls \xe2\x80\xa8 inside", "output": "ok"}',
             b'{"instruction": "trailing", "output": "x"} garbage',
             b'{"instruction": "two"} {"output": "x"}',
             b'{"instruction":"compact","output":"z","input":"  in  "}',
             b'  {"instruction": "indented", "output": "x"}  ',
             b'{"instruction": "escaped \\n newline \\t tab \\u00e9", "output": "\\"q\\""}',
             b'{"Instruction": "case", "Output": "x"}',
             b'{"instruction": "nested", "output": {"a": [1, {"b": null}]}}',
             b'{"instruction": "bool", "output": false}',
             b'{"instruction": "null input", "input": null, "output": "x", "system": null}',
             b'{"instruction": 5, "input": 6.0, "output": 7}']


def edge_lines(rng: random.Random, n: int) -> list[bytes]:
    prompts: list[str] = []
    lines = []
    for i in range(n):
        if rng.random() < 0.06:
            lines.append(rng.choice(BAD_LINES))
        else:
            rec = alpaca_record(rng, i, prompts)
            dumped = json.dumps(rec, ensure_ascii=rng.random() < 0.3)
            lines.append(dumped.encode("utf-8", "surrogatepass"))
        if rng.random() < 0.03 and lines:
            lines.append(rng.choice(lines))  # exact duplicate line
    return lines


def write_alpaca_corpus(folder: Path, seed: int = 11, n: int = 3000) -> None:
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    # a.jsonl: BOM, LF, a non-record first line (auto detection must look further), final newline
    a = [b'{"unrelated": 1}', b"{broken"] + edge_lines(rng, n)
    (folder / "a.jsonl").write_bytes(b"\xef\xbb\xbf" + b"\n".join(a) + b"\n")
    # b.jsonl: CRLF and no final newline
    (folder / "b.jsonl").write_bytes(b"\r\n".join(edge_lines(rng, n // 2)))
    # c.jsonl: only valid records, NFD/NFC twins and padded copies of a few prompts
    base = [f"caf\u00e9 {i} r\u00e9sum\u00e9" for i in range(200)]
    recs = []
    for i, p in enumerate(base):
        recs.append({"instruction": p, "output": "ok"})
        recs.append({"instruction": "  " + p.replace("\u00e9", "e\u0301") + "\u3000",
                     "output": "ok" if i % 2 else "other"})
    (folder / "c.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in recs) + "\n",
                                    encoding="utf-8")
    # d.json (a list), e.csv, f.parquet: the other readers, same format
    prompts: list[str] = []
    listed = [alpaca_record(rng, i, prompts) for i in range(300)]
    (folder / "d.json").write_text(json.dumps(listed, ensure_ascii=False), encoding="utf-8")
    rows = [{k: v for k, v in alpaca_record(rng, i, prompts).items() if k != "system"}
            for i in range(300)]
    csv_text = "instruction,input,output,label\n" + "".join(
        ",".join('"' + str(r.get(k, "")).replace('"', '""') + '"' for k in
                 ("instruction", "input", "output", "label")) + "\n" for r in rows)
    (folder / "e.csv").write_bytes(csv_text.encode("utf-8", "surrogatepass") + b'"bad\xff",x,y,z\n')
    texts = [r for r in rows if all(type(r.get(k)) is str for k in ("instruction", "output"))]
    buf = io.BytesIO()
    pq.write_table(pa.table({"instruction": [r["instruction"] for r in texts],
                             "input": [r.get("input") if type(r.get("input")) is str else None
                                       for r in texts],
                             "output": [r["output"] for r in texts],
                             "label": [str(r.get("label")) for r in texts]}), buf)
    (folder / "f.parquet").write_bytes(buf.getvalue())


def write_other_formats(folder: Path, fmt: str, seed: int = 5, n: int = 1500) -> None:
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    prompts: list[str] = []
    lines: list[bytes] = []
    for i in range(n):
        rec = alpaca_record(rng, i, prompts)
        q, a = rec.get("instruction"), rec.get("output")
        if fmt == "chat":
            turns = [{"role": "system", "content": rec["system"]}] if "system" in rec else []
            turns += [{"role": "user", "content": q}]
            if rng.random() < 0.2:
                turns += [{"role": "assistant", "content": "earlier"}, {"role": "user", "content": a}]
            turns += [{"role": rng.choice(["assistant"] * 20 + ["user", "bot"]), "content": a}]
            if rng.random() < 0.02:
                turns = rng.choice([[], "text", [1], [{"role": "assistant", "content": "x"}]])
            out: dict = {"messages": turns}
        elif fmt == "input_output":
            out = {"prompt": q, "completion": a} if i % 2 else {"input": q, "output": a}
            if rng.random() < 0.02:
                out.pop("completion" if i % 2 else "output")
        else:
            out = {"text": _value(rng, _words(rng, 0, 10) + (f" {i % 300}" if i % 3 else ""))}
        if "label" in rec:
            out["label"] = rec["label"]
        lines.append(json.dumps(out, ensure_ascii=rng.random() < 0.3).encode("utf-8", "surrogatepass"))
        if rng.random() < 0.04:
            lines.append(rng.choice(BAD_LINES))
        if rng.random() < 0.03:
            lines.append(rng.choice(lines))
    (folder / "x.jsonl").write_bytes(b"\n".join(lines) + b"\n")


# ---- objects the columnar path takes (every line one `{...}` record) ----------------------------

# Text that is valid JSON in every line but exercises every rule of the columnar path. SAFE:
# what it copies as is (JSON escapes, control characters, U+2028/U+0085 inside a string, which
# str.splitlines would split at, astral and CJK characters). RISKY: what it must hand to
# clean_one (NFD, CJK compatibility ideographs that NFC changes, Hangul jamo that NFC
# composes, a combining mark first, Unicode spaces at either end, empty strings).
SAFE = ["plain", "café", "tab\there", "new\nline", 'quote"d', "back\\slash", "ctl\x01\x1f", "nul\x00",
        "del\x7f", "ls\u2028ps\u2029", "nel\x85", "zw\u200bsp", "emoji\U0001F600", "東京", "\ud55c\uae00",
        "Ω omega"]
RISKY = ["cafe\u0301", "\u0301accent first", "\uf900 compat", "\u1100\u1161 jamo", "e\u0301\u0327 order",
         "Å\u212b ohm\u2126", "\U0001d15e note", "\u00a0nbsp", "ideo\u3000", "\x1cfs", "", " ", "\u3000",
         "\n\t "]


PLAIN = "ticket printer login café naïve 東京 résumé refund please help".split()


def _tricky(rng: random.Random, words: int) -> str:
    parts = [rng.choice(RISKY) if rng.random() < 0.03 else rng.choice(SAFE) if rng.random() < 0.3
             else rng.choice(PLAIN) for _ in range(rng.randint(0, words))]
    text = " ".join(parts)
    return _pad(rng, text) if rng.random() < 0.05 else text


def columnar_lines(rng: random.Random, n: int, *, system: bool, extra_columns: bool,
                   ascii_only_escapes: bool = False) -> list[str]:
    prompts: list[str] = []
    lines: list[str] = []
    for i in range(n):
        if prompts and rng.random() < 0.08:
            instruction = rng.choice(prompts)
        else:
            instruction = " ".join(filter(None, [f"q{i % 613}", _tricky(rng, 8)]))
            prompts.append(instruction)
        rec: dict = {"instruction": instruction if rng.random() > 0.02 else rng.choice(["", " ", "\u3000"]),
                     "output": _tricky(rng, 5) if rng.random() > 0.03 else rng.choice(["", "  "])}
        if rng.random() < 0.04:
            rec["instruction"] = "long " * rng.randint(20, 60)
        r = rng.random()
        if r < 0.5:
            rec["input"] = _tricky(rng, 4)
        elif r < 0.6:
            rec["input"] = None
        elif r < 0.65:
            rec["input"] = rng.choice(["", " ", "\u2028", "\x1f"])
        if system and rng.random() < 0.6:
            rec["system"] = rng.choice(["Be brief.", "", "  ", None, "\u00a0sys", _tricky(rng, 3)])
        if rng.random() < 0.7:
            rec["label"] = rng.choice(["bug", "billing", "", None, "账单"])
        if extra_columns:
            rec["id"] = i
            rec["ok"] = rng.random() < 0.5
            rec["score"] = rng.choice([0.5, 1.25, None])
            rec["when"] = "2024-01-0" + str(1 + i % 9)
        keys = list(rec)
        rng.shuffle(keys)
        lines.append(json.dumps({k: rec[k] for k in keys}, ensure_ascii=ascii_only_escapes or rng.random() < 0.3))
        if rng.random() < 0.05:
            lines.append(rng.choice(lines))  # exact duplicate
    return lines


def write_columnar_corpus(folder: Path, seed: int = 21) -> None:
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    (folder / "p1.jsonl").write_text("\n".join(columnar_lines(rng, 2500, system=True, extra_columns=True))
                                     + "\n", encoding="utf-8")
    # CRLF, no final newline, ASCII-escaped JSON, no input/system columns at all
    plain = [{"instruction": f"question {i} {_tricky(rng, 3)}", "output": _tricky(rng, 3)}
             for i in range(800)]
    plain += plain[:40]  # duplicates across the file
    (folder / "p2.jsonl").write_bytes(b"\r\n".join(json.dumps(r).encode() for r in plain))
    # no backslash anywhere (nothing to escape), a BOM, every record with a system prompt
    clean = [{"system": rng.choice(["You help.", "Sé breve."]), "instruction": f"pregunta {i} café",
              "input": rng.choice(["", "más", "東京"]), "output": rng.choice(["sí", "no", "ok"])}
             for i in range(600)]
    (folder / "p3.jsonl").write_bytes(b"\xef\xbb\xbf" + "\n".join(
        json.dumps(r, ensure_ascii=False) for r in clean).encode("utf-8") + b"\n")
    # the same records as p1 in another order: all of them duplicates of p1's
    again = columnar_lines(random.Random(seed), 2500, system=True, extra_columns=True)
    random.Random(1).shuffle(again)
    (folder / "p4.jsonl").write_text("\n".join(again[:500]) + "\n", encoding="utf-8")


FALLBACK_LINES = [
    '{"instruction": "nan", "output": "x", "score": NaN}',           # pyarrow takes NaN, orjson not
    '{"instruction": "inf", "output": "x", "score": -Infinity}',
    '{"instruction": "dup key", "instruction": "second", "output": "y"}',
    '{"instruction": "two", "output": "a"} {"instruction": "records", "output": "b"}',
    '{"instruction": "nested", "output": "x", "meta": {"a": [1, 2]}}',
    '{"instruction": "number", "output": 3.50}',
    '{"instruction": "null answer", "output": null}',
    '{"instruction": "missing answer"}',
    '{"instruction": "lone \\ud800", "output": "x"}',
    '{"instruction": "big", "output": "x", "n": 123456789012345678901234567890}',
    '{"instruction": "label number", "output": "x", "label": 3}',
    ' {"instruction": "leading space", "output": "x"}',
    '{"instruction": "trailing space", "output": "x"} ',
]


def write_fallback_corpus(folder: Path, seed: int = 23) -> None:
    """Valid-looking objects with one line the columnar path must refuse (whole object)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True)
    for k, bad in enumerate(FALLBACK_LINES):
        lines = columnar_lines(rng, 120, system=k % 2 == 0, extra_columns=False)
        lines.insert(rng.randrange(len(lines)), bad)
        (folder / f"f{k:02d}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    lines = columnar_lines(rng, 120, system=False, extra_columns=False)
    (folder / "f90.jsonl").write_bytes(b"\n".join(l.encode() for l in lines[:60]) + b"\n\n"
                                       + b"\n".join(l.encode() for l in lines[60:]) + b"\n")  # blank line
    (folder / "f91.jsonl").write_bytes("\n".join(lines).encode() + b'\n{"instruction": "caf\xe9", "output": "x"}\n')


COLUMNAR_CASES = {
    "columnar": (write_columnar_corpus, {}),
    "columnar-stratified": (write_columnar_corpus, {"stratifyBy": "label", "validationFraction": 0.3}),
    "columnar-maxchars": (write_columnar_corpus, {"maxChars": 90, "seed": 5}),
    "columnar-fallbacks": (write_fallback_corpus, {}),
    "columnar-fallbacks-stratified": (write_fallback_corpus, {"stratifyBy": "label", "seed": 8}),
}


@pytest.mark.parametrize("case", sorted(COLUMNAR_CASES))
def test_columnar_corpus_is_byte_identical(tmp_path: Path, case: str) -> None:
    write, dataset = COLUMNAR_CASES[case]
    write(tmp_path / "data")
    assert run(tmp_path, tmp_path / "data", **dataset) == GOLDEN[case]


# ---- goldens, from the pipeline before the fast path ------------------------------------------

GOLDEN: dict[str, dict[str, str]] = {
    "bench-20k": {
        "train": "10750e72f9f1270677bb2040ff8552e5ed23788d38fbb2e3700553c89b2bb2cf",
        "validation": "135fbea13098cd84f7f7745a59cb04d603a040482a77fa5f18a9a0abe8824ebc",
        "manifest": "f22ec17fad4229c342e4e9b708942ec8299017d20001884090d9a429de115323",
    },
    "alpaca-edge": {
        "train": "e9552e09e3b707bf5dde01bc3d465dc1b44a3d9091dbc4a9e23ece41b3ae200b",
        "validation": "6c91334f749b1826b8c3bb5c3c37ffaca7ec4dfb51329420d837603b61ceed48",
        "manifest": "2a1a146f7bd3e7893d1134ade092c65e246df3c19ec416442cb4a5ffeec73393",
    },
    "alpaca-edge-format-alpaca": {
        "train": "e9552e09e3b707bf5dde01bc3d465dc1b44a3d9091dbc4a9e23ece41b3ae200b",
        "validation": "6c91334f749b1826b8c3bb5c3c37ffaca7ec4dfb51329420d837603b61ceed48",
        "manifest": "2a1a146f7bd3e7893d1134ade092c65e246df3c19ec416442cb4a5ffeec73393",
    },
    "alpaca-edge-maxchars": {
        "train": "36cc16cfa7b0405355a1f5dd3476fc278f9bc0f7ad47a6966ea8c642ea80969f",
        "validation": "12714d30efe9105e4ad67dbad86b3503c35f946444a2967e5c5ffd6772068573",
        "manifest": "61d5bd25bebb3520376d91a0917f031bf479f7dd64935fc803423d0f2a050c55",
    },
    "alpaca-edge-stratified": {
        "train": "2d96af74be00d7c89dc98883bb776bc61dd686bc763f523131dfa81b8db5cb39",
        "validation": "eff5c130d96be5fa2af1ce5724f7de19cb0f4c2f278004376dc6956f4906260f",
        "manifest": "d327166a6f071804f1c1781ab4f5fd7668d93362b5f5af156dce84454fecbeb3",
    },
    "chat": {
        "train": "32f3e6ad4b72f75f6e2df3e4123ab1e981f065ee576c35b75792f526e5d0eaa0",
        "validation": "696fae103eaf6322be852fa98cf068c5f8b0717786fae9c951271e565b6061d1",
        "manifest": "5951f191f815a049942832974ba503942183e2d6227df9a141499f041a6a5cda",
    },
    "chat-stratified": {
        "train": "235377586ef9234f37215c4a5a65cdc9ce3bb8ee441b6ad9158edc559afb4f12",
        "validation": "f3941fe5fe4748e58261aebc31b8b2b7b629ff13e8a87c4e9259f66cc76f2759",
        "manifest": "934973c6ed6ea59f69ba8f7d4844e993a2cd6bf43fa52fcde2aac5dd93a533e1",
    },
    "completion": {
        "train": "752d18000064863b88552d02ad70e1c7dff774649a4d08f4d88f8f3d5139ee77",
        "validation": "3d4f20eee77e7b3d8b166c0d057c9a6de1088a308e56d6d8a5dbe7a9e4223791",
        "manifest": "9c7038b750245eadd6038b83f0be09407a99ec6cb9602ca640ef42e11baa563a",
    },
    "input_output": {
        "train": "71125eba6dc2cb229dda874f595c059078bbbf27c2f4c6a32c74c98636324ef1",
        "validation": "18a52b75f587a83063a9e7b70c79dd60fac2f8b81a5eca97fae7f7509a37c155",
        "manifest": "56008c1707f5801050970767712c34a0e39db17ddf89a8aeeb3c6bd8f325caa1",
    },
    # computed by running commit 32e63b5's prepare package (the pipeline before the columnar
    # path) on the corpora above, which were added with it
    "columnar": {
        "train": "daa421639a46a056360a5e2e59864aafc81e25adaee4175a6aecdefc4565d157",
        "validation": "e9348c327050c9d1f44bb72703a2dc9f9b22ec195477e85e3eee6ac51ad2955e",
        "manifest": "4b4045ff147f10e42464bd6d106d610128483a02826b883be5e7b81a856a6f46",
    },
    "columnar-fallbacks": {
        "train": "6aed9a4947c877feb40da79f95881c3503ccdfa61fe7ab27e54f7e603cd8ac8a",
        "validation": "f2badfd4f7a6e0c0719453157457f150f406af9175ec0fe22ee6b498e7192115",
        "manifest": "44b2f64563d8648fd3c875f6e23f91ed22a727eb05650d0f58ca919784f6ea59",
    },
    "columnar-fallbacks-stratified": {
        "train": "e74ee317c62274111801117134f190054978d4eb9978e6ef37d4a52b86eeb895",
        "validation": "9a9957549d83885173ecb8d95e3fb472c8f29964572c708b6ddf1e7f0d728f83",
        "manifest": "892ab269228120147b468b1c1f9f2d8c737669bb740b97dc81641f648b060ee5",
    },
    "columnar-maxchars": {
        "train": "0e3c03922cb4c76e827bc17c8d71049bce122757bb878f81a8dc805e3d501cc9",
        "validation": "582983f0c654cbbf9064d0abd6ffc6a058ed78b5065e711fb3a3f2954751bdd8",
        "manifest": "e35059607236553d2b89b7efc9b60268a0e76396ed4a7a4cf7445c9cff5e00a5",
    },
    "columnar-stratified": {
        "train": "96838ce4eeb0a4f3cd344f7f9a0ef47dd4d910222c16aed5dd955ccd0a92e944",
        "validation": "fdc259ccae457b3edd121b403ca73143ff558fc8d164d032b465f8f8928caf06",
        "manifest": "497d1d47cd08cf3a04e50abf62a83aa8cec2ce26cf5f77cf076a8d6f4314c1be",
    },
}

CASES = {
    "alpaca-edge": ("alpaca", {}),
    "alpaca-edge-format-alpaca": ("alpaca", {"format": "alpaca"}),
    "alpaca-edge-stratified": ("alpaca", {"stratifyBy": "label", "seed": 3,
                                          "validationFraction": 0.25}),
    "alpaca-edge-maxchars": ("alpaca", {"maxChars": 120, "seed": 0, "validationFraction": 0.5}),
    "chat": ("chat", {}),
    "chat-stratified": ("chat", {"stratifyBy": "label"}),
    "input_output": ("input_output", {"seed": 9}),
    "completion": ("completion", {"stratifyBy": "label"}),
}


def test_bench_slice_is_byte_identical(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _bench_generate()(data, 20_000)
    assert run(tmp_path, data) == GOLDEN["bench-20k"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_edge_corpus_is_byte_identical(tmp_path: Path, case: str) -> None:
    fmt, dataset = CASES[case]
    data = tmp_path / "data"
    if fmt == "alpaca":
        write_alpaca_corpus(data)
    else:
        write_other_formats(data, fmt)
    assert run(tmp_path, data, **dataset) == GOLDEN[case]


STRICT_ERRORS: dict[str, str] = {
    "alpaca": ("strict: ROOT/data/a.jsonl:1 would be dropped as malformed (missing field "
               "'instruction' (format alpaca)); fix it or set spec.dataset.strict to false"),
    "alpaca-duplicate": ("strict: ROOT/data/c.jsonl:4 would be dropped as duplicate (same as "
                         "ROOT/data/c.jsonl:3); fix it or set spec.dataset.strict to false"),
    "chat": ("strict: ROOT/data/x.jsonl:2 would be dropped as duplicate (same as "
             "ROOT/data/x.jsonl:1); fix it or set spec.dataset.strict to false"),
}


@pytest.mark.parametrize("case", ["alpaca", "alpaca-duplicate", "chat"])
def test_strict_errors_are_unchanged(tmp_path: Path, case: str) -> None:
    data = tmp_path / "data"
    if case.startswith("alpaca"):
        write_alpaca_corpus(data)
        if case == "alpaca-duplicate":  # only the NFD/NFC twins: the first drop is a duplicate
            for path in data.iterdir():
                if path.name != "c.jsonl":
                    path.unlink()
    else:
        write_other_formats(data, case)
    with pytest.raises(PrepareError) as err:
        run(tmp_path, data, strict=True)
    assert str(err.value).replace(str(tmp_path), "ROOT") == STRICT_ERRORS[case]
