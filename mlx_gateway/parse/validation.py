"""Decoding a client's request in one pass, with a failure that names the field, in the style of
the real APIs (`messages.2.content.0.type: ...`): shared by every wing's wire types."""

from __future__ import annotations

import re
from typing import TypeVar

import msgspec

from mlx_gateway.errors import InvalidRequest, NestedTooDeeply

_PATH_ITEM = re.compile(r"\[(\d+)\]")
_AT_PATH = re.compile(r"^(?P<what>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]+)`$")

_T = TypeVar("_T")


def describe_validation_error(error: msgspec.ValidationError) -> str:
    """`Expected int - at $.messages[2].max` -> `messages.2.max: Expected int` (the API's style)."""
    match = _AT_PATH.match(str(error))
    what, path = (match["what"], match["path"] or "") if match else (str(error), "")
    dotted = _PATH_ITEM.sub(r".\1", path).lstrip(".")
    field, separator, rest = what.partition(": ")  # a check of our own names its field
    if separator and field.isidentifier():
        dotted, what = f"{dotted}.{field}".lstrip("."), rest
    missing = _MISSING.match(what)
    if missing:
        dotted = f"{dotted}.{missing['field']}".lstrip(".")
        what = "Field required"
    return f"{dotted}: {what}" if dotted else what


def decode_request(decoder: msgspec.json.Decoder[_T], body: bytes) -> _T:
    if not body:
        raise InvalidRequest("request body is empty; expected a JSON object")
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(describe_validation_error(exc)) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # bad UTF-8 in a string: the latter
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    except RecursionError:  # nested past what the decoder follows (limits.py)
        raise NestedTooDeeply() from None
