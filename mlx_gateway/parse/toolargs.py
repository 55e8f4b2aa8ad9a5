"""Tool-call arguments as an object, whatever state the model left them in.

Models write arguments as JSON text, and small local models often get it slightly wrong
(a trailing comma, an unquoted key, a missing brace). Every wing needs the object, so the
repair lives here, once.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

prompts = logging.getLogger("mlx_gateway.prompts")  # see textlog.py
log = logging.getLogger("mlx_gateway.toolargs")

RAW_ARGUMENTS_KEY = "_raw_arguments"

_any_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder()


def parse_tool_arguments(arguments: str | dict[str, Any] | None) -> dict[str, Any]:
    """Arguments as an object. Broken JSON is repaired where possible; otherwise the raw text is
    kept under RAW_ARGUMENTS_KEY so the call is never dropped silently."""
    if isinstance(arguments, dict):
        return arguments
    if arguments is None or not arguments.strip():
        return {}
    try:
        parsed = _any_decoder.decode(arguments)
    except msgspec.DecodeError:
        parsed = _repair_json(arguments)
    if isinstance(parsed, dict):
        return parsed
    log.warning(
        "tool call arguments are not a JSON object; kept raw (%d characters)", len(arguments)
    )
    prompts.warning("the arguments kept raw: %.200s", arguments)
    return {RAW_ARGUMENTS_KEY: arguments}


def _repair_json(text: str) -> Any:
    from json_repair import repair_json  # imported lazily: only broken output pays for it

    try:
        return repair_json(text, return_objects=True)
    except Exception:  # the repair library has no narrow error type; any failure means "keep raw"
        return None
