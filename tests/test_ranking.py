"""Ranking and the per-request pieces of tool selection that need no server."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.ranking import SelectionUnavailable, Terms, fused, normalised, top
from gateway.selection import called_names, user_queries


def test_names_are_split_at_case_changes_underscores_dashes_and_slashes():
    terms = Terms()
    assert terms("listRepoIssues") == ["list", "repo", "issu"]
    assert terms("repos/create-for_authenticated-user") == [
        "repo",
        "creat",
        "authent",
        "user",
    ]
    assert terms("getHTTPServer") == ["get", "http", "server"]


def test_query_words_get_the_words_operations_use():
    terms = Terms()
    assert terms.query("Open a new PR") == ["open", "new", "pr", "creat", "pull", "request"]
    assert "delet" in terms.query("remove the label")


def test_user_queries_are_the_latest_three_user_texts_latest_first():
    messages = [
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": "one"},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "three"}, {"type": "image_url"}]},
        {"role": "tool", "content": "x", "tool_call_id": "c"},
        {"role": "user", "content": "four"},
        "not a message",
    ]
    assert user_queries(messages) == ["four", "three", "two"]
    assert user_queries([{"role": "user", "content": None}]) == []


def test_called_names_are_in_first_call_order_without_repeats():
    def call(name):
        return {"type": "function", "function": {"name": name, "arguments": "{}"}}

    messages = [
        {"role": "assistant", "tool_calls": [call("b"), call("a")]},
        {"role": "assistant", "tool_calls": [call("b"), {"function": {"name": 3}}, "x"]},
        {"role": "assistant", "tool_calls": None},
    ]
    assert called_names(messages) == ["b", "a"]


def test_top_breaks_ties_in_document_order():
    assert top(np.array([0.5, 1.0, 0.5, 0.0]), 3) == [1, 0, 2]
    assert top(np.array([1.0]), 5) == [0]


def test_hybrid_weighs_scaled_bm25_and_cosine_equally():
    lexical = np.array([4.0, 2.0, 0.0])
    dense = np.array([0.0, 0.5, 1.0])
    assert fused(lexical, dense).tolist() == [0.5, 0.5, 0.5]
    assert fused(np.zeros(2), np.array([0.2, 0.4])).tolist() == pytest.approx([0.1, 0.2])


def test_embeddings_of_the_wrong_shape_are_refused():
    with pytest.raises(SelectionUnavailable, match="expected 2 embeddings"):
        normalised([[1.0, 0.0]], 2)
    with pytest.raises(SelectionUnavailable, match="not lists of numbers"):
        normalised([["a", "b"], [1.0]], 2)
    assert normalised([[3.0, 4.0], [0.0, 0.0]], 2).tolist() == [pytest.approx([0.6, 0.8]), [0, 0]]
