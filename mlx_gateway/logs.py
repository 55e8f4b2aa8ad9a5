"""Log output: lines for people (`--log-format text`) or one JSON object per line for machines
(`--log-format json`). An access line carries its fields as data, so the JSON form has them as
keys rather than inside a message string."""

from __future__ import annotations

import logging
import sys
from typing import Any

import msgspec

TRACE = 5
NOTICE = 25
LEVELS = {
    "trace": TRACE,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "notice": NOTICE,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._encode = msgspec.json.Encoder().encode

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        entry = record.args[0] if isinstance(record.args, tuple) and record.args else None
        fields = getattr(entry, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return self._encode(line).decode()


def configure_logging(level_name: str, log_format: str = "text") -> None:
    logging.addLevelName(TRACE, "TRACE")
    logging.addLevelName(NOTICE, "NOTICE")
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    logging.basicConfig(level=LEVELS[level_name], handlers=[handler])
