"""prepare_run: dataset URI -> clean, seeded split -> train.jsonl, validation.jsonl, manifest.json.

Steps: list (size cap from listed sizes) -> read each object -> detect its format -> parse ->
clean -> gate on minSamples -> split -> write both files, then the manifest last, so a
manifest that exists always describes complete files. An alpaca JSONL object is parsed and
cleaned as columns (columnar.py) when that provably gives what the per-record path gives;
either way each object becomes a Batch of lines and prompt digests, and duplicates, the
split and the writing work on all batches at once, by index. A run whose manifest still matches both
files (by sha256) is returned as is: retries and operator restarts redo no work. The source
objects are only ever read.
"""

from __future__ import annotations

import bisect
import gc
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from finetune_contract import DropCounts, FileDigest, LengthStats, Manifest, RunLayout, SourceObject
from ..spec import FineTuneTaskSpec
from finetune_contract.storage import Storage, StorageError
from . import readers
from .clean import MAX_REFS, Cleaner, DropLog
from .columnar import Batch, alpaca_batch, batch_from_examples, mask
from .errors import PrepareError
from .formats import convert_into, object_format
from .split import assign, break_ties, check_target, digest_column, digest_order, equal_runs

DEFAULT_MAX_TOKENS = 4096


def prepare_run(spec: FineTuneTaskSpec, layout: RunLayout, storage: Storage, *,
                tokenizer: Any = None, max_tokens: int | None = None) -> Manifest:
    """Prepare the run's data split (or return the existing one); raise PrepareError.

    With a `tokenizer` (anything with `encode`, or a callable returning a count), records over
    `max_tokens` tokens (default: spec.training.sequenceLen, else 4096) are dropped as tooLong.
    """
    try:
        existing = reuse(layout, storage)
        if existing is not None:
            return existing
        with _no_cyclic_gc(), _reusing_pool():
            return _prepare(spec, layout, storage, tokenizer=tokenizer, max_tokens=max_tokens)
    except StorageError as err:
        raise PrepareError("Storage", str(err), transient=err.transient) from None


@contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Pause the cyclic GC: a million records are millions of small tuples, which made the
    collector rescan the growing heap over and over (~30% of the run). Nothing here makes
    cycles, and reference counting still frees everything. Process-wide, so restored after."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@contextmanager
def _reusing_pool() -> Iterator[None]:
    """Allocate pyarrow buffers from jemalloc while preparing, when pyarrow has it.

    A run allocates ~2 GB of short-lived buffers (parsed columns, lines, keys, the gathered
    files). pyarrow's default mimalloc hands freed memory back to the kernel within
    milliseconds, so each new buffer is faulted in again: on the bench that was 1-2 CPU-s of
    kernel time per million records. jemalloc keeps freed pages for reuse (pyarrow's decay:
    about a second), which measured 0.7-1.1 CPU-s less. The default pool is process-wide: it
    is restored after, and buffers are always freed by the pool that made them."""
    try:
        pool = pa.jemalloc_memory_pool()
    except NotImplementedError:  # a pyarrow built without jemalloc
        pool = None
    before = pa.default_memory_pool()
    if pool is not None:
        pa.set_memory_pool(pool)
    try:
        yield
    finally:
        if pool is not None:
            pa.set_memory_pool(before)


def reuse(layout: RunLayout, storage: Storage) -> Manifest | None:
    """The manifest at `layout` if both files still match its digests, else None."""
    if not storage.exists(layout.manifest):
        return None
    try:
        manifest = Manifest.model_validate_json(storage.read_bytes(layout.manifest))
    except ValueError:
        return None
    if manifest.run_id != layout.run_id:
        return None
    for digest in (manifest.train, manifest.validation):
        if not storage.exists(digest.uri):
            return None
        if hashlib.sha256(storage.read_bytes(digest.uri)).hexdigest() != digest.sha256:
            return None
    return manifest


