"""prepare_run: dataset URI -> clean, seeded split -> train.jsonl, validation.jsonl, manifest.json.

Steps: list (size cap from listed sizes) -> read each object -> detect its format -> parse ->
clean -> gate on minSamples -> split -> write both files, then the manifest last, so a
manifest that exists always describes complete files. A run whose manifest still matches both
files (by sha256) is returned as is: retries and operator restarts redo no work. The source
objects are only ever read.
"""

from __future__ import annotations

import gc
import hashlib
import io
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

from finetune_contract import DropCounts, FileDigest, LengthStats, Manifest, RunLayout, SourceObject
from ..spec import FineTuneTaskSpec
from finetune_contract.storage import Storage, StorageError
from . import readers, serialize
from .clean import Cleaner, DropLog
from .errors import PrepareError
from .formats import convert_into, object_format
from .split import Split, split

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
        with _no_cyclic_gc():
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
    cleaner = Cleaner(log, max_chars=ds.max_chars, tokenizer=tokenizer,
                      max_tokens=limit if tokenizer is not None else None)
    formats: dict[str, str] = {}
    sources: list[SourceObject] = []
    for src, info in enumerate(infos):
        fmt, rows = object_format(readers.open_source(storage, info, ds.max_bytes), ds.format)
        if fmt is not None:
            formats[info.uri] = fmt
            _check_mixed(ds.uri, formats)
        count = convert_into(rows, fmt, src, ds.stratify_by, cleaner.add, cleaner.malformed)
        if count == 0:
            raise PrepareError("NoData", f"{info.uri} holds no records")
        sources.append(SourceObject(uri=info.uri, etag=info.etag, size=info.size,
                                    format=fmt or "unknown", records=count))
    kept = cleaner.finish()
    records_read = sum(s.records for s in sources)
    if len(kept) < ds.min_samples:
        raise PrepareError("TooFewSamples", f"only {len(kept)} usable records of {records_read} read "
                                            f"from {ds.uri}, need minSamples {ds.min_samples} "
                                            f"(dropped: {log.summary()})")
    if ds.stratify_by and not any(ex.stratum for ex in kept):
        raise PrepareError("BadFormat", f"stratifyBy {ds.stratify_by!r} is not a field of any record "
                                        f"in {ds.uri}")
    parts = split(kept, fraction=ds.validation_fraction, seed=ds.seed,
                  min_validation=ds.min_validation_samples, stratify=bool(ds.stratify_by))
    for ex in parts.leaked:
        log.note("leaked", ex.src, ex.line)
    stats = lengths(parts, cleaner.output_chars, cleaner.total_chars)
    records_kept = len(kept)
    line = serialize.line
    # In memory order (see Split), as UTF-8 bytes: a str with one CJK character stores every
    # character in 2 bytes. This list is the price of the memory-order speed-up (~0.4 GiB per
    # million records); the peak stays well under the 2 GiB target.
    lines: list[bytes | None] = [(line(ex) + "\n").encode("utf-8") for ex in kept]
    train = _write(storage, layout.train, lines, parts.train_index)
    validation = _write(storage, layout.validation, lines, parts.validation_index)
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
        train_samples=len(parts.train_index),
        validation_samples=len(parts.validation_index),
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


def _check_mixed(uri: str, formats: dict[str, str]) -> None:
    seen: dict[str, str] = {}
    for name, fmt in formats.items():
        seen.setdefault(fmt, name)
    if len(seen) > 1:
        listed = "; ".join(f"{name} is {fmt}" for fmt, name in seen.items())
        raise PrepareError("MixedFormats", f"mixed formats under {uri}: {listed}; keep one format "
                                           "per dataset or set spec.dataset.format")


def _write(storage: Storage, uri: str, lines: list[bytes | None], order: list[int],
           chunk: int = 8192) -> FileDigest:
    """Write lines[i] for i in order, releasing each line once it is in the file (so the lines
    and the file are never both whole in memory); hash as we go."""
    buf, sha = io.BytesIO(), hashlib.sha256()
    for start in range(0, len(order), chunk):
        picked = order[start:start + chunk]
        part = b"".join([lines[i] for i in picked])  # type: ignore[misc]
        for i in picked:
            lines[i] = None
        sha.update(part)
        buf.write(part)
    body = buf.getvalue()
    del buf
    storage.write_bytes(uri, body, "application/x-ndjson")
    return FileDigest(uri=uri, sha256=sha.hexdigest(), records=len(order), bytes=len(body))


def _percentiles(values: list[int], *percents: int) -> list[int]:
    """Nearest-rank percentiles in integers (0 when empty). Counting, not sorting: lengths
    repeat a lot, and this runs over every kept record."""
    if not values:
        return [0] * len(percents)
    counts = sorted(Counter(values).items())
    out = []
    for p in percents:
        rank, seen = max(1, (p * len(values) + 99) // 100), 0
        for value, count in counts:
            seen += count
            if seen >= rank:
                out.append(value)
                break
    return out


def lengths(parts: Split, output: list[int], total: list[int]) -> LengthStats:
    """Character statistics of all kept records (`output` and `total` hold one entry per kept
    record, in any order); output_chars_train sums the answers that went to train."""
    output_train = sum(output) - sum([len(ex.output) for ex in parts.validation])
    prompt = [t - o for t, o in zip(total, output)]
    p50, p95 = _percentiles(prompt, 50, 95)
    o50, o95 = _percentiles(output, 50, 95)
    t50, t95, t100 = _percentiles(total, 50, 95, 100)
    return LengthStats(prompt_p50=p50, prompt_p95=p95, output_p50=o50, output_p95=o95,
                       total_p50=t50, total_p95=t95, total_max=t100, output_chars_train=output_train)
