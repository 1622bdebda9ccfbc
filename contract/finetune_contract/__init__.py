"""The run contract: what the operator, the trainer and the local runner agree on.

Installed in both images and imported by both sides (pydantic and boto3 only, no torch, no
Kopf). `run` holds the S3 layout and the typed files of a run; `budget` the budget and search
plan carried in the rendered config; `process` the trainer's exit codes, progress lines and
environment; `storage` the S3 client and URIs; `checkpoint` the checkpoint marker and resume
history; `tracker` progress.json (RunProgress) folded from the progress lines.
"""

from .budget import (SEQ_FIT_CAP, SEQ_MIN, SEQ_ROUND, Budget, MeasuredBudget,
                     SearchCandidatePlan, SearchPlan, round_up, sequence_len_for)
from .checkpoint import (CheckpointFile, CheckpointMarker, EarlyStoppingState, ResumeHistory,
                         ResumeRecord)
from .process import (EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED,
                      OFFLINE_ENV, PROGRESS_PREFIX, TRAINER_ENV, ProgressEvent)
from .run import (BUDGET_KEY, CONFIG_KEY_PREFIX, DROP_REASONS, SCHEMA_VERSION, SEARCH_KEY,
                  TERMINATION_LOG_LIMIT, DropCounts, EvalPoint, ExactMatch, FileDigest,
                  LengthStats, Manifest, Metrics, RunLayout, RunProgress, SearchCandidate, SearchReport,
                  SourceObject, TerminationMessage, TrainPoint, Verdicts, one_line)
from .scores import (FieldScore, JsonScores, LabelRow, LabelScores, ShapeScores, TaskScores,
                     TextScores)
from .tracker import ProgressTracker

__all__ = ["BUDGET_KEY", "CONFIG_KEY_PREFIX", "DROP_REASONS", "EXIT_BAD_INPUT", "EXIT_FAILED",
           "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_TERMINATED", "OFFLINE_ENV", "PROGRESS_PREFIX",
           "SCHEMA_VERSION", "SEARCH_KEY", "SEQ_FIT_CAP", "SEQ_MIN", "SEQ_ROUND",
           "TERMINATION_LOG_LIMIT", "TRAINER_ENV", "Budget", "DropCounts", "EvalPoint",
           "ExactMatch", "FileDigest", "LengthStats", "Manifest", "MeasuredBudget", "Metrics",
           "ProgressEvent", "RunLayout", "RunProgress", "SearchCandidate", "SearchCandidatePlan", "SearchPlan",
           "SearchReport", "SourceObject", "TerminationMessage", "TrainPoint", "Verdicts",
           "FieldScore", "JsonScores", "LabelRow", "LabelScores", "ShapeScores", "TaskScores",
           "TextScores", "CheckpointFile", "CheckpointMarker", "EarlyStoppingState",
           "ProgressTracker", "ResumeHistory", "ResumeRecord",
           "one_line", "round_up", "sequence_len_for"]
