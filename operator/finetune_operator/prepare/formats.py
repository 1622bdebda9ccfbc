"""Record formats: detect one per object and turn each raw row into an `Example`.

Accepted (keys of a JSON record, or columns of a CSV/parquet file):
  alpaca        instruction, output, optional input (and system): instruction and input
                become one user message
  chat          messages: [{role: system|user|assistant, content}], the last one the assistant
                answer; earlier turns are kept as the prompt
  input_output  prompt + completion, or input + output
  completion    text (trained on whole)

`auto` detects per object (from the columns, or the first JSON record that fits a format);
the pipeline refuses objects of different formats under one prefix. A row that does not fit
its object's format is malformed, never silently reinterpreted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .errors import PrepareError
from .readers import SourceRows, Unparsable

FORMATS = ("alpaca", "chat", "input_output", "completion")
ROLES = frozenset(("system", "user", "assistant"))
FORMAT_HELP = ("alpaca (instruction, output[, input]), chat (messages), input_output "
               "(prompt+completion or input+output), completion (text)")

Prompt = tuple[tuple[str, str], ...]  # (role, content) turns before the answer


@dataclass(slots=True)
class Example:
    """One record in a normalized shape: prompt turns (empty for completion) and the answer.

    `src` indexes the pipeline's source list and `line` is the row reference, so an
    `object:line` string is only built for the few records that are reported.
    """

    prompt: Prompt
    output: str
    src: int
    line: int
    stratum: str | None = None
    chars: int = 0  # prompt + answer characters, counted once by the cleaner


class Bad(Exception):
    """A row that does not fit its format (rare path: exceptions are fine here)."""


def detect(keys: Iterable[str]) -> str | None:
    """The format a set of keys or columns fits, or None."""
    k = set(keys)
    if "messages" in k:
        return "chat"
    if "instruction" in k and "output" in k:
        return "alpaca"
    if ("prompt" in k and "completion" in k) or ("input" in k and "output" in k):
        return "input_output"
    if "text" in k:
        return "completion"
    return None


def text(value: Any, name: str) -> str:
    """A field as text: strings as is, numbers as written, null as empty; anything else is bad.

    Numbers are kept as their text so an answer such as `2017` or `3.50` is not lost. Strings
    need no Unicode check: orjson, the CSV reader and pyarrow only produce valid text.
    """
    if type(value) is str:
        return value
    if value is None:
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise Bad(f"{name} is a {type(value).__name__}, expected text")


def _field(rec: dict[str, Any], key: str) -> str:
    try:
        value = rec[key]
    except KeyError:
        raise Bad(f"missing field {key!r}") from None
    return value if type(value) is str else text(value, key)


def alpaca(rec: dict[str, Any]) -> tuple[Prompt, str]:
    try:
        instruction, output = rec["instruction"], rec["output"]
    except KeyError as err:
        raise Bad(f"missing field {err.args[0]!r}") from None
    if type(instruction) is not str:
        instruction = text(instruction, "instruction")
    if type(output) is not str:
        output = text(output, "output")
    extra = rec.get("input")
    if extra is not None and type(extra) is not str:
        extra = text(extra, "input")
    user = f"{instruction}\n\n{extra}" if extra and not extra.isspace() else instruction
    system = rec.get("system")
    if system is None:
        return (("user", user),), output
    system = text(system, "system")
    prompt: Prompt = (("system", system), ("user", user)) if system.strip() else (("user", user),)
    return prompt, output


def chat(rec: dict[str, Any]) -> tuple[Prompt, str]:
    messages = rec.get("messages")
    if not isinstance(messages, list) or not messages:
        raise Bad("messages must be a non-empty list")
    turns = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise Bad(f"messages[{i}] is not an object")
        role = m.get("role")
        if role not in ROLES:
            raise Bad(f"messages[{i}].role is {role!r}, expected system, user or assistant")
        turns.append((role, text(m.get("content"), f"messages[{i}].content")))
    if turns[-1][0] != "assistant":
        raise Bad("the last message is not the assistant's answer")
    if not any(role == "user" for role, _ in turns[:-1]):
        raise Bad("no user message before the answer")
    return tuple(turns[:-1]), turns[-1][1]


def input_output(rec: dict[str, Any]) -> tuple[Prompt, str]:
    if "prompt" in rec or "completion" in rec:
        return (("user", _field(rec, "prompt")),), _field(rec, "completion")
    return (("user", _field(rec, "input")),), _field(rec, "output")


def completion(rec: dict[str, Any]) -> tuple[Prompt, str]:
    return (), _field(rec, "text")


CONVERTERS = {"alpaca": alpaca, "chat": chat, "input_output": input_output, "completion": completion}


def object_format(source: SourceRows, wanted: str) -> tuple[str | None, Iterator[Any]]:
    """The format of one object and its rows (a peeked row is put back in front).

    None means no row could be parsed at all (every row is then counted as malformed).
    """
    uri = source.info.uri
    if source.columns is not None:
        found = detect(source.columns)
        fmt = found if wanted == "auto" else wanted
        if found is None or (wanted != "auto" and not _columns_fit(source.columns, wanted)):
            need = FORMAT_HELP if wanted == "auto" else wanted
            raise PrepareError("BadFormat", f"{uri}: columns {', '.join(source.columns) or '(none)'} "
                                            f"fit no format; need {need}")
        return fmt, source.rows
    if wanted != "auto":
        return wanted, source.rows
    peeked: list[Any] = []
    fmt = None
    first_keys: list[str] | None = None
    line = 0
    for row in source.rows:
        peeked.append(row)
        value = row[1]
        if isinstance(value, dict):
            fmt = detect(value)
            if fmt is not None:
                break
            if first_keys is None:
                first_keys, line = sorted(map(str, value)), row[0]
    if fmt is None and first_keys is not None:
        raise PrepareError("BadFormat", f"{uri}:{line}: records with keys {', '.join(first_keys) or '(none)'} "
                                        f"fit no format; need {FORMAT_HELP}")
    return fmt, _chain(peeked, source.rows)


def _columns_fit(columns: list[str], fmt: str) -> bool:
    c = set(columns)
    return {"alpaca": {"instruction", "output"} <= c, "chat": "messages" in c,
            "input_output": {"prompt", "completion"} <= c or {"input", "output"} <= c,
            "completion": "text" in c}[fmt]


def _chain(first: list[Any], rest: Iterator[Any]) -> Iterator[Any]:
    yield from first
    yield from rest


def convert_into(rows: Iterator[Any], fmt: str | None, src: int, stratify_by: str | None,
                 add: Callable[..., None], malformed: Callable[[int, int, str], None]) -> int:
    """Convert each row and hand it on: `add(prompt, answer, src, line, stratum)` for a record,
    `malformed(src, line, reason)` for a row that does not fit. Returns the rows seen.

    Callbacks rather than one more generator layer: this loop runs once per record.
    """
    convert_one = CONVERTERS[fmt] if fmt else None
    n = 0
    for line, value in rows:
        n += 1
        if type(value) is not dict or convert_one is None:
            malformed(src, line, _not_a_record(value))
            continue
        try:
            prompt, output = convert_one(value)
        except Bad as err:
            malformed(src, line, f"{err} (format {fmt})")
            continue
        if stratify_by is None:
            add(prompt, output, src, line, None)
        else:
            raw = value.get(stratify_by)
            add(prompt, output, src, line, "" if raw is None else str(raw))
    return n


def _not_a_record(value: Any) -> str:
    if type(value) is Unparsable:
        return value.detail
    if not isinstance(value, dict):
        return f"a JSON {type(value).__name__}, expected an object"
    return "fits no format"
