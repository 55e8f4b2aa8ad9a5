"""What Codex reads from `GET /v1/models`: its own catalog entries next to the OpenAI list.

Codex fetches `{base_url}/models` (for providers with command auth) and decodes `{"models":
[ModelInfo, ...]}`; the OpenAI list `{"object": "list", "data": [...]}` alone fails to decode
and Codex falls back to metadata that offers no `apply_patch`. One object with both keys serves
both kinds of client. An entry needs the fields Codex 0.171 requires; the ones that matter are
`apply_patch_tool_type: freeform` (apply_patch as a custom tool, which the Responses wing
serves), `shell_type: shell_command`, `supports_parallel_tool_calls` and `context_window`, which
Codex budgets its context by (omitted when the window is unknown: Codex then uses its default).
"""

from __future__ import annotations

from typing import Any

Json = dict[str, Any]

# The model's base instructions, sent by Codex as the conversation's first developer message.
# Short on purpose: a local model's window is small, and the tools describe themselves.
BASE_INSTRUCTIONS = (
    "You are a coding agent running in the user's terminal, working in their workspace. "
    "Do the task you are given; use the shell tool to inspect files and run commands, and the "
    "apply_patch tool to create, edit and delete files. Keep working until the task is done, "
    "then answer briefly with what you did and what the user should know."
)
# How Codex truncates tool output before it sends it back to the model.
TRUNCATION_POLICY: Json = {"mode": "bytes", "limit": 10000}


def codex_model_info(slug: str, context_window: int | None) -> Json:
    entry: Json = {
        "slug": slug,
        "display_name": slug,
        "description": None,
        "supported_reasoning_levels": [],
        "shell_type": "shell_command",
        "visibility": "list",
        "supported_in_api": True,
        "priority": 1,
        "base_instructions": BASE_INSTRUCTIONS,
        "supports_reasoning_summaries": False,
        "support_verbosity": False,
        "apply_patch_tool_type": "freeform",
        "truncation_policy": dict(TRUNCATION_POLICY),
        "supports_parallel_tool_calls": True,
        "experimental_supported_tools": [],
    }
    if context_window:
        entry["context_window"] = context_window
    return entry


def models_list(names: list[str], windows: list[int | None], created: int) -> Json:
    """The OpenAI model list and Codex's catalog, for each name with its model's window."""
    data = [
        {"id": name, "object": "model", "created": created, "owned_by": "mlx-gateway"}
        for name in names
    ]
    models = [codex_model_info(name, window) for name, window in zip(names, windows, strict=True)]
    return {"object": "list", "data": data, "models": models}
