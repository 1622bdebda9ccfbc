"""The train/validation split: seeded, deterministic on any machine, and leak-free.

Why sha256 instead of random.shuffle or hash(): Python's hash() of a str changes per process
and a PRNG's draws depend on input order; a digest of (seed, normalized prompt) gives the
same order on every machine and for any order of the input. Records that share a normalized
prompt form one group and go to the same side, so no validation prompt is also trained on.
With `stratify`, each stratum gets its share of the validation target (largest remainder);
a prompt that spans two strata can still land on both sides: those validation records are
moved to train and counted as `leaked`.
"""

from __future__ import annotations

import hashlib
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from .errors import PrepareError
from .formats import Example


@dataclass
class Split:
    """Positions into `examples`, in output order. Indices rather than lists of records: the
    writer serializes records in memory order and only permutes the finished lines, which on a
    million records is about twice as fast as walking the objects in (random) split order."""

    examples: list[Example]
    train_index: list[int]
    validation_index: list[int]
    leaked_index: list[int] = field(default_factory=list)  # moved from validation to train

    @property
    def train(self) -> list[Example]:
        return [self.examples[i] for i in self.train_index]

    @property
    def validation(self) -> list[Example]:
        return [self.examples[i] for i in self.validation_index]

    @property
    def leaked(self) -> list[Example]:
        return [self.examples[i] for i in self.leaked_index]


def prompt_key(ex: Example) -> str:
    """The normalized prompt as one string; a completion record's prompt is its text."""
    prompt = ex.prompt
    if len(prompt) == 1:
        return prompt[0][0] + "\x1f" + prompt[0][1]
    if not prompt:
        return ex.output
    return "\x1e".join(r + "\x1f" + c for r, c in prompt)


def digest(seed: int, key: str) -> bytes:
    return hashlib.sha256(f"{seed}\x00{key}".encode("utf-8")).digest()


def prompt_digests(examples: list[Example], seed: int) -> list[bytes]:
    """digest(seed, prompt_key(ex)) for each record, with the single-turn case inlined."""
    sha, prefix = hashlib.sha256, f"{seed}\x00"
    out = []
    append = out.append
    for ex in examples:
        prompt = ex.prompt
        if len(prompt) == 1:
            key = prefix + prompt[0][0] + "\x1f" + prompt[0][1]
        else:
            key = prefix + prompt_key(ex)
        append(sha(key.encode("utf-8")).digest())
    return out


def validation_target(n: int, fraction: float) -> int:
    """Round half up, in integers where possible, so every machine agrees."""
    return int(n * fraction + 0.5)


def quotas(sizes: dict[str, int], target: int) -> dict[str, int]:
    """Split `target` across strata in proportion to their sizes (largest remainder, exact ints)."""
    n = sum(sizes.values())
    out = {s: sizes[s] * target // n for s in sizes}
    rest = target - sum(out.values())
    by_remainder = sorted(sizes, key=lambda s: (-(sizes[s] * target % n), s))
    for s in by_remainder[:rest]:
        out[s] += 1
    return out


def digest_column(digests: bytes) -> pa.Array:
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(32), len(digests) // 32,
                                                [None, pa.py_buffer(digests)])


def _first_word(digests: bytes, n: int) -> pa.Array:
    """The first 4 bytes of each digest as a big-endian integer (sorts like the bytes)."""
    words = pc.list_element(pa.FixedSizeListArray.from_arrays(
        pa.Array.from_buffers(pa.uint32(), 8 * n, [None, pa.py_buffer(digests)]), 8), 0)
    if sys.byteorder == "little":
        def u32(v: int) -> pa.Scalar:
            return pa.scalar(v, pa.uint32())
        words = pc.bit_wise_or(
            pc.bit_wise_or(pc.shift_left(pc.bit_wise_and(words, u32(0xFF)), u32(24)),
                           pc.shift_left(pc.bit_wise_and(words, u32(0xFF00)), u32(8))),
            pc.bit_wise_or(pc.bit_wise_and(pc.shift_right(words, u32(8)), u32(0xFF00)),
                           pc.shift_right(words, u32(24))))
    return words


def digest_order(digests: bytes) -> tuple[pa.Array, list[tuple[int, int]]]:
    """Record indices sorted by digest (32 bytes each; ties keep their input order), and the
    runs of equal digests as [start, end) positions in that order (usually none)."""
    n = len(digests) // 32
    column = digest_column(digests)
    # A stable sort on (first 4 bytes as an integer, all 32 bytes): the bytes order, ~3x faster
    # than comparing 32-byte strings throughout.
    table = pa.table({"word": _first_word(digests, n), "digest": column})
    order = pc.sort_indices(table, sort_keys=[("word", "ascending"), ("digest", "ascending")])
    return order, equal_runs(column, order)


