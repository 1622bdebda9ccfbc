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
from collections import defaultdict
from dataclasses import dataclass, field

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


def split(examples: list[Example], *, fraction: float, seed: int, min_validation: int,
          stratify: bool = False) -> Split:
    n = len(examples)
    target = validation_target(n, fraction)
    if target < min_validation:
        raise PrepareError("TooFewValidation", f"validationFraction {fraction} of {n} records gives "
                                               f"{target} validation samples, under minValidationSamples "
                                               f"{min_validation}; raise the fraction or add records")
    digests = prompt_digests(examples, seed)
    shared = _shared(digests)
    if shared:  # the answer breaks ties, so the order never depends on the input's order
        order = sorted(range(n), key=lambda i: (digests[i], examples[i].output))
    else:
        order = sorted(range(n), key=digests.__getitem__)
    strata: dict[str, list[int]] = defaultdict(list)  # each in digest order
    if stratify:
        for i in order:
            strata[examples[i].stratum or ""].append(i)
    else:
        strata[""] = order
    share = quotas({s: len(v) for s, v in strata.items()}, target)

    in_val = bytearray(n)
    for name in sorted(strata):
        members, room = strata[name], share[name]
        start = 0
        while start < len(members) and room > 0:
            end = start + 1
            if shared:
                while end < len(members) and digests[members[end]] == digests[members[start]]:
                    end += 1
            if end - start <= room:  # a whole prompt group, or none of it
                for i in members[start:end]:
                    in_val[i] = 1
                room -= end - start
            start = end

    # The guarantee, checked rather than assumed: a validation prompt also in train can only
    # come from a prompt shared by several records, and only strata can split such a group.
    leaked: list[int] = []
    if shared:
        train_prompts = {digests[i] for i in range(n) if not in_val[i] and digests[i] in shared}
        leaked = [i for i in range(n) if in_val[i] and digests[i] in train_prompts]
        for i in leaked:
            in_val[i] = 0
    validation = [i for i in order if in_val[i]]
    if len(validation) < min_validation:
        raise PrepareError("TooFewValidation", f"only {len(validation)} validation samples of {n} "
                                               "records (records sharing a prompt stay on one side), "
                                               f"under minValidationSamples {min_validation}")
    train = [i for i in order if not in_val[i]]
    leaked.sort(key=lambda i: (examples[i].src, examples[i].line))
    return Split(examples, train, validation, leaked)


def _shared(digests: list[bytes]) -> set[bytes]:
    """Prompt digests that more than one record has (usually none)."""
    if len(set(digests)) == len(digests):
        return set()
    seen: set[bytes] = set()
    shared: set[bytes] = set()
    for d in digests:
        if d in seen:
            shared.add(d)
        seen.add(d)
    return shared
