"""Logging that keeps prompt and answer text out of the log unless the user asks for it.

A prompt is the user's code, documents and secrets; the gateway's log goes to terminals and
files that are shared more freely. Lines that carry such text (a model's tool arguments, a
backend's error body, which may quote the request) go to the `mlx_gateway.prompts` logger,
which the command line switches off unless `--log-prompts` is given; the line beside it in the
gateway's own log says what happened without the text.
"""

from __future__ import annotations

import logging

from mlx_gateway.errors import GatewayError

PROMPTS_LOGGER = "mlx_gateway.prompts"

log = logging.getLogger("mlx_gateway")
prompts = logging.getLogger(PROMPTS_LOGGER)


def log_failure(level: int, what: str, error: GatewayError) -> None:
    """`what: summary` in the log, and the whole message in the prompt log when it differs."""
    log.log(level, "%s: %s", what, error.summary)
    if error.summary != error.message:
        prompts.log(level, "%s: %s", what, error.message)


def configure(log_prompts: bool) -> None:
    """A filter rather than `disabled` or a level: the server's own logging set-up, which runs
    later, re-enables loggers and resets levels, and leaves filters alone."""
    logger = logging.getLogger(PROMPTS_LOGGER)
    logger.removeFilter(_drop)
    if not log_prompts:
        logger.addFilter(_drop)


def _drop(_: logging.LogRecord) -> bool:
    return False
