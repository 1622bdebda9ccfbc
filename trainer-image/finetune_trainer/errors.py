"""One error type for the trainer: a reason, a one-line message, and whether the input is at
fault (EXIT_BAD_INPUT: the Job's podFailurePolicy fails it without retry) or not (EXIT_FAILED).
The codes are the contract's (finetune_contract.process), and so are the reasons
(finetune_contract.reasons: BAD_INPUT for `bad_input`, the rest of FAILURES for TrainerError;
tests/unit/test_reasons.py checks every raise site against them)."""

from __future__ import annotations

from finetune_contract import EXIT_BAD_INPUT, EXIT_FAILED, one_line


class TrainerError(Exception):
    def __init__(self, reason: str, message: str, *, bad_input: bool = False) -> None:
        super().__init__(one_line(message))
        self.reason = reason
        self.bad_input = bad_input

    @property
    def exit_code(self) -> int:
        return EXIT_BAD_INPUT if self.bad_input else EXIT_FAILED


def bad_input(reason: str, message: str) -> TrainerError:
    return TrainerError(reason, message, bad_input=True)