def _prepare(spec: FineTuneTaskSpec, layout: RunLayout, storage: Storage, *, tokenizer: Any,
             max_tokens: int | None) -> Manifest:
    ds = spec.dataset
    infos = readers.list_sources(storage, ds.uri, ds.max_bytes)
    names = [i.uri for i in infos]
    log = DropLog(names, strict=ds.strict)
    limit = max_tokens or spec.training.sequence_len or DEFAULT_MAX_TOKENS
    # Strict mode stops at the first drop and a tokenizer counts every record: both keep the
    # per-record cleaner (and its dedupe) for every object. Otherwise objects the columnar path
    # can take go that way, and duplicates are found once, over all objects, at the end.
    per_record = ds.strict or tokenizer is not None
    cleaner = Cleaner(log, max_chars=ds.max_chars, tokenizer=tokenizer,
                      max_tokens=limit if tokenizer is not None else None, dedupe=per_record)
    formats: dict[str, str] = {}
    sources: list[SourceObject] = []
    batches: list[Batch] = []
    for src, info in enumerate(infos):
        data = storage.read_bytes(info.uri, max_bytes=ds.max_bytes)
        fast = None
        if not per_record and readers.extension(info.uri) == ".jsonl":
            fast = alpaca_batch(readers.without_bom(data), ds.format, src=src, log=log,
                                max_chars=ds.max_chars, seed=ds.seed, stratify_by=ds.stratify_by)
        if fast is not None:
            fmt: str | None = "alpaca"
            batch, count = fast
            formats[info.uri] = "alpaca"
            _check_mixed(ds.uri, formats)
        else:
            fmt, rows = object_format(readers.source_rows(info, data), ds.format)
            if fmt is not None:
                formats[info.uri] = fmt
                _check_mixed(ds.uri, formats)
            count = convert_into(rows, fmt, src, ds.stratify_by, cleaner.add, cleaner.malformed)
            batch = None if per_record else batch_from_examples(*cleaner.take(), seed=ds.seed)
        del data
        if count == 0:
            raise PrepareError("NoData", f"{info.uri} holds no records")
        if batch is not None and len(batch):
            batches.append(batch)
        sources.append(SourceObject(uri=info.uri, etag=info.etag, size=info.size,
                                    format=fmt or "unknown", records=count))
    if per_record:
        batches = [batch_from_examples(*cleaner.take(), seed=ds.seed)]
    records = Records(batches)
    del batches
    order, runs = records.dedupe(log)
    records_read = sum(s.records for s in sources)
    records_kept = records.kept
    if records_kept < ds.min_samples:
        raise PrepareError("TooFewSamples", f"only {records_kept} usable records of {records_read} read "
                                            f"from {ds.uri}, need minSamples {ds.min_samples} "
                                            f"(dropped: {log.summary()})")
    if ds.stratify_by and not records.any_stratum():
        raise PrepareError("BadFormat", f"stratifyBy {ds.stratify_by!r} is not a field of any record "
                                        f"in {ds.uri}")
    target = check_target(records_kept, ds.validation_fraction, ds.min_validation_samples)
    if runs:  # the answer breaks ties, so the order never depends on the input's order
        ordered = order.to_pylist()
        break_ties(ordered, runs, records.outputs)
        order = pa.array(ordered, pa.int64())
    train_index, validation_index, leaked = assign(
        order, runs, records.strata() if ds.stratify_by else None, n=records_kept, target=target,
        min_validation=ds.min_validation_samples)
    for i in leaked:  # in index order, which is reading order
        log.note("leaked", *records.where(i))
    stats = lengths_of(records, validation_index)
    train = _write(storage, layout.train, records.text, train_index)
    validation = _write(storage, layout.validation, records.text, validation_index)
    fmt = next(iter(formats.values()), ds.format)
    manifest = Manifest(
        run_id=layout.run_id,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        seed=ds.seed,
        validation_fraction=ds.validation_fraction,
        format=fmt,
        record_shape="text" if fmt == "completion" else "messages",
        sources=sources,
        records_read=records_read,
        records_kept=records_kept,
        train_samples=len(train_index),
        validation_samples=len(validation_index),
        dropped=DropCounts(empty=log.counts["empty"], duplicate=log.counts["duplicate"],
                           malformed=log.counts["malformed"], too_long=log.counts["tooLong"],
                           leaked=log.counts["leaked"]),
        drop_refs={r: refs for r, refs in log.refs.items() if refs},
        stratify_by=ds.stratify_by,
        lengths=stats,
        train=train,
        validation=validation,
    )
    storage.write_text(layout.manifest, manifest.to_json(), "application/json")
    return manifest


