"""Request bytes that are not a valid protobuf message get INVALID_ARGUMENT like any bad input.

gRPC parses each request before the handler runs; when parsing fails it answers UNKNOWN, names
the parser's exception class and logs a traceback. :class:`TolerantDecoding` (a server
interceptor on the ``stratus.v1.Stratus`` methods) makes the parser hand the handler an
:class:`UndecodableRequest` instead, and the call wrapper (service/calls.py) turns that into
:class:`InvalidInputError` through :func:`decoded`, so the refusal is precise, audited and quiet.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from cas.errors import InvalidInputError

SERVICE_PREFIX = "/stratus.v1.Stratus/"


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


class TolerantDecoding(grpc.aio.ServerInterceptor):
    """Wraps the request parser of every ``stratus.v1.Stratus`` method (see the module docstring)."""

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if (handler is None or handler.request_deserializer is None
                or not handler_call_details.method.startswith(SERVICE_PREFIX)):
            return handler
        return handler._replace(request_deserializer=_tolerant(handler.request_deserializer))


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
