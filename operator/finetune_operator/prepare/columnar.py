"""The columnar path: a JSONL object of alpaca records -> a `Batch`, with pyarrow compute.

Why two paths: the per-line path (readers -> formats -> clean) costs ~10 µs per record in
Python; this one reads the object into columns with pyarrow and cleans whole columns at once.
Its output must be byte-identical to the per-line path's, so it only takes what it can prove:

  - the object as a whole (jsonl_table.py): line i is row i (no blank lines, no record over
    two lines or two records on one), the bytes are UTF-8, every value is read as orjson
    reads it, instruction and output are strings on every row (so missing and null never
    matter), and the first record's keys make it an alpaca object. One pass over the bytes
    (`_NOT_SCANNED`) finds backslashes, control characters and NFC candidates; an object
    with none of the first two is split on its quotes, any other through pyarrow's JSON
    reader. Anything else: `None`, and the object goes the per-line way.
  - each record: NFC and trimming leave a string unchanged unless it holds one of the
    characters NFC can change or combine (`_NFC_RANGES`, from Python's own unicodedata) or
    starts or ends with whitespace (str.isspace). Records with such a string, or an empty
    instruction, are cleaned one by one by clean.clean_one: the same code the per-line path
    runs. For the others, the prompt is the instruction (+ a blank line + the input) as is.
  - serialization: a JSON string needs escaping only for `"`, `\\` and control characters,
    which a decoded string can only hold if the line had a backslash escape; those strings
    are escaped by json's own encoder (serialize.py's), the rest are copied as they are.
"""

from __future__ import annotations

import array
import bisect
import hashlib
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .clean import DropLog, clean_one
from .formats import Example, alpaca
from .jsonl_table import table_of
from .serialize import line as serialize_line
from .split import prompt_key

