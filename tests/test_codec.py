"""JSON bodies in and out: the duplicate-key check and the 400s for what cannot be carried."""

from __future__ import annotations

import orjson
import pytest

from gateway import codec
from gateway.errors import InvalidRequest


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model":"a","messages":[],"model":"b"}',
        b'{"model":"a","mod\\u0065l":"b"}',
        b'{"stream":false,"model":"m","stream":true}',
    ],
)
def test_repeated_model_or_stream_key_is_flagged_even_escaped(raw):
    assert codec.keys_disagree(raw, orjson.loads(raw))


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model":"m","messages":[{"role":"user","content":"caf\\u00e9 \\"model\\"\\n"}]}',
        b'{"model":"m","tools":[{"function":{"parameters":{"properties":{"model":{}}}}}]}',
    ],
)
def test_bodies_without_repeated_top_level_keys_are_not_flagged(raw):
    assert not codec.keys_disagree(raw, orjson.loads(raw))


def test_too_deep_to_rewrite_and_lone_surrogates_are_400s():
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(InvalidRequest, match="nested too deeply"):
        codec.dumps({"messages": deep})
    with pytest.raises(InvalidRequest, match="surrogate"):
        codec.loads(b'"\\udc00"')