class Records:
    """The cleaned records of all objects, in reading order, and which of them are kept.

    Index i is the i-th record in reading order (duplicates included until dedupe() marks
    them); the split and the writer work on these indices, never on per-record objects.
    """

    def __init__(self, batches: list[Batch]) -> None:
        self.batches = batches
        self.starts: list[int] = []
        total = 0
        for b in batches:
            self.starts.append(total)
            total += len(b)
        self.n = total
        self.kept = total
        texts = [b.text for b in batches]
        self.text = (texts[0] if len(texts) == 1 else pa.concat_arrays(texts) if texts
                     else pa.array([], pa.large_binary()))
        del texts
        self.digests = b"".join(b.digests for b in batches)
        for b in batches:  # the batches keep what the split and the statistics still need
            b.text, b.digests = pa.array([], pa.large_binary()), b""
        self.keep: pa.Array | None = None  # None: all kept

    def _locate(self, i: int) -> tuple[Batch, int]:
        k = bisect.bisect_right(self.starts, i) - 1
        return self.batches[k], i - self.starts[k]

    def where(self, i: int) -> tuple[int, int]:
        """(source, line) of record i."""
        batch, j = self._locate(i)
        return (batch.src if isinstance(batch.src, int) else batch.src[j]), batch.line(j)

    def outputs(self, idx: list[int]) -> list[str]:
        out = []
        for i in idx:
            batch, j = self._locate(i)
            out.extend(batch.outputs([j]))
        return out

    def strata(self) -> list[str]:
        """The stratum of every record ("" for none), by index."""
        out: list[str] = []
        for b in self.batches:
            out.extend([s or "" for s in b.strata] if b.strata is not None else [""] * len(b))
        return out

    def any_stratum(self) -> bool:
        """Whether a kept record has a stratum."""
        strata = self.strata()
        keep = None if self.keep is None else self.keep.to_pylist()
        return any(s and (keep is None or keep[i]) for i, s in enumerate(strata))

    def dedupe(self, log: DropLog) -> tuple[pa.Array, list[tuple[int, int]]]:
        """Mark every record whose line (its prompt and answer, exactly) an earlier one already
        has as a duplicate. Only records with the same prompt digest can be duplicates, so
        just those lines are compared. Returns the kept indices sorted by digest, and their
        runs of equal digests."""
        order, runs = digest_order(self.digests)
        if not runs:
            return order, runs
        positions = pa.array([p for a, b in runs for p in range(a, b)], pa.int64())
        members = pc.take(order, positions)  # by run, and by index (reading order) within one
        # Equal lines can only be in the same run; the first of each line (lowest index) stays.
        # Dictionary codes are numbered in order of first appearance, so a member is a first
        # copy exactly when its code exceeds every code before it.
        codes = pc.cast(pc.dictionary_encode(pc.take(self.text, members)).indices, pa.int64())
        before = pa.concat_arrays([pa.array([-1], pa.int64()),
                                   pc.cumulative_max(codes).slice(0, len(codes) - 1)])
        dups = pc.filter(members, pc.less_equal(codes, before)).to_pylist()
        if not dups:
            return order, runs
        dups.sort()
        log.note_many("duplicate", len(dups), [self.where(i) for i in dups[:MAX_REFS]])
        self.keep = pc.invert(mask(self.n, dups))
        self.kept = self.n - len(dups)
        kept_order = pc.filter(order, pc.take(self.keep, order))
        if len(members) - len(dups) == len(runs):  # each run kept one record: no shared prompts
            return kept_order, []
        return kept_order, equal_runs(digest_column(self.digests), kept_order)


def _check_mixed(uri: str, formats: dict[str, str]) -> None:
    seen: dict[str, str] = {}
    for name, fmt in formats.items():
        seen.setdefault(fmt, name)
    if len(seen) > 1:
        listed = "; ".join(f"{name} is {fmt}" for fmt, name in seen.items())
        raise PrepareError("MixedFormats", f"mixed formats under {uri}: {listed}; keep one format "
                                           "per dataset or set spec.dataset.format")


def _write(storage: Storage, uri: str, text: pa.Array, order: pa.Array) -> FileDigest:
    """Write text[i] for i in order as one object; hash it."""
    picked = pc.take(text, order).cast(pa.large_binary()) if len(order) else None
    body = memoryview(b"")
    if picked is not None:
        _, offsets, data = picked.buffers()
        bounds = memoryview(offsets).cast("q")  # large_binary: int64 offsets
        start, end = bounds[picked.offset], bounds[picked.offset + len(picked)]
        body = memoryview(data or b"")[start:end]
    sha = hashlib.sha256(body).hexdigest()
    storage.write_bytes(uri, body, "application/x-ndjson")  # type: ignore[arg-type]
    return FileDigest(uri=uri, sha256=sha, records=len(order), bytes=len(body))


def _percentiles(values: Any, *percents: int) -> list[int]:
    """Nearest-rank percentiles in integers (0 when empty). Counting, not sorting: lengths
    repeat a lot."""
    values = pa.array(values, pa.int64()) if not isinstance(values, pa.Array) else values
    if len(values) == 0:
        return [0] * len(percents)
    counted = pc.value_counts(values)
    counts = sorted(zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist()))
    out = []
    for p in percents:
        rank, seen = max(1, (p * len(values) + 99) // 100), 0
        for value, count in counts:
            seen += count
            if seen >= rank:
                out.append(value)
                break
    return out


def lengths_of(records: Records, validation: pa.Array) -> LengthStats:
    """Character statistics of all kept records; output_chars_train sums the answers that went
    to train."""
    empty = pa.array([], pa.int64())
    output = pa.concat_arrays([empty] + [b.output_chars for b in records.batches])
    total = pa.concat_arrays([empty] + [b.total_chars for b in records.batches])
    validation_output = pc.sum(pc.take(output, validation)).as_py() or 0
    if records.keep is not None:
        output, total = pc.filter(output, records.keep), pc.filter(total, records.keep)
    output_train = (pc.sum(output).as_py() or 0) - validation_output
    prompt = pc.subtract(total, output)
    p50, p95 = _percentiles(prompt, 50, 95)
    o50, o95 = _percentiles(output, 50, 95)
    t50, t95, t100 = _percentiles(total, 50, 95, 100)
    return LengthStats(prompt_p50=p50, prompt_p95=p95, output_p50=o50, output_p95=o95,
                       total_p50=t50, total_p95=t95, total_max=t100, output_chars_train=output_train)
