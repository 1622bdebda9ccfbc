"""PrepareError: the one exception data preparation raises, with a reason the operator maps to
a condition (TooFewSamples -> Skipped, Storage+transient -> retry, anything else -> Failed).

Why one class with a `reason` string rather than a hierarchy: the operator, the CLI and the
status writer only need the reason, the one-line message and whether a retry may help.
"""

from __future__ import annotations

from finetune_contract import one_line

REASONS = ("NoData", "TooLarge", "MixedFormats", "BadFormat", "Malformed", "TooFewSamples",
           "TooFewValidation", "Storage")


class PrepareError(Exception):
    """A dataset that cannot be prepared. str() is one line naming the object (and line)."""

    def __init__(self, reason: str, message: str, transient: bool = False) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown PrepareError reason {reason!r}")
        self.reason = reason
        self.message = one_line(message, limit=600)
        self.transient = transient
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"PrepareError({self.reason!r}, {self.message!r}, transient={self.transient})"
