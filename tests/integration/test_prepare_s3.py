"""prepare_run against the real SeaweedFS server: one test per bad input from issue 2, each
asserting the one-line message, and a happy path that checks counts, the written files and
that the source objects are left exactly as they were.
"""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from finetune_contract import Manifest, RunLayout
from finetune_dev.devs3 import S3Server
from finetune_operator.prepare import PrepareError, prepare_run
from finetune_operator.spec import FineTuneTaskSpec
from finetune_contract.storage import Credentials, Storage

pytestmark = pytest.mark.s3


def make_spec(uri: str, bucket: str, **dataset: object) -> FineTuneTaskSpec:
    return FineTuneTaskSpec.model_validate({
        "baseModel": {"name": "m"}, "dataset": {"uri": uri, **dataset},
        "output": {"uri": f"s3://{bucket}/runs"}})


def layout_for(spec: FineTuneTaskSpec, root: str | None = None) -> RunLayout:
    return RunLayout(root=root or spec.output.uri, namespace="ml", task="triage", run_id=spec.run_id())


def alpaca_lines(n: int, start: int = 0) -> str:
    return "".join(json.dumps({"instruction": f"Classify ticket {i}", "input": f"body {i}",
                               "output": ["bug", "billing"][i % 2]}) + "\n"
                   for i in range(start, start + n))


def put(storage: Storage, uri: str, data: str | bytes) -> None:
    storage.write_bytes(uri, data.encode() if isinstance(data, str) else data)


def prepare_error(storage: Storage, spec: FineTuneTaskSpec) -> PrepareError:
    with pytest.raises(PrepareError) as err:
        prepare_run(spec, layout_for(spec), storage)
    assert "\n" not in str(err.value)
    return err.value


# ---- happy path ------------------------------------------------------------------------------


def test_prefix_of_jsonl_csv_parquet_is_cleaned_split_and_written(storage: Storage, bucket: str) -> None:
    base = f"s3://{bucket}/tasks/triage/"
    lines = alpaca_lines(100)
    lines += lines.splitlines(keepends=True)[3]                      # one exact duplicate
    lines += '{"instruction": "Classify ticket x", "output": "  "}\n'  # empty answer
    lines += "{not json\n"                                           # malformed
    put(storage, base + "a.jsonl", lines)
    put(storage, base + "b.csv", "instruction,input,output\n" + "".join(
        f"Classify csv {i},\"multi\nline {i}\",bug\n" for i in range(20)))
    buf = io.BytesIO()
    pq.write_table(pa.table({"instruction": [f"Classify pq {i}" for i in range(20)],
                             "input": [""] * 20, "output": ["billing"] * 20}), buf)
    put(storage, base + "c.parquet", buf.getvalue())
    put(storage, base + "README.md", "not data")
    before = {o.uri: (o.etag, storage.read_bytes(o.uri)) for o in storage.list(base)}

    spec = make_spec(base, bucket, minSamples=100)
    layout = layout_for(spec)
    manifest = prepare_run(spec, layout, storage)

    assert (manifest.records_read, manifest.records_kept) == (143, 140)
    assert (manifest.train_samples, manifest.validation_samples) == (126, 14)
    assert manifest.dropped.model_dump() == {"empty": 1, "duplicate": 1, "malformed": 1,
                                             "too_long": 0, "leaked": 0}
    assert manifest.drop_refs == {"duplicate": [base + "a.jsonl:101"], "empty": [base + "a.jsonl:102"],
                                  "malformed": [base + "a.jsonl:103"]}
    assert manifest.format == "alpaca" and manifest.record_shape == "messages"
    assert [(s.uri.rsplit("/", 1)[1], s.records, s.format) for s in manifest.sources] == [
        ("a.jsonl", 103, "alpaca"), ("b.csv", 20, "alpaca"), ("c.parquet", 20, "alpaca")]
    assert all(s.etag and s.size > 0 for s in manifest.sources)

    train = storage.read_bytes(layout.train)
    validation = storage.read_bytes(layout.validation)
    import hashlib
    assert hashlib.sha256(train).hexdigest() == manifest.train.sha256
    assert manifest.validation.bytes == len(validation)
    rows = [json.loads(x) for x in (train + validation).decode().splitlines()]
    assert len(rows) == 140
    assert {r["messages"][-1]["role"] for r in rows} == {"assistant"}
    assert any(r["messages"][0]["content"] == "Classify csv 3\n\nmulti\nline 3" for r in rows)
    assert manifest.lengths.output_chars_train == sum(
        len(json.loads(x)["messages"][-1]["content"]) for x in train.decode().splitlines())
    assert Manifest.model_validate_json(storage.read_bytes(layout.manifest)) == manifest

    # The source is untouched: same objects, same bytes, same ETags.
    after = {o.uri: (o.etag, storage.read_bytes(o.uri)) for o in storage.list(base)}
    assert after == before

    # Same spec again: the existing manifest is reused (files still match), nothing rewritten.
    assert prepare_run(spec, layout, storage) == manifest
    # Another output root: byte-identical files (the split depends on data and seed only).
    other = prepare_run(spec, layout_for(spec, f"s3://{bucket}/elsewhere"), storage)
    assert (other.train.sha256, other.validation.sha256) == (manifest.train.sha256,
                                                             manifest.validation.sha256)


