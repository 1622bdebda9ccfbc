"""Issue 18's verdict on a real (tiny) model trained by the real trainer against real S3: a task
whose labels are drawn independently of the text gets noGain, naming the baseline it could not
beat, although its eval loss falls by more than half (the answer format is learned).

The other half, a learnable task keeping an ok verdict with an interval above every baseline,
needs a model that can learn a task: the tiny base cannot (tried here: labels given by the first
word, or by every word of the message, up to 200 steps at lr 2e-2 and rank 64: exact match stays
at the majority label's). It runs on SmolLM2-135M in `make bench-quality-smoke` (CI) instead.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from finetune_contract import Metrics
from finetune_contract.storage import Storage
from finetune_dev.tinymodel import LABELS

from test_trainer import prepare, run_trainer, tiny_model  # noqa: F401 - the fixture is shared

TRAINING = {"learningRate": 3e-3, "maxSteps": 60}


def _tickets(n: int, seed: int) -> list[dict[str, Any]]:
    """Tickets made of one label's keywords, labelled with another label drawn at random."""
    rng = random.Random(seed)
    labels = sorted(LABELS)
    out = []
    for i in range(n):
        label = rng.choice(labels)
        shown = rng.choice(labels)
        words = [rng.choice(LABELS[shown]) for _ in range(rng.randint(5, 8))]
        out.append({"messages": [{"role": "user", "content": " ".join(words) + f" {i}"},
                                 {"role": "assistant", "content": label}]})
    return out


def _train(storage: Storage, bucket: str, s3_server: Any, model: Path, tmp_path: Path,
           records: list[dict[str, Any]], task: str) -> tuple[Metrics, str]:
    layout, _ = prepare(storage, bucket, records, model, training=TRAINING, task=task)
    rc, out, term = run_trainer(layout, s3_server, tmp_path)
    assert rc == 0, out[-3000:]
    assert term is not None
    metrics = Metrics.model_validate_json(storage.read_text(layout.metrics))
    print(f"\n{task}: {term.message}")
    return metrics, term.message


@pytest.mark.slow
@pytest.mark.s3
def test_random_labels_get_no_gain_naming_the_baseline(storage: Storage, bucket: str,
                                                       s3_server: Any, tiny_model: Path,
                                                       tmp_path: Path) -> None:
    m, message = _train(storage, bucket, s3_server, tiny_model, tmp_path,
                        _tickets(150, 5), "random-labels")
    em = m.exact_match
    assert em is not None and em.answer_shape == "labels" and em.comparison is not None
    assert m.verdicts.no_gain, message
    # The loss still falls (the format is learned): the headline must not lead with it.
    assert m.improvement > 0.3
    assert em.comparison.against in {"majorityLabel", "labelPrior"}
    assert message.startswith(f"no gain over {em.comparison.label} ("), message
    assert f"on {em.samples} records" in message
