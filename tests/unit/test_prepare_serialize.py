"""Serialization: each line equals json.dumps(record, ensure_ascii=False, sort_keys=True)."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from finetune_operator.prepare.formats import Example
from finetune_operator.prepare.serialize import line, record

_text = st.text()  # every code point class, including controls, quotes, U+2028 and astral


@settings(max_examples=200, deadline=None)
@given(turns=st.lists(st.tuples(st.sampled_from(["system", "user", "assistant"]), _text),
                      max_size=4), answer=_text)
def test_lines_match_json_dumps(turns: list, answer: str) -> None:
    ex = Example(tuple(turns), answer, 0, 1)
    expected = json.dumps(record(ex), ensure_ascii=False, sort_keys=True)
    assert line(ex) == expected
    assert json.loads(line(ex)) == record(ex)


def test_record_shapes() -> None:
    assert record(Example((("user", "q"),), "a", 0, 1)) == {
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    assert record(Example((), "t", 0, 1)) == {"text": "t"}
    assert line(Example((), 'say "hi"\n', 0, 1)) == '{"text": "say \\"hi\\"\\n"}'
