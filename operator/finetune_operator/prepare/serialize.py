"""Prepared records as bytes: the contract's shape, byte-identical on any machine.

Lines equal `json.dumps(record, ensure_ascii=False, sort_keys=True)` (a unit test holds them
to it); they are assembled from the stdlib's own string encoder because building a dict and
sorting its keys per record was the hot spot of a million-record run.
"""

from __future__ import annotations

from json.encoder import encode_basestring  # the C encoder json.dumps(ensure_ascii=False) uses

from .formats import Example


def record(ex: Example) -> dict:
    """The contract record as a dict (for tests and readers)."""
    if not ex.prompt:
        return {"text": ex.output}
    return {"messages": [{"role": r, "content": c} for r, c in ex.prompt]
            + [{"role": "assistant", "content": ex.output}]}


_ONE_TURN = '{"messages": [{"content": %s, "role": "%s"}, {"content": %s, "role": "assistant"}]}'


def line(ex: Example, _enc=encode_basestring) -> str:
    """One JSONL line (without the newline)."""
    prompt = ex.prompt
    if len(prompt) == 1:
        return _ONE_TURN % (_enc(prompt[0][1]), prompt[0][0], _enc(ex.output))
    if not prompt:
        return '{"text": ' + _enc(ex.output) + "}"
    parts = ['{"content": ' + _enc(c) + ', "role": "' + r + '"}' for r, c in ex.prompt]
    parts.append('{"content": ' + _enc(ex.output) + ', "role": "assistant"}')
    return '{"messages": [' + ", ".join(parts) + "]}"