def test_a_changed_split_file_is_prepared_again(storage: Storage, bucket: str) -> None:
    put(storage, f"s3://{bucket}/d/a.jsonl", alpaca_lines(120))
    spec = make_spec(f"s3://{bucket}/d/a.jsonl", bucket)
    layout = layout_for(spec)
    first = prepare_run(spec, layout, storage)
    put(storage, layout.train, "tampered\n")
    again = prepare_run(spec, layout, storage)
    assert again.train.sha256 == first.train.sha256
    assert storage.read_bytes(layout.train) != b"tampered\n"


def test_chat_and_completion_shapes(storage: Storage, bucket: str) -> None:
    chat = "".join(json.dumps({"messages": [{"role": "system", "content": "Be brief."},
                                            {"role": "user", "content": f"Q{i}"},
                                            {"role": "assistant", "content": f"A{i}"}]}) + "\n"
                   for i in range(110))
    put(storage, f"s3://{bucket}/chat.jsonl", chat)
    spec = make_spec(f"s3://{bucket}/chat.jsonl", bucket)
    m = prepare_run(spec, layout_for(spec), storage)
    first = json.loads(storage.read_text(m.train.uri).splitlines()[0])
    assert [x["role"] for x in first["messages"]] == ["system", "user", "assistant"]

    put(storage, f"s3://{bucket}/text.json", json.dumps([{"text": f"story {i}"} for i in range(110)]))
    spec = make_spec(f"s3://{bucket}/text.json", bucket, format="completion")
    m = prepare_run(spec, layout_for(spec), storage)
    assert m.record_shape == "text" and m.records_kept == 110
    assert set(json.loads(storage.read_text(m.validation.uri).splitlines()[0])) == {"text"}


# ---- bad input: one test each ------------------------------------------------------------------


def test_non_utf8_and_malformed_lines_are_counted(storage: Storage, bucket: str) -> None:
    uri = f"s3://{bucket}/d/a.jsonl"
    put(storage, uri, alpaca_lines(60).encode() + b'{"instruction": "caf\xe9", "output": "x"}\n'
        + b'{"instruction": "q", "output": \n' + alpaca_lines(60, 60).encode())
    spec = make_spec(uri, bucket)
    m = prepare_run(spec, layout_for(spec), storage)
    assert m.dropped.malformed == 2 and m.records_kept == 120
    assert m.drop_refs["malformed"] == [f"{uri}:61", f"{uri}:62"]


def test_strict_names_the_first_bad_line(storage: Storage, bucket: str) -> None:
    uri = f"s3://{bucket}/d/a.jsonl"
    put(storage, uri, alpaca_lines(60).encode() + b'{"instruction": "caf\xe9", "output": "x"}\n'
        + alpaca_lines(60, 60).encode())
    err = prepare_error(storage, make_spec(uri, bucket, strict=True))
    assert err.reason == "Malformed"
    assert str(err).startswith(f"strict: {uri}:61 would be dropped as malformed (not UTF-8")


def test_json_object_instead_of_a_list(storage: Storage, bucket: str) -> None:
    uri = f"s3://{bucket}/d/data.json"
    put(storage, uri, json.dumps({"data": [{"instruction": "q", "output": "a"}]}))
    err = prepare_error(storage, make_spec(uri, bucket))
    assert err.reason == "BadFormat"
    assert str(err) == (f"{uri}: the JSON is an object, expected a list of records "
                        "(or use .jsonl, one record per line)")


def test_csv_without_the_needed_columns(storage: Storage, bucket: str) -> None:
    uri = f"s3://{bucket}/d/data.csv"
    put(storage, uri, "question,answer\nq,a\n")
    err = prepare_error(storage, make_spec(uri, bucket))
    assert err.reason == "BadFormat"
    assert str(err).startswith(f"{uri}: columns question, answer fit no format; need alpaca")
    err = prepare_error(storage, make_spec(uri, bucket, format="chat"))
    assert str(err) == f"{uri}: columns question, answer fit no format; need chat"


