"""Closing JSON objects cut short, by appending only."""

from __future__ import annotations

import json

import pytest

from mlx_gateway.parse.partialjson import closing_suffix

CASES = [
    '{"path": "a.py"}',
    '{"path": "a.py", "text": "hel',
    '{"path": "a.py"',
    '{"path": "a.py",',
    '{"path":',
    '{"path"',
    '{"pa',
    "{",
    '{"ok": tr',
    '{"ok": fal',
    '{"n": nu',
    '{"n": 1.',
    '{"n": -',
    '{"list": [1, 2',
    '{"nested": {"a": [{"b": "c\\',
    '{"text": "brace } and \\" quote',
]


@pytest.mark.parametrize("prefix", CASES)
def test_closes_into_an_object_keeping_the_prefix(prefix: str) -> None:
    suffix = closing_suffix(prefix)
    assert suffix is not None
    assert isinstance(json.loads(prefix + suffix), dict)


def test_complete_objects_need_nothing() -> None:
    assert closing_suffix('{"a": [1, {"b": null}]}') == ""


@pytest.mark.parametrize("hopeless", ["not json", "[1, 2", '"just a string'])
def test_text_that_is_no_object_prefix(hopeless: str) -> None:
    assert closing_suffix(hopeless) is None
