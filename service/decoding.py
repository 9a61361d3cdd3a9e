"""Request bytes that are not a valid protobuf message get INVALID_ARGUMENT like any bad input.

gRPC parses each request before the handler runs; when parsing fails it answers UNKNOWN, names
the parser's exception class and logs a traceback. :func:`tolerant_handlers` wraps the request
parser of every ``stratus.v1.Stratus`` method once, when the service is registered (no per-call
interceptor), so that it hands the handler an :class:`UndecodableRequest` instead, and the call
wrapper (service/calls.py) turns that into :class:`InvalidInputError` through :func:`decoded`, so
the refusal is precise, audited and quiet.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from cas.errors import InvalidInputError


class UndecodableRequest:
    """Stands in for a request message whose bytes did not parse."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def error(self) -> InvalidInputError:
        """The error the caller gets."""
        return InvalidInputError(f"the request is not a valid protobuf message: {self.reason}")


def _tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:  # noqa: ANN401 - whatever message the method takes
        try:
            return deserializer(data)
        except DecodeError as exc:
            return UndecodableRequest(str(exc))

    return parse


def tolerant_handlers(handlers: dict[str, grpc.RpcMethodHandler]) -> dict[str, grpc.RpcMethodHandler]:
    """The method handlers with every request parser made tolerant (see the module docstring)."""
    return {name: h if h.request_deserializer is None else h._replace(
        request_deserializer=_tolerant(h.request_deserializer)) for name, h in handlers.items()}


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, UndecodableRequest):
            raise request.error()
        yield request


def decoded(request: Any) -> Any:  # noqa: ANN401 - a message or a stream of them
    """The request, or its stream checked message by message; raises for an undecodable one."""
    if isinstance(request, UndecodableRequest):
        raise request.error()
    if hasattr(request, "__aiter__"):
        return _checked(request)
    return request