# Code points whose presence can make unicodedata.normalize("NFC", s) differ from s: a
# non-zero combining class, not NFC on their own (NFC_QC=No), or the second character of a
# canonical composition (NFC_QC=Maybe, Hangul vowels and trailing consonants included).
# Generated from Python's unicodedata (nfc_sensitive() below; a unit test checks they agree);
# on a Python with another Unicode version they are computed at import instead.
_UNIDATA_VERSION = "14.0.0"
_NFC_RANGES = (
    "300-34e,350-36f,374,37e,387,483-487,591-5bd,5bf,5c1-5c2,5c4-5c5,5c7,610-61a,64b-65f,670,6d6-6d"
    "c,6df-6e4,6e7-6e8,6ea-6ed,711,730-74a,7eb-7f3,7fd,816-819,81b-823,825-827,829-82d,859-85b,898-"
    "89f,8ca-8e1,8e3-8ff,93c,94d,951-954,958-95f,9bc,9be,9cd,9d7,9dc-9dd,9df,9fe,a33,a36,a3c,a4d,a5"
    "9-a5b,a5e,abc,acd,b3c,b3e,b4d,b56-b57,b5c-b5d,bbe,bcd,bd7,c3c,c4d,c55-c56,cbc,cc2,ccd,cd5-cd6,"
    "d3b-d3c,d3e,d4d,d57,dca,dcf,ddf,e38-e3a,e48-e4b,eb8-eba,ec8-ecb,f18-f19,f35,f37,f39,f43,f4d,f5"
    "2,f57,f5c,f69,f71-f76,f78,f7a-f7d,f80-f84,f86-f87,f93,f9d,fa2,fa7,fac,fb9,fc6,102e,1037,1039-1"
    "03a,108d,1161-1175,11a8-11c2,135d-135f,1714-1715,1734,17d2,17dd,18a9,1939-193b,1a17-1a18,1a60,"
    "1a75-1a7c,1a7f,1ab0-1abd,1abf-1ace,1b34-1b35,1b44,1b6b-1b73,1baa-1bab,1be6,1bf2-1bf3,1c37,1cd0"
    "-1cd2,1cd4-1ce0,1ce2-1ce8,1ced,1cf4,1cf8-1cf9,1dc0-1dff,1f71,1f73,1f75,1f77,1f79,1f7b,1f7d,1fb"
    "b,1fbe,1fc9,1fcb,1fd3,1fdb,1fe3,1feb,1fee-1fef,1ff9,1ffb,1ffd,2000-2001,20d0-20dc,20e1,20e5-20"
    "f0,2126,212a-212b,2329-232a,2adc,2cef-2cf1,2d7f,2de0-2dff,302a-302f,3099-309a,a66f,a674-a67d,a"
    "69e-a69f,a6f0-a6f1,a806,a82c,a8c4,a8e0-a8f1,a92b-a92d,a953,a9b3,a9c0,aab0,aab2-aab4,aab7-aab8,"
    "aabe-aabf,aac1,aaf6,abed,f900-fa0d,fa10,fa12,fa15-fa1e,fa20,fa22,fa25-fa26,fa2a-fa6d,fa70-fad9"
    ",fb1d-fb1f,fb2a-fb36,fb38-fb3c,fb3e,fb40-fb41,fb43-fb44,fb46-fb4e,fe20-fe2f,101fd,102e0,10376-"
    "1037a,10a0d,10a0f,10a38-10a3a,10a3f,10ae5-10ae6,10d24-10d27,10eab-10eac,10f46-10f50,10f82-10f8"
    "5,11046,11070,1107f,110b9-110ba,11100-11102,11127,11133-11134,11173,111c0,111ca,11235-11236,11"
    "2e9-112ea,1133b-1133c,1133e,1134d,11357,11366-1136c,11370-11374,11442,11446,1145e,114b0,114ba,"
    "114bd,114c2-114c3,115af,115bf-115c0,1163f,116b6-116b7,1172b,11839-1183a,11930,1193d-1193e,1194"
    "3,119e0,11a34,11a47,11a99,11c3f,11d42,11d44-11d45,11d97,16af0-16af4,16b30-16b36,16ff0-16ff1,1b"
    "c9e,1d15e-1d169,1d16d-1d172,1d17b-1d182,1d185-1d18b,1d1aa-1d1ad,1d1bb-1d1c0,1d242-1d244,1e000-"
    "1e006,1e008-1e018,1e01b-1e021,1e023-1e024,1e026-1e02a,1e130-1e136,1e2ae,1e2ec-1e2ef,1e8d0-1e8d"
    "6,1e944-1e94a,2f800-2fa1d")
# str.isspace() / str.strip()'s whitespace (the same in every Unicode version Python has had).
_WHITESPACE = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004"
               "\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")


def nfc_sensitive() -> list[tuple[int, int]]:
    """The ranges of _NFC_RANGES, computed from this Python's unicodedata (~0.4 s)."""
    found: set[int] = set()
    for cp in range(0x110000):
        ch = chr(cp)
        if unicodedata.combining(ch) or unicodedata.normalize("NFC", ch) != ch:
            found.add(cp)
        decomposition = unicodedata.decomposition(ch)
        if decomposition and not decomposition.startswith("<"):
            parts = decomposition.split()
            if len(parts) == 2 and unicodedata.normalize("NFC", ch) == ch:
                found.add(int(parts[1], 16))  # the second of a primary composite
    found.update(range(0x1161, 0x1176))  # Hangul vowels and trailing consonants compose
    found.update(range(0x11A8, 0x11C3))  # algorithmically (not in the decomposition data)
    ranges: list[list[int]] = []
    for cp in sorted(found):
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    return [(a, b) for a, b in ranges]


