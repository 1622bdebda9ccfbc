"""Cleaning: NFC + trim, drops by reason with object:line references, strict mode."""

from __future__ import annotations

import pytest

from finetune_operator.prepare import PrepareError
from finetune_operator.prepare.clean import Cleaner, DropLog, norm, token_counter

U = "user"


def _cleaner(strict: bool = False, **kw) -> Cleaner:
    return Cleaner(DropLog(["s3://b/a.jsonl", "s3://b/b.jsonl"], strict=strict),
                   max_chars=kw.pop("max_chars", 50), **kw)


@pytest.mark.parametrize(("raw", "expected"), [
    ("  hi \n", "hi"),
    ("Cafe\u0301", "Caf\u00e9"),          # combining accent -> one code point (NFC)
    ("\u00a0x\u3000", "x"),               # Unicode spaces are trimmed too
    ("\ufb01", "\ufb01"),                 # NFC, not NFKC: the ligature stays
])
def test_norm(raw: str, expected: str) -> None:
    assert norm(raw) == expected


@pytest.mark.parametrize(("prompt", "output", "reason"), [
    (((U, "q"),), "   ", "empty"),
    (((U, "  "),), "a", "empty"),
    ((("system", "s"), (U, "")), "a", "empty"),
    ((), "", "empty"),
    (((U, "q" * 40),), "a" * 11, "tooLong"),
    ((), "t" * 51, "tooLong"),
])
def test_drops_by_reason(prompt: tuple, output: str, reason: str) -> None:
    c = _cleaner()
    c.add(prompt, output, 0, 7)
    assert c.kept == []
    assert c.log.counts[reason] == 1
    assert c.log.refs[reason] == ["s3://b/a.jsonl:7"]


def test_at_the_length_limit_is_kept() -> None:
    c = _cleaner()
    c.add(((U, "q" * 40),), "a" * 10, 0, 1)
    assert len(c.kept) == 1 and c.kept[0].chars == 50


def test_duplicates_compare_normalized_text_and_keep_the_first() -> None:
    c = _cleaner()
    c.add(((U, "Caf\u00e9?"),), "yes", 0, 1)
    c.add(((U, " Cafe\u0301? "),), "yes\n", 1, 4)
    c.add(((U, "Caf\u00e9?"),), "no", 1, 5)          # same prompt, other answer: kept
    assert [(e.src, e.line) for e in c.kept] == [(0, 1), (1, 5)]
    assert c.log.counts["duplicate"] == 1 and c.log.refs["duplicate"] == ["s3://b/b.jsonl:4"]


def test_keeps_at_most_five_references_per_reason() -> None:
    c = _cleaner()
    for line in range(1, 9):
        c.malformed(0, line, "not valid JSON")
    assert c.log.counts["malformed"] == 8
    assert c.log.refs["malformed"] == [f"s3://b/a.jsonl:{i}" for i in range(1, 6)]


@pytest.mark.parametrize(("feed", "message"), [
    (lambda c: c.malformed(1, 3, "not valid JSON: x"),
     r"strict: s3://b/b.jsonl:3 would be dropped as malformed \(not valid JSON: x\)"),
    (lambda c: (c.add(((U, "q"),), "a", 0, 1), c.add(((U, "q"),), "a", 0, 2)),
     r"strict: s3://b/a.jsonl:2 would be dropped as duplicate \(same as s3://b/a.jsonl:1\)"),
    (lambda c: c.add(((U, "q"),), "", 0, 9), r"strict: s3://b/a.jsonl:9 would be dropped as empty"),
])
def test_strict_turns_the_first_drop_into_an_error(feed, message: str) -> None:
    c = _cleaner(strict=True)
    with pytest.raises(PrepareError, match=message) as err:
        feed(c)
    assert err.value.reason == "Malformed"


def test_token_limit_when_a_tokenizer_is_given() -> None:
    words = lambda s: len(s.split())  # noqa: E731 - a whitespace "tokenizer"
    c = _cleaner(max_chars=10_000, tokenizer=words, max_tokens=5)
    c.add(((U, "one two three"),), "four five", 0, 1)
    c.add(((U, "one two three"),), "four five six", 0, 2)
    assert [e.line for e in c.kept] == [1]
    assert c.log.refs["tooLong"] == ["s3://b/a.jsonl:2"]


def test_token_counter_accepts_encode_objects() -> None:
    class Encoding:
        ids = [1, 2, 3]

    class Tok:
        def encode(self, s: str) -> Encoding:
            return Encoding()

    class HF:
        def encode(self, s: str) -> list[int]:
            return [0] * len(s)

    assert token_counter(Tok())("x") == 3
    assert token_counter(HF())("abcd") == 4
    with pytest.raises(TypeError):
        token_counter(42)


def test_token_limit_with_a_real_tokenizers_tokenizer() -> None:
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({"[UNK]": 0, "ok": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    assert token_counter(tok)("ok ok what") == 3
    c = _cleaner(max_chars=10_000, tokenizer=tok, max_tokens=4)
    c.add(((U, "a b"),), "c d", 0, 1)
    c.add(((U, "a b c"),), "d e", 0, 2)
    assert [e.line for e in c.kept] == [1] and c.log.counts["tooLong"] == 1
