"""Every condition reason, Event reason and run-metric label value the operator and the local
runner write, as constants (like Kubeflow Trainer's `trainjob_types.go`): no other module spells
one out. A failed trainer's reasons are the contract's (`finetune_contract.reasons`), shared with
the trainer that writes them; data preparation's are `PrepareError.REASONS` (same values here).

docs/operator.md (every reason but a failure's) and docs/runbook.md (every reason a run can fail
with, the `reason` label of the FineTuneRunFailed alert) each have a table of them; a unit test
checks that the tables and these constants name the same reasons.
"""

from __future__ import annotations

from typing import Final, Literal

from finetune_contract import reasons as trainer
from finetune_contract.reasons import MALFORMED, NO_DATA, STORAGE

# ---- a run under way: Ready=False carries the phase as its reason -------------------------
PENDING: Final = "Pending"
PREPARING: Final = "Preparing"
TRAINING: Final = "Training"
SUSPENDED: Final = "Suspended"          # also JobCreated=False before launch, and its Event

# ---- steps done (condition True) or in progress (Unknown) ----------------------------------
PREPARED: Final = "Prepared"            # DataReady=True
RENDERED: Final = "Rendered"            # ConfigRendered=True
CREATED: Final = "Created"              # JobCreated=True
RUNNING: Final = "Running"              # Trained=Unknown: the trainer pod runs
COMPLETED: Final = "Completed"          # Trained=True
RETRYING: Final = "Retrying"            # an outage (S3, API): retried in 15 s
SECRET_NOT_FOUND: Final = "SecretNotFound"  # DataReady=False: waits for the Secret, never fails

# ---- Succeeded: the verdict (Evaluated, Ready) ----------------------------------------------
IMPROVED: Final = "Improved"
OVERFIT: Final = "Overfit"
NO_GAIN: Final = "NoGain"               # Succeeded, but Ready=False: not worth serving

# ---- Skipped -------------------------------------------------------------------------------
INFREQUENT: Final = "Infrequent"        # spec.infrequent: data prepared and checked, no Job
TOO_FEW_SAMPLES: Final = "TooFewSamples"  # fewer clean records than spec.dataset.minSamples

# ---- Failed: the spec, the config, the operator's own reading of the run --------------------
INVALID_SPEC: Final = "InvalidSpec"
POLICY_VIOLATION: Final = "PolicyViolation"  # the admin's policy (policy.REASON)
INVALID_CONFIG: Final = "InvalidConfig"
SECRET_IN_CONFIG: Final = "SecretInConfig"
JOB_LOST: Final = "JobLost"
METRICS_MISSING: Final = "MetricsMissing"
BAD_METRICS: Final = "BadMetrics"
JOB_FAILED: Final = "JobFailed"         # the Job failed and neither it nor the trainer said why

# ---- Failed: data preparation (PrepareError.reason; TooFewSamples skips instead) -------------
TOO_LARGE: Final = "TooLarge"
MIXED_FORMATS: Final = "MixedFormats"
BAD_FORMAT: Final = "BadFormat"
TOO_FEW_VALIDATION: Final = "TooFewValidation"
PREPARE: Final[frozenset[str]] = frozenset({
    NO_DATA, TOO_LARGE, MIXED_FORMATS, BAD_FORMAT, MALFORMED, TOO_FEW_SAMPLES,
    TOO_FEW_VALIDATION, STORAGE})

# ---- Failed: the Job's own Failed condition, when the trainer wrote no termination message --
POD_FAILURE_POLICY: Final = "PodFailurePolicy"          # exit 2: bad input, not retried
BACKOFF_LIMIT_EXCEEDED: Final = "BackoffLimitExceeded"  # crashed backoffLimit + 1 times
DEADLINE_EXCEEDED: Final = "DeadlineExceeded"           # ran past activeDeadlineSeconds

# ---- Failed: what the trainer's pod says (podstate.py), when the trainer could not -----------
OOM_KILLED: Final = "OOMKilled"              # killed at the memory limit (or exit 137)
GPU_NOT_FOUND: Final = "GpuNotFound"         # the kubelet's device plugin or CUDA found no GPU
# These two also stand in Trained=Unknown while the pod waits; the run fails after the
# operator's FINETUNE_IMAGE_PULL_TIMEOUT / FINETUNE_UNSCHEDULABLE_TIMEOUT.
IMAGE_PULL_FAILED: Final = "ImagePullFailed"  # ErrImagePull / ImagePullBackOff
UNSCHEDULABLE: Final = "Unschedulable"        # PodScheduled=False: no node fits the pod
POD: Final[frozenset[str]] = frozenset({OOM_KILLED, GPU_NOT_FOUND, IMAGE_PULL_FAILED,
                                        UNSCHEDULABLE})

# ---- Failed: local runs only -----------------------------------------------------------------
INTERRUPTED: Final = "Interrupted"      # Ctrl-C or SIGTERM stopped the trainer
TRAINER_FAILED: Final = "TrainerFailed"  # the trainer exited non-zero without a message

# ---- Events of their own (Normal) ------------------------------------------------------------
RUN_STARTED: Final = "RunStarted"
DATA_READY: Final = "DataReady"
JOB_CREATED: Final = "JobCreated"
SUPERSEDED: Final = "Superseded"        # a spec change deleted the previous run's Job

# ---- the `result` label of finetune_runs_finished_total and finetune_run_duration_seconds ----
Result = Literal["succeeded", "failed", "skipped"]
RESULT_SUCCEEDED: Final = "succeeded"
RESULT_FAILED: Final = "failed"          # the FineTuneRunFailed alert selects this one
RESULT_SKIPPED: Final = "skipped"
RESULTS: Final[tuple[Result, ...]] = (RESULT_SUCCEEDED, RESULT_FAILED, RESULT_SKIPPED)

# ---- groups --------------------------------------------------------------------------------
UNDER_WAY: Final = frozenset({PENDING, PREPARING, TRAINING, SUSPENDED, PREPARED, RENDERED,
                              CREATED, RUNNING, COMPLETED, RETRYING, SECRET_NOT_FOUND})
VERDICTS: Final = frozenset({IMPROVED, OVERFIT, NO_GAIN})
SKIPS: Final = frozenset({INFREQUENT, TOO_FEW_SAMPLES})
EVENTS: Final = frozenset({RUN_STARTED, DATA_READY, JOB_CREATED, SUPERSEDED})
# Every reason a Failed run can carry (docs/runbook.md explains each one).
FAILURES: Final = (frozenset({INVALID_SPEC, POLICY_VIOLATION, INVALID_CONFIG, SECRET_IN_CONFIG,
                              JOB_LOST, METRICS_MISSING, BAD_METRICS, JOB_FAILED,
                              POD_FAILURE_POLICY, BACKOFF_LIMIT_EXCEEDED, DEADLINE_EXCEEDED,
                              INTERRUPTED, TRAINER_FAILED})
                   | POD | (PREPARE - SKIPS) | trainer.FAILURES)
# Every reason written anywhere (the trainer's `Succeeded` is its termination message only).
ALL: Final = UNDER_WAY | VERDICTS | SKIPS | EVENTS | FAILURES | {trainer.SUCCEEDED}
