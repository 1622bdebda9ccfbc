"""Split: seeded, deterministic, a partition of the cleaned records, and leak-free."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from finetune_operator.prepare import PrepareError
from finetune_operator.prepare.formats import Example
from finetune_operator.prepare.split import digest, prompt_key, quotas, split, validation_target


def ex(prompt: str, answer: str, i: int = 0, stratum: str | None = None) -> Example:
    return Example((("user", prompt),), answer, 0, i, stratum)


def ident(e: Example) -> tuple:
    return (e.prompt, e.output)


@pytest.mark.parametrize(("n", "fraction", "expected"), [
    (100, 0.1, 10), (105, 0.1, 11), (104, 0.1, 10), (99, 0.1, 10), (20, 0.5, 10), (3, 0.5, 2),
])
def test_validation_target(n: int, fraction: float, expected: int) -> None:
    assert validation_target(n, fraction) == expected


@pytest.mark.parametrize(("sizes", "target", "expected"), [
    ({"a": 50, "b": 50}, 10, {"a": 5, "b": 5}),
    ({"a": 70, "b": 20, "c": 10}, 10, {"a": 7, "b": 2, "c": 1}),
    ({"a": 1, "b": 1, "c": 1}, 2, {"a": 1, "b": 1, "c": 0}),   # ties go by name
    ({"x": 33, "y": 33, "z": 34}, 10, {"x": 3, "y": 3, "z": 4}),
])
def test_quotas_add_up_exactly(sizes: dict, target: int, expected: dict) -> None:
    assert quotas(sizes, target) == expected


def test_digest_is_a_fixed_function_of_seed_and_prompt() -> None:
    # Pinned: the split must be identical on every machine and Python version.
    assert digest(42, "user\x1fhello").hex()[:16] == __import__("hashlib").sha256(
        "42\x00user\x1fhello".encode()).hexdigest()[:16]
    assert prompt_key(Example((("system", "s"), ("user", "u")), "a", 0, 0)) == "system\x1fs\x1euser\x1fu"
    assert prompt_key(Example((), "just text", 0, 0)) == "just text"


def test_too_small_a_fraction_is_an_error() -> None:
    with pytest.raises(PrepareError, match="validationFraction 0.05 of 150 records gives 8 validation "
                                           "samples, under minValidationSamples 10") as err:
        split([ex(f"q{i}", "a") for i in range(150)], fraction=0.05, seed=1, min_validation=10)
    assert err.value.reason == "TooFewValidation"


def test_records_sharing_a_prompt_stay_together() -> None:
    records = [ex(f"q{i}", f"a{j}") for i in range(40) for j in range(3)]
    parts = split(records, fraction=0.1, seed=3, min_validation=5)
    train_prompts = {e.prompt for e in parts.train}
    assert not any(e.prompt in train_prompts for e in parts.validation)
    assert len(parts.validation) == 12 and not parts.leaked


def test_all_shared_prompts_can_leave_too_few_validation_samples() -> None:
    records = [ex(f"q{i}", f"a{j}") for i in range(4) for j in range(30)]
    with pytest.raises(PrepareError, match="only 0 validation samples of 120 records"):
        split(records, fraction=0.1, seed=3, min_validation=10)


def test_stratified_split_keeps_label_shares() -> None:
    records = [ex(f"q{i}", "a", stratum="bug" if i % 4 else "billing") for i in range(400)]
    parts = split(records, fraction=0.1, seed=7, min_validation=10, stratify=True)
    labels = [e.stratum for e in parts.validation]
    assert labels.count("bug") == 30 and labels.count("billing") == 10


def test_a_prompt_spanning_two_strata_is_moved_not_leaked() -> None:
    # The same question labeled two ways: each stratum may pick it, so the check must catch it.
    records = [ex(f"shared{i // 2}", f"ans{i}", i, stratum=f"s{i % 2}") for i in range(40)]
    records += [ex(f"q{i}", "a", 100 + i, stratum=f"s{i % 2}") for i in range(60)]
    for seed in range(20):
        parts = split(records, fraction=0.2, seed=seed, min_validation=1, stratify=True)
        train_prompts = {e.prompt for e in parts.train}
        assert not any(e.prompt in train_prompts for e in parts.validation)
        assert len(parts.train) + len(parts.validation) == 100
    leaked_somewhere = [split(records, fraction=0.2, seed=s, min_validation=1, stratify=True).leaked
                        for s in range(20)]
    assert any(leaked_somewhere)


# ---- properties -----------------------------------------------------------------------------

_texts = st.text(alphabet="abcé東 ", min_size=1, max_size=4)
_records = st.lists(st.tuples(_texts, _texts, st.sampled_from(["x", "y", "z"])), min_size=30,
                    max_size=120, unique_by=lambda t: (t[0], t[1]))


@settings(max_examples=60, deadline=None)
@given(rows=_records, seed=st.integers(0, 2**31), fraction=st.sampled_from([0.1, 0.25, 0.5]),
       stratify=st.booleans(), shuffle=st.randoms(use_true_random=False))
def test_split_is_a_leak_free_deterministic_partition(rows, seed, fraction, stratify, shuffle) -> None:
    records = [ex(p, a, i, s) for i, (p, a, s) in enumerate(rows)]
    try:
        parts = split(records, fraction=fraction, seed=seed, min_validation=1, stratify=stratify)
    except PrepareError as err:  # only when shared prompts leave no room for a whole group
        assert err.reason == "TooFewValidation"
        return
    # a partition of the input: every record exactly once
    assert sorted(map(ident, parts.train + parts.validation)) == sorted(map(ident, records))
    # no validation prompt is also trained on
    train_prompts = {e.prompt for e in parts.train}
    assert not any(e.prompt in train_prompts for e in parts.validation)
    # deterministic, and independent of the input order
    shuffled = records[:]
    shuffle.shuffle(shuffled)
    again = split(shuffled, fraction=fraction, seed=seed, min_validation=1, stratify=stratify)
    assert list(map(ident, again.train)) == list(map(ident, parts.train))
    assert list(map(ident, again.validation)) == list(map(ident, parts.validation))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(40, 300), seed=st.integers(0, 10**9))
def test_unique_prompts_give_exactly_the_target(n: int, seed: int) -> None:
    records = [ex(f"q{i}", "a") for i in range(n)]
    parts = split(records, fraction=0.1, seed=seed, min_validation=1)
    assert len(parts.validation) == validation_target(n, 0.1)


def test_the_seed_changes_the_split() -> None:
    records = [ex(f"q{i}", "a") for i in range(200)]
    a = {ident(e) for e in split(records, fraction=0.1, seed=1, min_validation=1).validation}
    b = {ident(e) for e in split(records, fraction=0.1, seed=2, min_validation=1).validation}
    assert a != b
    random.Random(0)  # (no global RNG is used by split)


@pytest.mark.parametrize(("values", "expected"), [
    ([], [0, 0, 0]),
    ([7], [7, 7, 7]),
    (list(range(1, 101)), [50, 95, 100]),
    ([1, 1, 1, 1, 1, 1, 1, 1, 1, 9], [1, 9, 9]),
    ([3, 1, 2], [2, 3, 3]),
])
def test_length_percentiles_are_nearest_rank(values: list[int], expected: list[int]) -> None:
    from finetune_operator.prepare.pipeline import _percentiles

    assert _percentiles(values, 50, 95, 100) == expected
