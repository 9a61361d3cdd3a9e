"""Protocol byte counting: :class:`WireCounter`, and ``python -m bench.wire CLI-ARGS...``, the
``stratus`` CLI run with every channel it opens counted.

:class:`WireCounter` is a client interceptor that adds up the serialised size of every request
and response message (chunk batches, digest lists, manifests, listings, commits, everything).
That is what the protocol puts on the wire, before HTTP/2 framing (~9 bytes per 16 KiB frame)
and TLS records.

``python -m bench.wire ARGS`` is ``python -m cli.main ARGS`` with ``grpc.secure_channel`` and
``grpc.insecure_channel`` wrapped so that every channel the CLI opens goes through one counter;
at exit it writes ``{"sent": N, "received": M}`` to the file named by ``STRATUS_BENCH_WIRE_OUT``.
So a benchmark times the CLI as a user runs it and still counts every byte of its walk
(``ListFiles``), its chunks, manifests and commits.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
from collections.abc import Iterator

import grpc

WIRE_OUT_ENV = "STRATUS_BENCH_WIRE_OUT"


class _CountingStream:
    """Wraps a response-streaming call: counts each message, delegates everything else."""

    def __init__(self, call: object, counter: WireCounter) -> None:
        self._call = call
        self._counter = counter

    def __iter__(self) -> _CountingStream:
        return self

    def __next__(self) -> object:
        message = next(self._call)  # type: ignore[call-overload]
        self._counter.add(received=message.ByteSize())
        return message

    def __getattr__(self, name: str) -> object:
        return getattr(self._call, name)


class WireCounter(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Counts serialised message bytes in both directions, for every RPC of a channel."""

    def __init__(self) -> None:
        self.sent = 0
        self.received = 0
        self._lock = threading.Lock()

    def add(self, sent: int = 0, received: int = 0) -> None:
        with self._lock:
            self.sent += sent
            self.received += received

    def snapshot(self) -> tuple[int, int]:
        """(sent, received) so far."""
        with self._lock:
            return self.sent, self.received

    def _on_done(self, future: grpc.Future) -> None:
        if future.exception() is None:
            self.add(received=future.result().ByteSize())

    def _requests(self, iterator: Iterator) -> Iterator:
        for request in iterator:
            self.add(sent=request.ByteSize())
            yield request

    def intercept_unary_unary(self, continuation, client_call_details, request):
        self.add(sent=request.ByteSize())
        outcome = continuation(client_call_details, request)
        outcome.add_done_callback(self._on_done)
        return outcome

    def intercept_unary_stream(self, continuation, client_call_details, request):
        self.add(sent=request.ByteSize())
        return _CountingStream(continuation(client_call_details, request), self)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        outcome = continuation(client_call_details, self._requests(request_iterator))
        outcome.add_done_callback(self._on_done)
        return outcome

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return _CountingStream(continuation(client_call_details, self._requests(request_iterator)), self)


def _count_cli_channels(out: str) -> None:
    """Route every channel this process opens through one counter; write its totals to ``out`` at exit."""
    counter = WireCounter()
    secure, insecure = grpc.secure_channel, grpc.insecure_channel

    def counted_secure(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - same signature as grpc's
        return grpc.intercept_channel(secure(*args, **kwargs), counter)

    def counted_insecure(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        return grpc.intercept_channel(insecure(*args, **kwargs), counter)

    grpc.secure_channel, grpc.insecure_channel = counted_secure, counted_insecure

    def report() -> None:
        sent, received = counter.snapshot()
        with open(out, "w") as f:
            json.dump({"sent": sent, "received": received}, f)

    atexit.register(report)


if __name__ == "__main__":
    if os.environ.get(WIRE_OUT_ENV):
        _count_cli_channels(os.environ[WIRE_OUT_ENV])
    from cli.main import app

    app(prog_name="stratus")
