"""SSE parsing, tool-call accumulation and usage sums, without sockets."""

from __future__ import annotations

import pytest

from gateway.stream import (
    EventTooLarge,
    SSEParser,
    StreamMerger,
    ToolCallAccumulator,
    add_usage,
)


def test_parser_handles_split_lines_multiline_data_comments_and_crlf():
    p = SSEParser()
    out = list(p.feed(b'data: {"a"')) + list(p.feed(b": 1}\r\n\r\n: keepalive\n\n"))
    out += list(p.feed(b"event: x\nid: 3\ndata: line1\ndata:line2\n\ndata: [DONE]"))
    out += list(p.close())
    assert out == [b'{"a": 1}', b"line1\nline2", b"[DONE]"]


def test_parser_keeps_a_long_line_in_pieces_and_joins_it_once():
    p = SSEParser()
    for _ in range(10_000):  # a 1 MB line in 100-byte chunks: never re-copied per chunk
        assert list(p.feed(b"x" * 100)) == []
    assert len(p._partial) == 10_000 and p._partial_size == 1_000_000
    out = list(p.feed(b"\n\n"))
    assert out == [] and not p._partial  # not a data line: dropped, nothing kept
    assert list(SSEParser().feed(b"data: " + b"y" * 500 + b"\n\n")) == [b"y" * 500]


@pytest.mark.parametrize(
    "chunks",
    [
        [b"data: " + b"x" * 600],  # one line without its end
        [b"data: " + b"x" * 300 + b"\n", b"data: " + b"x" * 300 + b"\n"],  # one event
    ],
)
def test_parser_refuses_an_event_past_its_cap(chunks):
    p = SSEParser(max_event=500)
    with pytest.raises(EventTooLarge):
        for c in chunks:
            list(p.feed(c))


def test_accumulator_merges_fragments_and_tolerates_quirks():
    acc = ToolCallAccumulator()
    acc.add([{"index": 0, "id": "a", "function": {"name": "f", "arguments": '{"x"'}}])
    acc.add([{"index": 0, "function": {"arguments": ": 1}"}}])
    acc.add([{"index": 0, "id": "b", "function": {"name": "g", "arguments": "{}"}}])  # index 0
    acc.add([{"id": "b", "function": {"name": "g", "arguments": ""}}])  # repeated, no index
    acc.add([{"function": {"name": "h", "arguments": {"k": True}}}])  # no id, object args
    calls = acc.calls()
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        ("f", '{"x": 1}'),
        ("g", "{}"),
        ("h", '{"k":true}'),
    ]
    assert calls[0]["id"] == "a" and calls[1]["id"] == "b" and calls[2]["id"].startswith("call_")


def test_usage_sums_nested_details():
    total = add_usage(None, {"prompt_tokens": 1, "completion_tokens_details": {"reasoning": 2}})
    total = add_usage(total, {"prompt_tokens": 3, "completion_tokens_details": {"reasoning": 4}})
    assert total == {"prompt_tokens": 4, "completion_tokens_details": {"reasoning": 6}}


def test_merger_keeps_one_identity_one_role_and_holds_finish_and_usage():
    m = StreamMerger(include_usage=True)
    m.begin_round()
    first = m.process(
        {
            "id": "c1",
            "created": 1,
            "model": "x",
            "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": "a"}, "finish_reason": None}
            ],
        }
    )
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "a"}
    assert (
        m.process(
            {
                "id": "c1",
                "created": 1,
                "model": "x",
                "choices": [
                    {
                        "index": 0,
                        "delta": {
                            "tool_calls": [
                                {
                                    "index": 0,
                                    "id": "t",
                                    "function": {"name": "f", "arguments": "{}"},
                                }
                            ]
                        },
                        "finish_reason": "tool_calls",
                    }
                ],
            }
        )
        is None
    )
    assert m.process({"id": "c1", "choices": [], "usage": {"total_tokens": 5}}) is None
    m.end_round()
    m.begin_round()
    later = m.process(
        {
            "id": "c2",
            "created": 9,
            "model": "y",
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": "b"},
                    "finish_reason": "stop",
                }
            ],
        }
    )
    assert (later["id"], later["created"], later["model"]) == ("c1", 1, "x")
    assert later["choices"][0] == {"index": 0, "delta": {"content": "b"}, "finish_reason": None}
    assert m.finish_reason == "stop"


def test_usage_that_is_not_an_object_is_ignored():
    assert add_usage(None, "lots") is None  # type: ignore[arg-type]
    assert add_usage({"total_tokens": 1}, [3]) == {"total_tokens": 1}  # type: ignore[arg-type]
