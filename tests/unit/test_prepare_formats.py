"""Formats: detection from keys/columns and conversion of one raw row to (prompt, answer)."""

from __future__ import annotations

import pytest

from finetune_operator.prepare.formats import CONVERTERS, Bad, detect, text


@pytest.mark.parametrize(("keys", "expected"), [
    ({"instruction", "input", "output"}, "alpaca"),
    ({"instruction", "output"}, "alpaca"),
    ({"messages"}, "chat"),
    ({"messages", "id"}, "chat"),
    ({"prompt", "completion"}, "input_output"),
    ({"input", "output"}, "input_output"),
    ({"text"}, "completion"),
    ({"text", "label"}, "completion"),
    ({"question", "answer"}, None),
    ({"instruction"}, None),
    (set(), None),
])
def test_detect(keys: set[str], expected: str | None) -> None:
    assert detect(keys) == expected


@pytest.mark.parametrize(("fmt", "row", "prompt", "answer"), [
    ("alpaca", {"instruction": "Classify", "input": "printer jam", "output": "hardware"},
     (("user", "Classify\n\nprinter jam"),), "hardware"),
    ("alpaca", {"instruction": "Say hi", "input": "", "output": "hi"}, (("user", "Say hi"),), "hi"),
    ("alpaca", {"instruction": "Say hi", "output": "hi"}, (("user", "Say hi"),), "hi"),
    ("alpaca", {"instruction": "Q", "input": None, "output": 2017}, (("user", "Q"),), "2017"),
    ("alpaca", {"system": "Be terse", "instruction": "Q", "output": "A"},
     (("system", "Be terse"), ("user", "Q")), "A"),
    ("chat", {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                           {"role": "assistant", "content": "A"}]},
     (("system", "S"), ("user", "U")), "A"),
    ("chat", {"messages": [{"role": "user", "content": "U1"}, {"role": "assistant", "content": "A1"},
                           {"role": "user", "content": "U2"}, {"role": "assistant", "content": "A2"}]},
     (("user", "U1"), ("assistant", "A1"), ("user", "U2")), "A2"),
    ("input_output", {"prompt": "P", "completion": "C"}, (("user", "P"),), "C"),
    ("input_output", {"input": "I", "output": "O"}, (("user", "I"),), "O"),
    ("input_output", {"input": "I", "output": 3.5}, (("user", "I"),), "3.5"),
    ("completion", {"text": "once upon a time"}, (), "once upon a time"),
])
def test_convert(fmt: str, row: dict, prompt: tuple, answer: str) -> None:
    assert CONVERTERS[fmt](row) == (prompt, answer)


@pytest.mark.parametrize(("fmt", "row", "why"), [
    ("alpaca", {"instruction": "Q"}, "missing field 'output'"),
    ("alpaca", {"instruction": ["Q"], "output": "A"}, "instruction is a list"),
    ("alpaca", {"instruction": "Q", "output": {"a": 1}}, "output is a dict"),
    ("alpaca", {"instruction": "Q", "output": True}, "output is a bool"),
    ("chat", {"messages": []}, "non-empty list"),
    ("chat", {"messages": "hi"}, "non-empty list"),
    ("chat", {"messages": ["hi"]}, "messages[0] is not an object"),
    ("chat", {"messages": [{"role": "bot", "content": "x"}]}, "messages[0].role is 'bot'"),
    ("chat", {"messages": [{"role": "user", "content": "x"}]}, "not the assistant's answer"),
    ("chat", {"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]},
     "no user message"),
    ("input_output", {"prompt": "P"}, "missing field 'completion'"),
    ("completion", {"body": "x"}, "missing field 'text'"),
])
def test_rows_that_do_not_fit_say_why(fmt: str, row: dict, why: str) -> None:
    with pytest.raises(Bad, match=why.replace("[", r"\[").replace("]", r"\]")):
        CONVERTERS[fmt](row)


@pytest.mark.parametrize(("value", "expected"), [
    ("x", "x"), (None, ""), (7, "7"), (0.25, "0.25"), ("2017-10-21", "2017-10-21"),
])
def test_text_keeps_numbers_as_written(value: object, expected: str) -> None:
    assert text(value, "f") == expected
