"""The run contract: what the operator, the trainer and the local runner agree on.

Installed in both images and imported by both sides (pydantic and boto3 only, no torch, no
Kopf). `run` holds the S3 layout and the typed files of a run; `storage` the S3 client and URIs.
"""

from .run import (BUDGET_KEY, CONFIG_KEY_PREFIX, DROP_REASONS, SCHEMA_VERSION, SEARCH_KEY,
                  TERMINATION_LOG_LIMIT, DropCounts, EvalPoint, ExactMatch, FileDigest,
                  LengthStats, Manifest, Metrics, RunLayout, SearchCandidate, SearchReport,
                  SourceObject, TerminationMessage, TrainPoint, Verdicts, one_line)

__all__ = ["BUDGET_KEY", "CONFIG_KEY_PREFIX", "DROP_REASONS", "SCHEMA_VERSION", "SEARCH_KEY",
           "TERMINATION_LOG_LIMIT", "DropCounts", "EvalPoint", "ExactMatch", "FileDigest",
           "LengthStats", "Manifest", "Metrics", "RunLayout", "SearchCandidate", "SearchReport",
           "SourceObject", "TerminationMessage", "TrainPoint", "Verdicts", "one_line"]