def test_empty_object(storage: Storage, bucket: str) -> None:
    put(storage, f"s3://{bucket}/d/a.jsonl", alpaca_lines(150))
    put(storage, f"s3://{bucket}/d/b.jsonl", b"")
    err = prepare_error(storage, make_spec(f"s3://{bucket}/d/", bucket))
    assert (err.reason, str(err)) == ("NoData", f"s3://{bucket}/d/b.jsonl is empty (0 bytes)")


def test_object_with_only_blank_lines(storage: Storage, bucket: str) -> None:
    put(storage, f"s3://{bucket}/d/a.jsonl", "\n\n  \n")
    err = prepare_error(storage, make_spec(f"s3://{bucket}/d/a.jsonl", bucket))
    assert (err.reason, str(err)) == ("NoData", f"s3://{bucket}/d/a.jsonl holds no records")


def test_prefix_without_data_objects(storage: Storage, bucket: str) -> None:
    put(storage, f"s3://{bucket}/d/README.md", "hello")
    put(storage, f"s3://{bucket}/d/_SUCCESS", "")
    err = prepare_error(storage, make_spec(f"s3://{bucket}/d/", bucket))
    assert err.reason == "NoData"
    assert str(err) == (f"no .jsonl/.json/.csv/.parquet objects under s3://{bucket}/d/ "
                        "(2 other object(s) ignored: README.md, _SUCCESS)")
    err = prepare_error(storage, make_spec(f"s3://{bucket}/nothing/", bucket))
    assert str(err) == f"no objects at s3://{bucket}/nothing/"


def test_single_object_of_an_unsupported_type(storage: Storage, bucket: str) -> None:
    put(storage, f"s3://{bucket}/d/data.txt", "instruction,output\nq,a\n")
    err = prepare_error(storage, make_spec(f"s3://{bucket}/d/data.txt", bucket))
    assert (err.reason, str(err)) == ("BadFormat", f"s3://{bucket}/d/data.txt: unsupported file type; "
                                                   "use one of .jsonl, .json, .csv, .parquet")


def test_object_over_the_size_cap(storage: Storage, bucket: str) -> None:
    put(storage, f"s3://{bucket}/d/a.jsonl", alpaca_lines(150))
    size = storage.list(f"s3://{bucket}/d/a.jsonl")[0].size
    err = prepare_error(storage, make_spec(f"s3://{bucket}/d/", bucket, maxBytes=1000))
    assert err.reason == "TooLarge"
    assert str(err) == (f"dataset s3://{bucket}/d/ is {size} bytes in 1 object(s), over the cap of "
                        "1000 bytes (spec.dataset.maxBytes)")


def test_wrong_credentials(s3_server: S3Server, storage: Storage, bucket: str) -> None:
    put(storage, f"s3://{bucket}/d/a.jsonl", alpaca_lines(150))
    bad = Storage(s3_server.endpoint, Credentials.from_env(
        {"AWS_ACCESS_KEY_ID": s3_server.access_key, "AWS_SECRET_ACCESS_KEY": "wrong-secret-value"}))
    spec = make_spec(f"s3://{bucket}/d/", bucket)
    with pytest.raises(PrepareError) as err:
        prepare_run(spec, layout_for(spec), bad)
    assert err.value.reason == "Storage" and not err.value.transient
    # The first request is the HEAD for an existing manifest: a 403 without an error code.
    assert str(err.value).startswith("S3 refused the credentials (")
    assert str(err.value).endswith(": check the secret")
    assert "wrong-secret-value" not in str(err.value)


def test_missing_bucket(storage: Storage, bucket: str) -> None:
    spec = make_spec("s3://no-such-bucket-here/d/", bucket)
    err = prepare_error(storage, spec)
    assert err.reason == "Storage"
    assert str(err).startswith("bucket does not exist: no-such-bucket-here")


def test_fewer_than_min_samples_gives_counts_by_reason(storage: Storage, bucket: str) -> None:
    lines = alpaca_lines(80) + alpaca_lines(10) + '{"instruction": "", "output": "x"}\n' + "oops\n"
    put(storage, f"s3://{bucket}/d/a.jsonl", lines)
    err = prepare_error(storage, make_spec(f"s3://{bucket}/d/a.jsonl", bucket))
    assert err.reason == "TooFewSamples"
    assert str(err) == (f"only 80 usable records of 92 read from s3://{bucket}/d/a.jsonl, need "
                        "minSamples 100 (dropped: empty 1, duplicate 10, malformed 1, tooLong 0)")


