"""The wrapper around every API handler: errors to status codes, call facts, observers.

Handlers raise the typed errors of :mod:`cas.errors`; :func:`rpc` turns each into a status code
with the error's message (service/errors.py decides which), so a client always gets a code it can
act on and a sentence a person can read. Anything unexpected becomes INTERNAL without leaking a
traceback. Handlers record what the call was about with :func:`note` (path, version, bytes);
the observers (audit log, metrics) receive it when the call ends.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc

from cas import errors
from service.errors import status_for, trailing_details

log = logging.getLogger("stratus.server")
_facts: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("stratus_call_facts", default=None)


def note(**facts: Any) -> None:
    """Record facts about the current call (``path``, ``version``, ``nbytes``) for the observers."""
    current = _facts.get()
    if current is not None:
        current.update(facts)


CallObserver = Callable[..., None]


def rpc(observe: CallObserver | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a servicer method (unary or streaming) so typed errors become status codes.

    ``observe(method, context, code, seconds, **facts)`` is called once per call, after it ends;
    the server uses it for the audit log and metrics.
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        method = fn.__name__

        async def fail(context: grpc.aio.ServicerContext, exc: BaseException) -> grpc.StatusCode:
            code = status_for(exc)
            context.set_trailing_metadata(trailing_details(exc))
            if code is grpc.StatusCode.INTERNAL:
                log.exception("internal error in %s", method)
                await context.abort(code, f"internal server error in {method}; see the server log")
            await context.abort(code, str(exc))
            return code  # pragma: no cover - abort always raises

        def finish(self: Any, context: grpc.aio.ServicerContext, code: grpc.StatusCode, started: float) -> None:
            hook = observe or getattr(self, "observe_call", None)
            if hook is not None:
                hook(method, context, code, time.perf_counter() - started, **(_facts.get() or {}))

        if inspect.isasyncgenfunction(fn):

            @functools.wraps(fn)
            async def stream_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
                started, code = time.perf_counter(), grpc.StatusCode.OK
                _facts.set({})
                try:
                    async for item in fn(self, request, context):
                        yield item
                except errors.CasError as exc:
                    code = status_for(exc)
                    await fail(context, exc)
                except grpc.aio.AbortError:
                    code = context.code() or grpc.StatusCode.UNKNOWN
                    raise
                except Exception as exc:
                    code = grpc.StatusCode.INTERNAL
                    await fail(context, exc)
                finally:
                    finish(self, context, code, started)

            return stream_wrapper

        @functools.wraps(fn)
        async def unary_wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            started, code = time.perf_counter(), grpc.StatusCode.OK
            _facts.set({})
            try:
                return await fn(self, request, context)
            except errors.CasError as exc:
                code = status_for(exc)
                await fail(context, exc)
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except Exception as exc:
                code = grpc.StatusCode.INTERNAL
                await fail(context, exc)
            finally:
                finish(self, context, code, started)

        return unary_wrapper

    return decorate
