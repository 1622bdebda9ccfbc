"""Data preparation: a task's samples in S3 -> a clean, seeded, leak-free train/validation split.

Modules, in the order data flows: readers (list, size cap, rows), formats (detect, convert),
clean (normalize, drop by reason), split (seeded, grouped by prompt), serialize (bytes),
pipeline (prepare_run and the manifest); columnar (with jsonl_table, which reads the object
into columns) does readers..serialize for alpaca JSONL objects with pyarrow, byte-identically.
"""

from .errors import PrepareError
from .pipeline import prepare_run

__all__ = ["PrepareError", "prepare_run"]
