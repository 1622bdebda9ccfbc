"""Cleaning: Unicode NFC, trim, and drop records by reason, keeping a few references to each.

Why every drop is counted with `object:line` references: with ~100 samples per task, one lost
line matters, and users must be able to find it. Reasons (contract.DROP_REASONS):
  malformed  the row is not a record of the object's format (bad bytes, bad JSON, bad fields)
  empty      empty prompt (no user text) or empty answer after trimming
  tooLong    prompt + answer over spec.dataset.maxChars characters, or over the token limit
             when a tokenizer is given
  duplicate  the same normalized (prompt, answer) pair seen earlier (the first one is kept)
`strict` turns the first drop into a PrepareError that names it.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from typing import Any

from .errors import PrepareError
from .formats import Example, Prompt

MAX_REFS = 5
REASONS = ("empty", "duplicate", "malformed", "tooLong", "leaked")


_normalize = unicodedata.normalize


def norm(value: str) -> str:
    """NFC and trimmed; ASCII skips normalization (it is already NFC)."""
    if value.isascii():
        return value.strip()
    return _normalize("NFC", value).strip()


def normalize_prompt(prompt: Prompt) -> Prompt:
    if len(prompt) == 1:  # the common case, without a generator
        role, content = prompt[0]
        return ((role, norm(content)),)
    return tuple((role, norm(content)) for role, content in prompt)


def token_counter(tokenizer: Any) -> Callable[[str], int]:
    """Token count from a HF tokenizer, a `tokenizers.Tokenizer`, or a plain callable."""
    if hasattr(tokenizer, "encode"):
        def count(s: str) -> int:
            encoded = tokenizer.encode(s)
            return len(getattr(encoded, "ids", encoded))
        return count
    if callable(tokenizer):
        return lambda s: int(tokenizer(s))
    raise TypeError("tokenizer must have encode() or be a callable returning a token count")


class DropLog:
    """Counts and up to MAX_REFS references per reason; raises on the first drop if strict."""

    def __init__(self, names: list[str], *, strict: bool = False) -> None:
        self.names = names  # source URI per Example.src
        self.strict = strict
        self.counts = {r: 0 for r in REASONS}
        self.refs: dict[str, list[str]] = {r: [] for r in REASONS}

    def ref(self, src: int, line: int) -> str:
        return f"{self.names[src]}:{line}"

    def drop(self, reason: str, src: int, line: int, detail: str = "") -> None:
        if self.strict:
            why = f" ({detail})" if detail else ""
            where = self.ref(src, line)
            raise PrepareError("Malformed", f"strict: {where} would be dropped as {reason}{why}; "
                                            "fix it or set spec.dataset.strict to false")
        self.note(reason, src, line)

    def note(self, reason: str, src: int, line: int) -> None:
        """Count a record under `reason` without the strict check (a leak is moved, not dropped)."""
        self.counts[reason] += 1
        if len(self.refs[reason]) < MAX_REFS:
            self.refs[reason].append(self.ref(src, line))

    def note_lines(self, reason: str, src: int, lines: Any) -> None:
        """Count records of one object under `reason` at once (`lines` in reading order)."""
        self.counts[reason] += len(lines)
        room = MAX_REFS - len(self.refs[reason])
        for line in list(lines[:max(room, 0)]):
            self.refs[reason].append(self.ref(src, int(line)))

    def note_many(self, reason: str, count: int, first: list[tuple[int, int]]) -> None:
        """Count `count` records under `reason`; `first` are the (src, line) of the earliest."""
        self.counts[reason] += count
        for src, line in first[:max(MAX_REFS - len(self.refs[reason]), 0)]:
            self.refs[reason].append(self.ref(src, line))

    def summary(self) -> str:
        return ", ".join(f"{r} {self.counts[r]}" for r in REASONS if r != "leaked")


def clean_one(prompt: Prompt, output: str, max_chars: int
              ) -> tuple[str | None, str, Prompt, str, int, int]:
    """NFC + trim one record and check it: (reason or None, detail, prompt, output, answer
    characters, total characters). The checks run in this order: empty prompt, empty answer,
    over maxChars. The one definition of a record's cleaning (the columnar path sends every
    record it cannot prove unchanged by it here)."""
    # norm() spelled out (this runs once per record; ASCII is already NFC)
    output = output.strip() if output.isascii() else _normalize("NFC", output).strip()
    olen = len(output)
    if len(prompt) == 1:  # the common single-turn case
        role, content = prompt[0]
        content = content.strip() if content.isascii() else _normalize("NFC", content).strip()
        prompt = ((role, content),)
        chars = olen + len(content)
        has_user = role == "user" and content != ""
    else:
        prompt = normalize_prompt(prompt)
        chars = olen + sum([len(c) for _, c in prompt])
        has_user = not prompt or any([c for r, c in prompt if r == "user"])
    if not has_user:
        return "empty", "empty prompt", prompt, output, olen, chars
    if not output:
        return "empty", "empty answer", prompt, output, olen, chars
    if chars > max_chars:
        return "tooLong", f"{chars} characters, over maxChars {max_chars}", prompt, output, olen, chars
    return None, "", prompt, output, olen, chars


class Cleaner:
    """Feed records in reading order; `kept` holds the Examples that survive.

    Runs once per record, so it avoids allocations for records it drops and keeps the dedupe
    index as a set (the first copy's reference is looked up only when strict mode needs it).
    With dedupe=False duplicates are kept: the pipeline then finds them over all objects at
    once (pipeline.Records.dedupe), with the records of the columnar path.
    """

    def __init__(self, log: DropLog, *, max_chars: int, tokenizer: Any = None,
                 max_tokens: int | None = None, dedupe: bool = True) -> None:
        self.log = log
        self.dedupe = dedupe  # False: the pipeline dedupes all records at once, later
        self.max_chars = max_chars
        self.count_tokens = token_counter(tokenizer) if tokenizer is not None else None
        self.max_tokens = max_tokens
        self.kept: list[Example] = []
        # Lengths of the kept records, collected while they are hot in cache (the manifest's
        # statistics would otherwise walk a million scattered objects again).
        self.output_chars: list[int] = []
        self.total_chars: list[int] = []
        self._seen: set[tuple[Prompt, str]] = set()

    def malformed(self, src: int, line: int, detail: str) -> None:
        self.log.drop("malformed", src, line, detail)

    def add(self, prompt: Prompt, output: str, src: int, line: int, stratum: str | None = None) -> None:
        reason, detail, prompt, output, olen, chars = clean_one(prompt, output, self.max_chars)
        if reason is not None:
            self.log.drop(reason, src, line, detail)
            return
        if self.count_tokens is not None and self.max_tokens is not None:
            tokens = self.count_tokens("\n".join([c for _, c in prompt] + [output]))
            if tokens > self.max_tokens:
                self.log.drop("tooLong", src, line, f"{tokens} tokens, over {self.max_tokens}")
                return
        if self.dedupe:
            key = (prompt, output)
            seen = self._seen
            size = len(seen)
            seen.add(key)  # one hash of the nested key instead of two (`in` then `add`)
            if len(seen) == size:
                self.log.drop("duplicate", src, line, f"same as {self._first(key)}")
                return
        self.kept.append(Example(prompt, output, src, line, stratum, chars))
        self.output_chars.append(olen)
        self.total_chars.append(chars)

    def _first(self, key: tuple[Prompt, str]) -> str:
        if not self.log.strict:
            return ""
        first = next(ex for ex in self.kept if (ex.prompt, ex.output) == key)
        return self.log.ref(first.src, first.line)

    def finish(self) -> list[Example]:
        """Hand over the kept records (the cleaner lets go of them and of its dedupe index)."""
        kept, self.kept, self._seen = self.kept, [], set()
        return kept

    def take(self) -> tuple[list[Example], list[int], list[int]]:
        """The records kept since the last take, with their answer and total lengths."""
        out = (self.kept, self.output_chars, self.total_chars)
        self.kept, self.output_chars, self.total_chars = [], [], []
        return out
