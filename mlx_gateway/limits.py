"""What one request may ask of the gateway, in one place (the README lists the same numbers).

Every bound is checked while the request is decoded, before any work that grows with it, and
a request past one is a 400 naming the field. They are far above what Claude Code, Cursor or
the SDKs send; what they stop is a single request costing memory or time out of proportion to
its size (one 40,000-character stop sequence once took 768 MiB).
"""

from __future__ import annotations

MAX_STOP_SEQUENCES = 64
MAX_STOP_SEQUENCE_CHARS = 1_000
# The real OpenAI API takes at most four `stop` strings.
MAX_OPENAI_STOPS = 4
MAX_MESSAGES = 20_000
MAX_TOOLS = 1_000
MAX_OPENAI_TOOLS = 1_000
MAX_TOOL_SCHEMA_BYTES = 256 * 1024
MAX_TOKENS = 2**31 - 1
# JSON nesting is bounded by the decoder itself: it refuses a body nested past Python's
# recursion limit (about 1,000 levels) in C before going deeper, and the server answers a
# RecursionError from anything after it as this request's fault (server/rsgi.py).
# A request's head (request line and headers); Claude Code's is about 2 KB.
MAX_HEADER_BYTES = 64 * 1024
# Concurrent requests on one HTTP/2 connection (HTTP/1.1 carries one at a time).
MAX_STREAMS_PER_CONNECTION = 16
