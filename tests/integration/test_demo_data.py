"""Every demo and benchmark task's data passes `finetune prepare` against the real S3 server.

Why: `make demo` and `make bench-quality` upload these generated tasks and train on them; a
generator change that produced malformed, duplicate or unbalanced records would otherwise show
up only as a bad demo run minutes later.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from finetune_dev import demo_tasks
from finetune_operator import cli
from finetune_dev.devs3 import S3Server
from finetune_contract.storage import Storage

ALL_TASKS = sorted(set(demo_tasks.DEMO_TASKS) | set(demo_tasks.BENCH_TASKS))


def test_generators_are_seeded_and_sized() -> None:
    for name in ALL_TASKS:
        a, b = demo_tasks.generate(name), demo_tasks.generate(name)
        assert a.data_bytes() == b.data_bytes(), f"{name} is not deterministic"
        assert 100 <= len(a.records) <= 200
    kinds = {demo_tasks.generate(n).kind for n in demo_tasks.BENCH_TASKS}
    assert len(kinds) == len(demo_tasks.BENCH_TASKS) >= 5
    assert len(demo_tasks.DEMO_TASKS) == 3


@pytest.mark.s3
@pytest.mark.parametrize("name", ALL_TASKS)
def test_task_data_passes_finetune_prepare(name: str, storage: Storage, bucket: str,
                                           s3_server: S3Server, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    task = demo_tasks.generate(name)
    [yaml_path] = demo_tasks.write_tasks([task], storage, data_root=f"s3://{bucket}/data",
                                         output_uri=f"s3://{bucket}/runs", base_model="unused",
                                         yaml_dir=tmp_path, endpoint=s3_server.endpoint)
    assert cli.main(["prepare", str(yaml_path)]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["recordsRead"] == len(task.records)
    assert manifest["dropped"] == {k: 0 for k in manifest["dropped"]}, manifest["dropped"]
    assert manifest["validationSamples"] == round(len(task.records) * demo_tasks.VALIDATION_FRACTION)
    assert manifest["trainSamples"] + manifest["validationSamples"] == len(task.records)
    assert manifest["recordShape"] == "messages"

    if task.stratify_by:  # labels stay balanced in the validation split
        rows = storage.read_text(manifest["validation"]["uri"]).splitlines()
        labels = Counter(json.loads(r)["messages"][-1]["content"] for r in rows)
        assert max(labels.values()) - min(labels.values()) <= 1, labels