def _parse_ranges(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out.append((int(a, 16), int(b or a, 16)))
    return out


def _lead_keys(ranges: list[tuple[int, int]]) -> pa.Array:
    """The UTF-8 form of every sensitive code point as (byte 1 << 16 | byte 2 << 8 | byte 3),
    byte 3 as 0 for 2-byte characters: exact for the BMP, a block of 64 code points for the
    astral planes (conservative)."""
    keys = set()
    for a, b in ranges:
        for cp in range(a, b + 1):
            raw = chr(cp).encode("utf-8", "surrogatepass") + b"\0"
            keys.add(raw[0] << 16 | raw[1] << 8 | raw[2])
    return pa.array(sorted(keys), pa.uint32())


NFC_RANGES = (_parse_ranges("".join(_NFC_RANGES)) if unicodedata.unidata_version == _UNIDATA_VERSION
              else nfc_sensitive())
_NFC_KEYS = _lead_keys(NFC_RANGES)
# All bytes but the first bytes of UTF-8 sequences that may encode a sensitive code point
# (bytes.translate deletes these: what is left are candidates; all are >= U+0300).
_NFC_LEADS = {k >> 16 for k in _NFC_KEYS.to_pylist()}
_NOT_NFC_LEADS = bytes(sorted(set(range(256)) - _NFC_LEADS))
# One pass over an object keeps only the bytes that matter below: control characters but the
# newline, backslashes (a JSON escape) and NFC leads; usually nothing is left.
_CONTROLS = set(range(0x20)) - {0x0A}
_NOT_SCANNED = bytes(sorted(set(range(256)) - _NFC_LEADS - _CONTROLS - {0x5C}))
_NOT_CONTROLS = bytes(sorted(set(range(256)) - _CONTROLS))
_NFC_MIN_LEAD = pa.scalar(0xCC, pa.uint8())  # U+0300, the smallest sensitive code point, is CC 80
_THREE_BYTES = pa.scalar(0xE0, pa.uint32())
_ZERO = pa.scalar(0, pa.uint8())
_NEEDS_ESCAPE = r'[\x00-\x1f"\\]'  # what json's encoder escapes (ensure_ascii=False)

# serialize.line's shapes, cut where the strings go
_OPEN = '{"messages": [{"content": "'
_SYSTEM_TO_USER = '", "role": "system"}, {"content": "'
_USER_TO_ANSWER = '", "role": "user"}, {"content": "'
_CLOSE = '", "role": "assistant"}]}\n'


@dataclass
class Batch:
    """Kept records of one object (or of several, for the per-line path), in reading order.

    The cleaned records as the rest of the pipeline needs them: the output line of each, the
    sha256 of its (seed, prompt) for the split, the answer and total lengths, the stratum,
    and its `object:line` reference. Duplicates are not removed yet (the pipeline does that
    once, over all objects).
    """

    src: list[int] | int  # one source for all, or one per record
    lines: pa.Array | None  # int64: the line (row) number of each record; None: 1, 2, 3, ...
    text: pa.Array  # large_binary: the JSONL line of each record, with its newline
    digests: bytes  # 32 bytes per record: sha256(f"{seed}\0{prompt_key}")
    output_chars: pa.Array  # int64
    total_chars: pa.Array  # int64
    strata: list[str | None] | None
    outputs: Callable[[list[int]], list[str]]  # the cleaned answers of some records

    def __len__(self) -> int:
        return len(self.text)

    def line(self, i: int) -> int:
        return i + 1 if self.lines is None else self.lines[i].as_py()


def arange(n: int, start: int = 0) -> pa.Array:
    """start, start + 1, ... as an int64 array (pyarrow has no arange)."""
    values = array.array("q", range(start, start + n))
    return pa.Array.from_buffers(pa.int64(), n, [None, pa.py_buffer(values)])


def mask(n: int, positions: list[int]) -> pa.Array:
    """A boolean array of n, true at `positions`."""
    marks = bytearray(n)
    for p in positions:
        marks[p] = 1
    return pc.not_equal(pa.Array.from_buffers(pa.uint8(), n, [None, pa.py_buffer(marks)]), _ZERO)


def digests_of(keys: list[bytes]) -> bytes:
    sha = hashlib.sha256
    return b"".join([sha(k).digest() for k in keys])


def batch_from_examples(kept: list[Example], output_chars: list[int], total_chars: list[int],
                        seed: int) -> Batch:
    """A Batch from the per-line path's records."""
    prefix = f"{seed}\x00"
    keys = [(prefix + prompt_key(ex)).encode("utf-8") for ex in kept]
    text = pa.array([(serialize_line(ex) + "\n").encode("utf-8") for ex in kept], pa.large_binary())
    return Batch(src=[ex.src for ex in kept], lines=pa.array([ex.line for ex in kept], pa.int64()),
                 text=text, digests=digests_of(keys), output_chars=pa.array(output_chars, pa.int64()),
                 total_chars=pa.array(total_chars, pa.int64()), strata=[ex.stratum for ex in kept],
                 outputs=lambda idx: [kept[i].output for i in idx])


# ---- the object -------------------------------------------------------------------------------


def _column(table: pa.Table, name: str, required: bool) -> pa.Array | None:
    if name not in table.column_names:
        return None if not required else pa.nulls(table.num_rows, pa.string())
    chunked = table.column(name)
    column = chunked.chunk(0) if chunked.num_chunks == 1 else chunked.combine_chunks()
    if pa.types.is_null(column.type):
        column = pa.nulls(len(column), pa.string())
    return column


def _ends_with_space(column: pa.Array) -> pa.Array:
    """True where the string starts or ends with whitespace (null: false)."""
    trimmed = pc.utf8_trim(column, _WHITESPACE)
    return pc.fill_null(pc.not_equal(pc.binary_length(trimmed), pc.binary_length(column)), False)


def _nfc_rows(column: pa.Array) -> list[int]:
    """Rows holding an NFC-sensitive character (or an astral one near one; usually none)."""
    if column.null_count == len(column) or len(column) == 0:
        return []
    _, offsets_buf, data_buf = column.buffers()
    offsets = pa.Array.from_buffers(pa.int32(), len(column) + 1, [None, offsets_buf],
                                    offset=column.offset)
    start, stop = offsets[0].as_py(), offsets[-1].as_py()
    if data_buf is None or stop == start:
        return []
    u8 = pa.Array.from_buffers(pa.uint8(), stop - start, [None, data_buf], offset=start)
    pos = pc.indices_nonzero(pc.greater_equal(u8, _NFC_MIN_LEAD))
    if len(pos) == 0:
        return []
    last = len(u8) - 1
    lead = pc.cast(pc.take(u8, pos), pa.uint32())
    second = pc.cast(pc.take(u8, pc.min_element_wise(pc.add(pos, 1), last)), pa.uint32())
    third = pc.cast(pc.take(u8, pc.min_element_wise(pc.add(pos, 2), last)), pa.uint32())
    third = pc.if_else(pc.greater_equal(lead, _THREE_BYTES), third, pa.scalar(0, pa.uint32()))
    keys = pc.add(pc.add(pc.shift_left(lead, 16), pc.shift_left(second, 8)), third)
    hits = pc.filter(pos, pc.is_in(keys, value_set=_NFC_KEYS)).to_pylist()
    if not hits:
        return []
    bounds = offsets.to_pylist()
    return sorted({bisect.bisect_right(bounds, start + p) - 1 for p in hits})


def _escaped(column: pa.Array, escapes: bool) -> pa.Array:
    """json's encode_basestring of each string (most need none: copied as they are)."""
    if not escapes:
        return column
    needs = pc.fill_null(pc.match_substring_regex(column, _NEEDS_ESCAPE), False)
    rows = pc.indices_nonzero(needs)
    if len(rows) == 0:
        return column
    values = [encode_basestring(s)[1:-1] for s in pc.take(column, rows).to_pylist()]
    return pc.replace_with_mask(column, needs, pa.array(values, pa.string()))


def alpaca_batch(data: bytes, wanted: str, *, src: int, log: DropLog, max_chars: int, seed: int,
                 stratify_by: str | None) -> tuple[Batch, int] | None:
    """The kept records of one alpaca JSONL object and its row count, drops noted in `log`;
    None when the object must go the per-line way (nothing is noted then)."""
    scanned = data.translate(None, _NOT_SCANNED)
    escapes = b"\\" in scanned
    plain = not escapes and not scanned.translate(None, _NOT_CONTROLS)
    table = table_of(data, wanted, plain)
    if table is None:
        return None
    n = table.num_rows
    instruction = _column(table, "instruction", True)
    output = _column(table, "output", True)
    extra = _column(table, "input", False)
    system = _column(table, "system", False)
    stratum = _column(table, stratify_by, False) if stratify_by else None
    if not (pa.types.is_string(instruction.type) and pa.types.is_string(output.type)) or \
            instruction.null_count or output.null_count:
        return None
    if any(c is not None and not pa.types.is_string(c.type) for c in (extra, system, stratum)):
        return None
    del table

    # Rows the vectorised rules cannot vouch for go through clean_one.
    # One pass over the raw bytes usually shows that no string can hold an NFC-sensitive
    # character (a \\u escape could spell one: then each column is checked).
    nfc = escapes or len(scanned.translate(None, _NOT_NFC_LEADS)) > 0
    nfc_rows = _nfc_rows if nfc else (lambda column: [])
    slow = pc.or_(_ends_with_space(instruction), pc.equal(instruction, ""))
    slow = pc.or_(slow, _ends_with_space(output))
    odd: set[int] = set(nfc_rows(instruction)) | set(nfc_rows(output))
    has_extra = has_system = None
    if extra is not None:
        has_extra = pc.fill_null(pc.not_equal(extra, ""), False)
        slow = pc.or_(slow, _ends_with_space(extra))
        odd |= set(nfc_rows(extra))
    if system is not None:
        has_system = pc.fill_null(pc.not_equal(system, ""), False)
        slow = pc.or_(slow, _ends_with_space(system))
        odd |= set(nfc_rows(system))
    if odd:
        slow = pc.or_(slow, mask(n, list(odd)))
    slow_rows = pc.indices_nonzero(slow).to_pylist()

    # Lengths (code points) of the cleaned record; the fast rows' strings are already clean.
    def length(column: pa.Array) -> pa.Array:
        return pc.cast(pc.utf8_length(column), pa.int64())

    olen = length(output)
    chars = pc.add(olen, length(instruction))
    if extra is not None:  # "\n\n" + input
        chars = pc.add(chars, pc.if_else(has_extra, pc.add(length(extra), 2), 0))
    if system is not None:
        chars = pc.add(chars, pc.if_else(has_system, length(system), 0))
    empty = pc.equal(output, "")
    too_long = pc.and_(pc.invert(empty), pc.greater(chars, max_chars))

    # The slow rows, one by one, exactly as the per-line path cleans them.
    slow_text: list[bytes] = []
    slow_keys: list[bytes] = []
    slow_out: dict[int, str] = {}
    slow_olen: list[int] = []
    slow_chars: list[int] = []
    slow_empty: list[bool] = []
    slow_long: list[bool] = []
    prefix = f"{seed}\x00"
    if slow_rows:
        idx = pa.array(slow_rows, pa.int64())
        cols = {"instruction": pc.take(instruction, idx).to_pylist(),
                "output": pc.take(output, idx).to_pylist()}
        if extra is not None:
            cols["input"] = pc.take(extra, idx).to_pylist()
        if system is not None:
            cols["system"] = pc.take(system, idx).to_pylist()
        for k, row in enumerate(slow_rows):
            rec = {name: values[k] for name, values in cols.items() if values[k] is not None}
            prompt, answer = alpaca(rec)
            reason, _, prompt, answer, o, c = clean_one(prompt, answer, max_chars)
            slow_empty.append(reason == "empty")
            slow_long.append(reason == "tooLong")
            slow_olen.append(o)
            slow_chars.append(c)
            ex = Example(prompt, answer, src, row + 1)
            slow_text.append((serialize_line(ex) + "\n").encode("utf-8"))
            slow_keys.append((prefix + prompt_key(ex)).encode("utf-8"))
            slow_out[row] = answer
        marks = mask(n, slow_rows)
        empty = pc.replace_with_mask(empty, marks, pa.array(slow_empty))
        too_long = pc.replace_with_mask(too_long, marks, pa.array(slow_long))
        olen = pc.replace_with_mask(olen, marks, pa.array(slow_olen, pa.int64()))
        chars = pc.replace_with_mask(chars, marks, pa.array(slow_chars, pa.int64()))

    dropped = pc.or_(empty, too_long)
    all_kept = not pc.any(dropped).as_py()
    line_numbers = None if all_kept else arange(n, 1)
    if line_numbers is not None:
        log.note_lines("empty", src, pc.filter(line_numbers, empty).to_pylist())
        log.note_lines("tooLong", src, pc.filter(line_numbers, too_long).to_pylist())
    keep = pc.invert(dropped)

    # Lines and prompt keys of all rows (the slow rows' are replaced below), then the kept.
    del data
    middle_raw: Any = ""
    middle: Any = ""
    extra_text: Any = ""
    extra_raw: Any = ""
    if extra is not None:
        middle_raw = pc.if_else(has_extra, "\n\n", "")
        middle = pc.if_else(has_extra, "\\n\\n", "")
        extra_raw = pc.fill_null(extra, "")
        extra_text = _escaped(extra_raw, escapes)
    head: Any = _OPEN
    key_head: Any = prefix + "user\x1f"
    if system is not None and pc.any(has_system).as_py():
        sys_raw = pc.fill_null(system, "")
        head = pc.if_else(has_system, pc.binary_join_element_wise(
            _OPEN, _escaped(sys_raw, escapes), _SYSTEM_TO_USER, ""), _OPEN)
        key_head = pc.if_else(has_system, pc.binary_join_element_wise(
            prefix + "system\x1f", sys_raw, "\x1euser\x1f", ""), key_head)
    text = pc.binary_join_element_wise(head, _escaped(instruction, escapes), middle, extra_text,
                                       _USER_TO_ANSWER, _escaped(output, escapes), _CLOSE, "")
    keys = pc.binary_join_element_wise(key_head, instruction, middle_raw, extra_raw, "")
    if slow_rows:  # their lines and keys come from clean_one's records: pick them from the end
        text = pa.concat_arrays([text.cast(pa.large_binary()), pa.array(slow_text, pa.large_binary())])
        keys = pa.concat_arrays([keys.cast(pa.large_binary()), pa.array(slow_keys, pa.large_binary())])
        pick = pc.replace_with_mask(arange(n), mask(n, slow_rows), arange(len(slow_rows), n))
        if not all_kept:
            pick = pc.filter(pick, keep)
        text, keys = pc.take(text, pick), pc.take(keys, pick)
    elif not all_kept:
        text, keys = pc.filter(text, keep), pc.filter(keys, keep)
    kept_text = text.cast(pa.large_binary())
    kept_keys = keys.cast(pa.binary()).to_pylist()
    del text, keys
    kept_lines = None if line_numbers is None else pc.filter(line_numbers, keep)
    strata = None
    if stratify_by:
        strata = [s or "" for s in (stratum if all_kept else pc.filter(stratum, keep)).to_pylist()] \
            if stratum is not None else [""] * len(kept_text)
    if not all_kept:
        olen, chars = pc.filter(olen, keep), pc.filter(chars, keep)

    def outputs(idx: list[int]) -> list[str]:
        out = []
        for i in idx:
            row = i if kept_lines is None else kept_lines[i].as_py() - 1
            out.append(slow_out[row] if row in slow_out else output[row].as_py())
        return out

    batch = Batch(src=src, lines=kept_lines, text=kept_text, digests=digests_of(kept_keys),
                  output_chars=olen, total_chars=chars, strata=strata, outputs=outputs)
    return batch, n