def equal_runs(column: pa.Array, order: pa.Array) -> list[tuple[int, int]]:
    """Runs of equal digests in `order` (sorted by digest) as [start, end) positions."""
    n = len(order)
    if n < 2:
        return []
    ordered = pc.take(column, order)
    runs: list[tuple[int, int]] = []
    for p in pc.indices_nonzero(pc.equal(ordered.slice(1), ordered.slice(0, n - 1))).to_pylist():
        if runs and runs[-1][1] == p + 1:  # ordered[p + 1] == ordered[p]
            runs[-1] = (runs[-1][0], p + 2)
        else:
            runs.append((p, p + 2))
    return runs


def break_ties(order: list[int], runs: list[tuple[int, int]], output: Callable[[list[int]], list[str]]
               ) -> None:
    """Within each run of equal digests, order by answer (then input order), in place: the
    order then never depends on the input's order."""
    for start, end in runs:
        members = order[start:end]
        answers = output(members)
        by_answer = sorted(range(len(members)), key=answers.__getitem__)
        order[start:end] = [members[k] for k in by_answer]


def check_target(n: int, fraction: float, min_validation: int) -> int:
    target = validation_target(n, fraction)
    if target < min_validation:
        raise PrepareError("TooFewValidation", f"validationFraction {fraction} of {n} records gives "
                                               f"{target} validation samples, under minValidationSamples "
                                               f"{min_validation}; raise the fraction or add records")
    return target


def assign(order: pa.Array, runs: list[tuple[int, int]], strata: Sequence[str] | None, *,
           n: int, target: int, min_validation: int) -> tuple[pa.Array, pa.Array, list[int]]:
    """Train and validation indices (each in `order`'s order) and the leaked ones (moved from
    validation to train; in index order). `order` is sorted by (digest, answer) and `runs` are
    its runs of equal digests: the prompt groups of more than one record. `strata[i]` is
    record i's stratum ("" for none)."""
    if not runs and strata is None:  # every group is one record: the first `target` ones
        return order.slice(target), order.slice(0, target), []
    ordered: list[int] = order.to_pylist()
    group: dict[int, int] = {}  # index -> its run, for records that share a prompt
    for g, (start, end) in enumerate(runs):
        for i in ordered[start:end]:
            group[i] = g
    members_of: dict[str, list[int]] = defaultdict(list)  # each in digest order
    if strata is not None:
        for i in ordered:
            members_of[strata[i]].append(i)
    else:
        members_of[""] = ordered
    share = quotas({s: len(v) for s, v in members_of.items()}, target)

    in_val: set[int] = set()
    for name in sorted(members_of):
        members, room = members_of[name], share[name]
        start = 0
        while start < len(members) and room > 0:
            end = start + 1
            g = group.get(members[start])
            if g is not None:
                while end < len(members) and group.get(members[end]) == g:
                    end += 1
            if end - start <= room:  # a whole prompt group, or none of it
                in_val.update(members[start:end])
                room -= end - start
            start = end

    # The guarantee, checked rather than assumed: a validation prompt also in train can only
    # come from a prompt shared by several records, and only strata can split such a group.
    leaked: list[int] = []
    if runs:
        train_groups = {g for i, g in group.items() if i not in in_val}
        leaked = sorted(i for i, g in group.items() if i in in_val and g in train_groups)
        in_val.difference_update(leaked)
    validation = [i for i in ordered if i in in_val]
    if len(validation) < min_validation:
        raise PrepareError("TooFewValidation", f"only {len(validation)} validation samples of {n} "
                                               "records (records sharing a prompt stay on one side), "
                                               f"under minValidationSamples {min_validation}")
    train = [i for i in ordered if i not in in_val]
    return pa.array(train, pa.int64()), pa.array(validation, pa.int64()), leaked


def split(examples: list[Example], *, fraction: float, seed: int, min_validation: int,
          stratify: bool = False) -> Split:
    n = len(examples)
    target = check_target(n, fraction, min_validation)
    order, runs = digest_order(b"".join(prompt_digests(examples, seed)))
    if runs:  # the answer breaks ties, so the order never depends on the input's order
        ordered = order.to_pylist()
        break_ties(ordered, runs, lambda idx: [examples[i].output for i in idx])
        order = pa.array(ordered, pa.int64())
    strata = [ex.stratum or "" for ex in examples] if stratify else None
    train, validation, leaked = assign(order, runs, strata, n=n, target=target,
                                       min_validation=min_validation)
    leaked.sort(key=lambda i: (examples[i].src, examples[i].line))
    return Split(examples, train.to_pylist(), validation.to_pylist(), leaked)
