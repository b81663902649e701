"""Client exceptions, and the one place that maps Triton / gRPC failures onto them.

Callers catch these, never ``tritonclient`` or ``grpc`` exceptions: the client adapters convert
at the boundary. Every exception carries ``code`` (the gRPC status name, e.g. ``"INVALID_ARGUMENT"``,
or ``None`` when the failure had no status) and ``message`` (the server's text, unchanged).

Status codes seen from Triton 2.51 over gRPC (unary ``ModelInfer``):

=====================================================  ===================  ================
situation                                              status               exception
=====================================================  ===================  ================
model returns ``TritonError(msg, INVALID_ARG)``         INVALID_ARGUMENT     InvalidArgument
wrong dtype / unknown input name (Triton core)          INVALID_ARGUMENT     InvalidArgument
``client_timeout`` expired                              DEADLINE_EXCEEDED    DeadlineExceeded
no server listening on the port                         UNAVAILABLE          Unavailable
queue full / queued past its timeout (``recommend``)    UNAVAILABLE          Unavailable
front proxy or gRPC refusing an overload                RESOURCE_EXHAUSTED   Unavailable
request above the front proxy's size limit              RESOURCE_EXHAUSTED   InvalidArgument
the client gave up and the server dropped the request   CANCELLED            Cancelled
model name not in the repository                        NOT_FOUND            NotFound
model exists, no version loaded (drain, version swap)   NOT_FOUND            Unavailable
exception raised inside a Python-backend ``execute``    INTERNAL             ServerError
=====================================================  ===================  ================

Over HTTP, Triton 2.51 answers a request body it cannot parse as JSON with 500; that is the
client's fault, so those texts map to InvalidArgument (the chart's front proxy turns them into 400).

On a bidirectional stream Triton sends per-request failures as a bare ``error_message`` with no
status at all; ``from_stream_error`` classifies those by the message (see there).
"""

from __future__ import annotations

import re

import grpc
from tritonclient.utils import InferenceServerException

__all__ = [
    "Cancelled",
    "DeadlineExceeded",
    "FreshrecError",
    "InvalidArgument",
    "NotFound",
    "ServerError",
    "Unavailable",
    "from_grpc",
    "from_stream_error",
    "from_triton",
]


