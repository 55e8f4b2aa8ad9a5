"""Closing a JSON object that was cut short, by appending only.

Tool-call arguments are forwarded as they arrive, so when a backend stops mid-arguments (its
token limit) the fragments already sent cannot be changed; a suffix is the only repair left.
This runs once per tool block, and only when its arguments do not parse.
"""

from __future__ import annotations

import msgspec

_CLOSERS = {"{": "}", "[": "]"}
# What may complete the token the text was cut in: nothing, a missing value or key, the rest of
# a literal (`tr` -> `ue`) or of a number (`1.` -> `0`).
_MIDDLES = (
    "",
    "null",
    ":null",
    '"_":null',
    "0",
    "ue",
    "rue",
    "e",
    "alse",
    "lse",
    "se",
    "ull",
    "ll",
    "l",
)
_decoder = msgspec.json.Decoder()


def is_json_object(text: str) -> bool:
    try:
        return isinstance(_decoder.decode(text), dict)
    except msgspec.DecodeError:
        return False


def _open_state(text: str) -> tuple[list[str], bool, bool]:
    """The brackets still open, and whether the text ends inside a string / after a backslash."""
    stack: list[str] = []
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in _CLOSERS:
            stack.append(_CLOSERS[char])
        elif char in "}]" and stack:
            stack.pop()
    return stack, in_string, escaped


def closing_suffix(text: str) -> str | None:
    """The shortest known suffix that turns `text` into a JSON object, or None if none does."""
    if is_json_object(text):
        return ""
    stack, in_string, escaped = _open_state(text)
    string_end = ("\\" if escaped else "") + ('"' if in_string else "")
    closers = "".join(reversed(stack))
    for middle in _MIDDLES:
        suffix = string_end + middle + closers
        if is_json_object(text + suffix):
            return suffix
    return None
