"""One exception hierarchy for everything that can go wrong, mapped to HTTP only at the edge.

    GatewayError                      500 api_error / server_error
    +-- InvalidRequest                400 invalid_request_error (client's fault: shape, JSON, value)
    |   +-- BackendRejected           400 the backend refused the request (its 4xx)
    |   +-- IncompleteBody            400 the body ended before its Content-Length
    |   +-- PromptTooLong             400 prompt does not fit the context window
    |   +-- BackendRefused            400 a 5xx that refuses this request's content (no retry)
    |   +-- NestedTooDeeply           400 JSON nested past what the decoder follows
    +-- Unauthorized                  401 authentication_error (no or a wrong API key)
    +-- Forbidden                     403 permission_error (a Host or Origin not allowed)
    +-- NotFound                      404 not_found_error (unknown route or model)
    +-- MethodNotAllowed              405
    +-- RequestTimeout                408 the body did not arrive in time
    +-- RequestTooLarge               413 request_too_large
    +-- UnsupportedMediaType          415 a body that is not JSON (what a web page could send)
    +-- RateLimited                   429 rate_limit_error (the backend asked to slow down)
    +-- TooManyRequests               429 rate_limit_error (one client holds too many requests)
    +-- Overloaded                    529 overloaded_error / OpenAI 429 (every backend is full)
    +-- BackendUnavailable            503 overloaded_error (unreachable, refused, timed out)
    |   +-- BackendDown               503 api_error, not retryable: down for a while
    +-- BackendFailed                 502 api_error (the backend answered with a 5xx)
    +-- BackendStreamFailed           502 api_error (an error frame in the backend's stream)
    +-- BadBackendResponse            500 api_error (the backend's answer could not be decoded)
    +-- ConfigError                   500 (bad configuration; also raised before serving)
    +-- LoopDetected                  508 the request came from a gateway (one that this one
                                          forwards to, directly or not): it would go round

A 4xx from the backend deliberately becomes a 400 and not a 502: Claude Code retries 5xx answers
for minutes, which is useless for a request that can never succeed.
"""

from __future__ import annotations

from typing import Any, ClassVar


class GatewayError(Exception):
    status: ClassVar[int] = 500
    anthropic_type: ClassVar[str] = "api_error"
    openai_type: ClassVar[str] = "server_error"
    # The OpenAI error `code` clients act on (Codex tells an over-long prompt by it).
    openai_code: ClassVar[str | None] = None
    # Told to clients in `x-should-retry`: Claude Code otherwise retries 5xx answers for about
    # three minutes and replays a 400 six times with features stripped.
    retryable: ClassVar[bool] = False
    # Where the OpenAI side answers another status than the Anthropic one (529 does not
    # exist for OpenAI clients); None: the same status.
    openai_status: ClassVar[int | None] = None

    # A client that left, or a body cut short, is logged at debug: there is nobody to tell.
    quiet: ClassVar[bool] = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        # Seconds told to the client in `retry-after`; None: no header.
        self.retry_after: float | None = None

    def status_for(self, anthropic: bool) -> int:
        if anthropic or self.openai_status is None:
            return self.status
        return self.openai_status

    @property
    def summary(self) -> str:
        """The message without text that may quote the request (see textlog.py)."""
        return self.message


class InvalidRequest(GatewayError):
    status = 400
    anthropic_type = "invalid_request_error"
    openai_type = "invalid_request_error"


class BackendRejected(InvalidRequest):
    def __init__(self, message: str, backend_status: int = 0) -> None:
        super().__init__(message)
        self.backend_status = backend_status

    @property
    def summary(self) -> str:
        return f"backend rejected the request (HTTP {self.backend_status})"


class IncompleteBody(InvalidRequest):
    quiet = True


class PromptTooLong(InvalidRequest):
    openai_code = "context_length_exceeded"


class BackendRefused(InvalidRequest):
    """A backend 5xx that is really a refusal of this request's content (an image for a text
    model, tools on a server without a chat template for them): retrying cannot help."""


class NestedTooDeeply(InvalidRequest):
    def __init__(self) -> None:
        super().__init__("request body is not valid JSON: nested too deeply")


class Unauthorized(GatewayError):
    status = 401
    anthropic_type = "authentication_error"
    openai_type = "authentication_error"


class Forbidden(GatewayError):
    status = 403
    anthropic_type = "permission_error"
    openai_type = "permission_error"


class RequestTimeout(GatewayError):
    status = 408
    anthropic_type = "invalid_request_error"
    openai_type = "invalid_request_error"


class UnsupportedMediaType(GatewayError):
    status = 415
    anthropic_type = "invalid_request_error"
    openai_type = "invalid_request_error"


class TooManyRequests(GatewayError):
    status = 429
    anthropic_type = "rate_limit_error"
    openai_type = "rate_limit_error"
    retryable = True


class NotFound(GatewayError):
    status = 404
    anthropic_type = "not_found_error"
    openai_type = "not_found_error"


class MethodNotAllowed(GatewayError):
    status = 405
    anthropic_type = "invalid_request_error"
    openai_type = "invalid_request_error"


class RequestTooLarge(GatewayError):
    status = 413
    anthropic_type = "request_too_large"
    openai_type = "invalid_request_error"


class RateLimited(GatewayError):
    status = 429
    anthropic_type = "rate_limit_error"
    openai_type = "rate_limit_exceeded"
    openai_code = "rate_limit_exceeded"
    retryable = True

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Overloaded(RateLimited):
    """Every backend that serves the model is busy and the queue is full (or the wait for a
    place ran out): Claude Code retries a 529 by itself; OpenAI clients know a 429."""

    status = 529
    anthropic_type = "overloaded_error"
    openai_status = 429


class BackendUnavailable(GatewayError):
    status = 503
    anthropic_type = "overloaded_error"
    openai_type = "server_error"
    retryable = True

    def __init__(self, reason: str, *, unreachable: bool = False) -> None:
        super().__init__(f"MLX backend unavailable: {reason}")
        self.reason = reason
        # Nothing accepted the connection (as opposed to a backend that was slow or broke off).
        self.unreachable = unreachable


class BackendDown(BackendUnavailable):
    """Told as not retryable so that Claude Code shows the message at once instead of retrying
    silently for minutes; a first failure stays retryable (a server may be restarting). Not an
    `overloaded_error` either: Claude Code retries any error of that type whatever the header."""

    anthropic_type = "api_error"
    retryable = False


class BackendFailed(GatewayError):
    status = 502
    retryable = True

    def __init__(self, backend_status: int, body: str) -> None:
        super().__init__(f"MLX backend returned HTTP {backend_status}: {body}")
        self.backend_status = backend_status

    @property
    def summary(self) -> str:
        return f"MLX backend returned HTTP {self.backend_status}"


class BackendStreamFailed(GatewayError):
    """The backend put an error in its answer after its 200 (llama.cpp and vLLM send a
    `data: {"error": ...}` frame mid-stream when generation fails)."""

    status = 502
    retryable = True

    def __init__(self, message: str) -> None:
        super().__init__(f"MLX backend failed while answering: {message}")


class BadBackendResponse(GatewayError):
    pass


class ConfigError(GatewayError):
    pass


class LoopDetected(GatewayError):
    status = 508
    anthropic_type = "invalid_request_error"
    openai_type = "invalid_request_error"


def anthropic_error_body(error: GatewayError) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error.anthropic_type, "message": error.message}}


def openai_error_body(error: GatewayError) -> dict[str, Any]:
    return {
        "error": {
            "message": error.message,
            "type": error.openai_type,
            "param": None,
            "code": error.openai_code,
        }
    }