class FreshrecError(Exception):
    """Base of every client error. ``code``: gRPC status name or None; ``message``: server text."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}" if self.code else self.message


class InvalidArgument(FreshrecError):
    """The request is wrong (bad value, empty user id, wrong dtype); retrying cannot help."""


class Unavailable(FreshrecError):
    """Server or one of its dependencies is down, overloaded or swapping a model version;
    retriable after a (jittered) backoff."""


class DeadlineExceeded(FreshrecError):
    """The client deadline expired; the server may still have completed the request."""


class Cancelled(FreshrecError):
    """The call or stream was cancelled (by the client, or by the server shutting down)."""


class NotFound(FreshrecError):
    """NOT_FOUND: the model is not in the server's repository (wrong server, or not deployed),
    or a model said something it needed does not exist."""


class ServerError(FreshrecError):
    """Anything else the server reported (INTERNAL, UNKNOWN, ...): a bug or fault on its side."""


# gRPC status name -> exception class; anything not listed is a ServerError.
_BY_GRPC_CODE: dict[str, type[FreshrecError]] = {
    "INVALID_ARGUMENT": InvalidArgument,
    "OUT_OF_RANGE": InvalidArgument,
    "UNAVAILABLE": Unavailable,
    "DEADLINE_EXCEEDED": DeadlineExceeded,
    "CANCELLED": Cancelled,
    "NOT_FOUND": NotFound,
}
# tritonclient.http puts the HTTP status number in status(); same mapping for that client.
_BY_HTTP_STATUS: dict[str, type[FreshrecError]] = {
    "400": InvalidArgument,
    "404": NotFound,
    "413": InvalidArgument,
    "429": Unavailable,
    "499": Cancelled,
    "503": Unavailable,
    "504": DeadlineExceeded,
}


def _code_name(status: str | None) -> str | None:
    """``"StatusCode.INVALID_ARGUMENT"`` -> ``"INVALID_ARGUMENT"``; None or "" -> None."""
    if not status:
        return None
    return status.rsplit(".", 1)[-1].strip().upper()


# NOT_FOUND for a model that exists but has no loaded version: Triton says so while it drains at
# shutdown or swaps versions, a moment later the request succeeds (elsewhere or here).
_NO_VERSION = re.compile(r"has no available versions", re.IGNORECASE)
# RESOURCE_EXHAUSTED for a message above a size limit (gRPC's own, or the front proxy's) is the
# request's fault and never succeeds on a retry; any other RESOURCE_EXHAUSTED is overload.
_TOO_LARGE = re.compile(r"larger than|too large|exceeds the limit|message length", re.IGNORECASE)
# Triton 2.51's HTTP frontend answers JSON it cannot parse with 500 (TRITONJSON errors are INTERNAL).
_BAD_JSON = re.compile(r"failed to parse the request JSON buffer|Unable to parse '", re.IGNORECASE)


def _from_code(code: str | None, message: str) -> FreshrecError:
    if code is None:
        return FreshrecError(message)
    if code in ("NOT_FOUND", "404") and _NO_VERSION.search(message):
        return Unavailable(message, code)
    if code == "RESOURCE_EXHAUSTED":
        return (InvalidArgument if _TOO_LARGE.search(message) else Unavailable)(message, code)
    if code == "500" and _BAD_JSON.search(message):
        return InvalidArgument(message, code)
    cls = _BY_GRPC_CODE.get(code) or _BY_HTTP_STATUS.get(code) or ServerError
    return cls(message, code)


def from_triton(exc: InferenceServerException) -> FreshrecError:
    """Map a ``tritonclient`` exception by its ``status()``.

    No status means tritonclient raised it locally (e.g. a tensor that does not match its
    declared shape): that is a plain ``FreshrecError``.
    """
    message = exc.message() or str(exc)
    return _from_code(_code_name(exc.status()), message)


def from_grpc(exc: grpc.RpcError) -> FreshrecError:
    """Map a raw ``grpc.RpcError`` (the streaming client talks to the gRPC stub directly)."""
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else None
    name = code.name if isinstance(code, grpc.StatusCode) else _code_name(str(code) if code else None)
    return _from_code(name, details or (name or "gRPC error"))


# A leading "[StatusCode.X] " or "[X] " names the status; a server adapter that wants exact codes
# on streams can prefix its messages this way (it is also what str(InferenceServerException) gives).
_CODE_PREFIX = re.compile(r"^\[(?:StatusCode\.)?([A-Z_]+)\]\s*")
# Triton core's own request-validation messages (2.51), all INVALID_ARGUMENT on unary calls.
_INVALID_PATTERNS = re.compile(
    r"unexpected inference (input|output)"
    r"|data-type is '"
    r"|unexpected shape for input"
    r"|expected \d+ inputs? but got"
    r"|unexpected explicit tensor data for input"
    r"|has no batch dimension"
    r"|exceeds maximum batch size"
    r"|unable to parse"
    r"|invalid argument",
    re.IGNORECASE,
)
_NOT_FOUND_PATTERNS = re.compile(r"unknown model|is not found", re.IGNORECASE)
_UNAVAILABLE_PATTERNS = re.compile(
    r"not ready|exceeds maximum queue size|request timeout expired|has no available versions|unavailable", re.IGNORECASE
)


def from_stream_error(message: str) -> FreshrecError:
    """Classify a per-request error received on a ``ModelStreamInfer`` stream.

    Triton 2.51 streams carry only ``error_message`` (no status) for a failed request, so:
    an explicit ``[CODE]`` prefix wins; then Triton core's validation texts (InvalidArgument),
    a model with no loaded version, not-ready/queue-full texts (Unavailable), unknown-model
    texts (NotFound); anything else,
    including an error a model returned with ``TritonError.INVALID_ARG``, is a ``ServerError``
    with ``code=None``. Use the unary clients where the exact status matters.
    """
    m = _CODE_PREFIX.match(message)
    if m:
        return _from_code(m.group(1), message[m.end():])
    if _INVALID_PATTERNS.search(message):
        return InvalidArgument(message)
    if _UNAVAILABLE_PATTERNS.search(message):
        return Unavailable(message)
    if _NOT_FOUND_PATTERNS.search(message):
        return NotFound(message)
    return ServerError(message)