def test_fraction_leaving_too_few_validation_samples(storage: Storage, bucket: str) -> None:
    put(storage, f"s3://{bucket}/d/a.jsonl", alpaca_lines(150))
    err = prepare_error(storage, make_spec(f"s3://{bucket}/d/a.jsonl", bucket,
                                           validationFraction=0.05))
    assert err.reason == "TooFewValidation"
    assert str(err) == ("validationFraction 0.05 of 150 records gives 8 validation samples, under "
                        "minValidationSamples 10; raise the fraction or add records")


def test_mixed_formats_under_one_prefix(storage: Storage, bucket: str) -> None:
    put(storage, f"s3://{bucket}/d/a.jsonl", alpaca_lines(80))
    put(storage, f"s3://{bucket}/d/b.jsonl", "".join(
        json.dumps({"prompt": f"p{i}", "completion": "c"}) + "\n" for i in range(80)))
    err = prepare_error(storage, make_spec(f"s3://{bucket}/d/", bucket))
    assert err.reason == "MixedFormats"
    assert str(err) == (f"mixed formats under s3://{bucket}/d/: s3://{bucket}/d/a.jsonl is alpaca; "
                        f"s3://{bucket}/d/b.jsonl is input_output; keep one format per dataset or "
                        "set spec.dataset.format")


def test_records_of_an_unknown_shape(storage: Storage, bucket: str) -> None:
    put(storage, f"s3://{bucket}/d/a.jsonl", '{"question": "q", "answer": "a"}\n')
    err = prepare_error(storage, make_spec(f"s3://{bucket}/d/a.jsonl", bucket))
    assert err.reason == "BadFormat"
    assert str(err).startswith(f"s3://{bucket}/d/a.jsonl:1: records with keys answer, question fit "
                               "no format")


def test_stratify_by_a_missing_field(storage: Storage, bucket: str) -> None:
    put(storage, f"s3://{bucket}/d/a.jsonl", alpaca_lines(150))
    err = prepare_error(storage, make_spec(f"s3://{bucket}/d/a.jsonl", bucket, stratifyBy="label"))
    assert (err.reason, str(err)) == (
        "BadFormat", f"stratifyBy 'label' is not a field of any record in s3://{bucket}/d/a.jsonl")


def test_stratified_split_by_a_source_field(storage: Storage, bucket: str) -> None:
    put(storage, f"s3://{bucket}/d/a.jsonl", "".join(
        json.dumps({"prompt": f"ticket {i}", "completion": "x", "label": "rare" if i % 10 == 0 else "common"})
        + "\n" for i in range(200)))
    spec = make_spec(f"s3://{bucket}/d/a.jsonl", bucket, stratifyBy="label")
    m = prepare_run(spec, layout_for(spec), storage)
    assert m.stratify_by == "label" and m.validation_samples == 20
    rare = [json.loads(x) for x in storage.read_text(m.validation.uri).splitlines()]
    assert sum(1 for r in rare if r["messages"][0]["content"] in {f"ticket {i}" for i in range(0, 200, 10)}) == 2


def test_a_prompt_in_two_strata_is_moved_to_train_and_counted(storage: Storage, bucket: str) -> None:
    uri = f"s3://{bucket}/d/a.jsonl"
    rows = [{"prompt": f"ticket {i}", "completion": "x", "label": f"l{i % 2}"} for i in range(100)]
    rows += [{"prompt": f"ambiguous {i // 2}", "completion": f"answer {i}", "label": f"l{i % 2}"}
             for i in range(40)]  # each ambiguous prompt once per label
    put(storage, uri, "".join(json.dumps(r) + "\n" for r in rows))
    spec = make_spec(uri, bucket, stratifyBy="label", seed=1, validationFraction=0.2)
    m = prepare_run(spec, layout_for(spec), storage)
    assert (m.dropped.leaked, m.train_samples, m.validation_samples) == (4, 116, 24)
    assert m.drop_refs["leaked"] == [f"{uri}:{n}" for n in (106, 118, 128, 136)]
    train = {json.loads(x)["messages"][0]["content"] for x in storage.read_text(m.train.uri).splitlines()}
    valid = {json.loads(x)["messages"][0]["content"] for x in storage.read_text(m.validation.uri).splitlines()}
    assert not train & valid


def test_unknown_keys_are_reported_at_their_line(storage: Storage, bucket: str) -> None:
    put(storage, f"s3://{bucket}/d/a.jsonl", '{broken\n\n{"question": "q", "answer": "a"}\n')
    err = prepare_error(storage, make_spec(f"s3://{bucket}/d/a.jsonl", bucket))
    assert str(err).startswith(f"s3://{bucket}/d/a.jsonl:3: records with keys answer, question")
