"""One error type for the trainer: a CamelCase reason, a one-line message, and whether the input
is at fault (exit 2: the Job's podFailurePolicy fails it without retry) or not (exit 1)."""

from __future__ import annotations

from finetune_contract import one_line

EXIT_OK, EXIT_RETRYABLE, EXIT_BAD_INPUT = 0, 1, 2


class TrainerError(Exception):
    def __init__(self, reason: str, message: str, *, bad_input: bool = False) -> None:
        super().__init__(one_line(message))
        self.reason = reason
        self.bad_input = bad_input

    @property
    def exit_code(self) -> int:
        return EXIT_BAD_INPUT if self.bad_input else EXIT_RETRYABLE


def bad_input(reason: str, message: str) -> TrainerError:
    return TrainerError(reason, message, bad_input=True)
