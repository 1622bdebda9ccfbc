"""Reasons the trainer writes in its termination message (`TerminationMessage.reason`).

The operator copies a failed trainer's reason into the task's `Trained` condition, its Warning
Event and the `reason` label of `finetune_runs_finished_total` (the FineTuneRunFailed alert);
the local runner does the same with the local trainer process. One definition here, used by
both sides, like Kubeflow Trainer's reason constants in `trainjob_types.go`; the operator's own
reasons are in `finetune_operator.reasons`, and docs/runbook.md explains every one of them (a
unit test checks the two agree).

`bad input` reasons come with exit code 2 (the Job's podFailurePolicy fails the Job without a
retry), the others with exit 1 (retried up to the Job's backoffLimit).
"""

from __future__ import annotations

from typing import Final

SUCCEEDED: Final = "Succeeded"            # ok=True: metrics.json and COMPLETE are written

# ---- bad input (exit 2) -------------------------------------------------------------------
BAD_RUN_URI: Final = "BadRunUri"          # --run-uri is not <root>/<ns>/<task>/<run>/
BAD_CONFIG: Final = "BadConfig"           # the rendered config is unreadable or rejected
BAD_MANIFEST: Final = "BadManifest"       # data/manifest.json does not parse
MISSING_INPUT: Final = "MissingInput"     # a split, the manifest or the config is absent
SPLIT_MISMATCH: Final = "SplitMismatch"   # a split's sha256 differs from the manifest's
NO_DATA: Final = "NoData"                 # a split has no records
MALFORMED: Final = "Malformed"            # a split's record is not the prepared shape
BAD_ROLES: Final = "BadRoles"             # a chat record's roles cannot be trained on
MODEL_NOT_FOUND: Final = "ModelNotFound"  # the base model is not a path, prefix or hub id
NO_WEIGHTS: Final = "NoWeights"           # the base model has no config.json or weights
NO_TOKENIZER: Final = "NoTokenizer"       # no tokenizer loads from the base model
NO_CHAT_TEMPLATE: Final = "NoChatTemplate"    # chat records, tokenizer without a template
BAD_CHAT_TEMPLATE: Final = "BadChatTemplate"  # the chat template cannot render a record
BAD_WORLD: Final = "BadWorld"             # the process group's env is inconsistent, or search
                                          # asked of a multi-node run

# ---- anything else (exit 1) ---------------------------------------------------------------
STORAGE: Final = "Storage"                # S3 failed (credentials, endpoint, bucket)
MODEL_DOWNLOAD: Final = "ModelDownload"   # the hub download of the base model failed
OUT_OF_MEMORY: Final = "OutOfMemory"      # Axolotl ran out of (GPU) memory
TRAINING_FAILED: Final = "TrainingFailed"  # Axolotl exited non-zero for another cause
NO_CHECKPOINT: Final = "NoCheckpoint"     # Axolotl wrote no usable adapter checkpoint
INTERNAL: Final = "Internal"              # an unexpected error (traceback in the work dir)

BAD_INPUT: Final[frozenset[str]] = frozenset({
    BAD_RUN_URI, BAD_CONFIG, BAD_MANIFEST, MISSING_INPUT, SPLIT_MISMATCH, NO_DATA, MALFORMED,
    BAD_ROLES, MODEL_NOT_FOUND, NO_WEIGHTS, NO_TOKENIZER, NO_CHAT_TEMPLATE, BAD_CHAT_TEMPLATE,
    BAD_WORLD})
FAILURES: Final[frozenset[str]] = BAD_INPUT | {
    STORAGE, MODEL_DOWNLOAD, OUT_OF_MEMORY, TRAINING_FAILED, NO_CHECKPOINT, INTERNAL}
ALL: Final[frozenset[str]] = FAILURES | {SUCCEEDED}
