"""The wrapper around every API handler: errors to status codes, call facts, observers.

Handlers raise the typed errors of :mod:`cas.errors`; :func:`rpc` turns each into a status code,
the error's message and its :class:`ErrorDetail` (service/errors.py decides which), so a client
always gets a code and a detail it can act on and a sentence a person can read. A full disk or an
unreachable metadata store becomes its typed error first; anything unexpected becomes INTERNAL
without leaking a traceback. Handlers record what the call was about with :func:`note` (path,
version, bytes); the observers (audit log, metrics) receive it when the call ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from service.decoding import decoded
from service.errors import grpc_status, status_for, typed

log = logging.getLogger("stratus.server")
_facts: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("stratus_call_facts", default=None)


def note(**facts: Any) -> None:
    """Record facts about the current call (``path``, ``version``, ``nbytes``) for the observers."""
    current = _facts.get()
    if current is not None:
        current.update(facts)


@contextlib.asynccontextmanager
async def _guard(owner: Any, method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    """Run one call: typed errors become status codes, and the owner's observer hears the outcome.

    The observer runs before the status is sent, so whoever sees the status also finds the
    call in the audit log.
    """
    started = time.perf_counter()
    _facts.set({})

    def observe(code: grpc.StatusCode) -> None:
        hook = getattr(owner, "observe_call", None)
        if hook is not None:
            hook(method, context, code, time.perf_counter() - started, **(_facts.get() or {}))

    try:
        yield
    except grpc.aio.AbortError:
        observe(context.code() or grpc.StatusCode.UNKNOWN)
        raise
    except asyncio.CancelledError:
        observe(grpc.StatusCode.CANCELLED)
        raise
    except Exception as raised:
        exc = typed(raised)
        code = status_for(exc)
        observe(code)
        if code is grpc.StatusCode.INTERNAL:
            log.exception("internal error in %s", method)
        elif exc is not raised:
            log.warning("%s in %s: %s", exc, method, raised)
        await context.abort_with_status(grpc_status(exc, method))
    else:
        observe(grpc.StatusCode.OK)


def rpc(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a servicer method (unary or server-streaming) so typed errors become status codes.

    After each call the servicer's ``observe_call(method, context, code, seconds, **facts)`` is
    invoked; the server feeds the audit log from it.
    """
    method = fn.__name__
    if inspect.isasyncgenfunction(fn):

        @functools.wraps(fn)
        async def stream_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with _guard(self, method, context):
                async for item in fn(self, decoded(request), context):
                    yield item

        return stream_wrapper

    @functools.wraps(fn)
    async def unary_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async with _guard(self, method, context):
            return await fn(self, decoded(request), context)

    return unary_wrapper
