"""What the transfer code needs from a connection: the stub, the server's parameters, errors, retries.

The server owns the chunking parameters and the compression level; a client that chunked with its
own would never deduplicate against anyone else, so everything here comes from ``ServerInfo``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import grpc

from cli.lazy import lazy
from cli.rpc_errors import map_rpc_error
from proto import stratus_pb2 as pb
from proto import stratus_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from cas.chunker import ChunkParams
else:  # the chunker (pyfastcdc) loads with the first transfer, not for stat or ls
    ChunkParams = lazy("cas.chunker", "ChunkParams")

T = TypeVar("T")

DEFAULT_BATCH_BYTES = 2 * 1024 * 1024
DEFAULT_BATCH_FILES = 1000  # servers that do not announce max_batch_files
# Room for the protobuf framing of a batch on top of its chunk frames.
_BATCH_OVERHEAD = 64 * 1024

ProgressFn = Callable[[int, int | None], None]  # progress(done, total): cumulative bytes of a transfer
Advance = Callable[[int], None]  # advance(n): n more bytes done

# The request header that picks a namespace other than the caller's own (service/gate.py).
NAMESPACE_HEADER = "stratus-namespace"


class _CallDetails(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: Any
    compression: Any


class _HeaderInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds fixed request headers to every call of a channel, whatever its shape."""

    def __init__(self, headers: list[tuple[str, str]]) -> None:
        self.headers = headers

    def _details(self, d: Any) -> _CallDetails:  # noqa: ANN401 - grpc.ClientCallDetails
        metadata = [*(d.metadata or ()), *self.headers]
        return _CallDetails(d.method, d.timeout, metadata, d.credentials, d.wait_for_ready, d.compression)

    def intercept_unary_unary(self, continuation, details, request):  # noqa: ANN001, ANN201
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):  # noqa: ANN001, ANN201
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, request_iterator):  # noqa: ANN001, ANN201
        return continuation(self._details(details), request_iterator)

    def intercept_stream_stream(self, continuation, details, request_iterator):  # noqa: ANN001, ANN201
        return continuation(self._details(details), request_iterator)


def with_namespace(channel: grpc.Channel, namespace: str | None) -> grpc.Channel:
    """``channel`` sending the namespace header on every call (unchanged when ``namespace`` is empty)."""
    if not namespace:
        return channel
    return grpc.intercept_channel(channel, _HeaderInterceptor([(NAMESPACE_HEADER, namespace)]))


# Calls that change nothing on the server: the channel retries them on UNAVAILABLE with bounded
# exponential backoff, at most RETRY_ATTEMPTS tries in all (about 1.5 s for a server that cannot be
# reached). A server whose metadata store is down says when to retry (grpc-retry-pushback-ms), so
# a short outage of the store is bridged: each try also waits on the server's own store retries.
# RESOURCE_EXHAUSTED is retried only when it is a rate limit: the server then sends its retry
# delay as the pushback, and -1 (no retry, per the gRPC retry spec) for every other exhausted
# resource. Writes are never retried blindly (the engines retry rate-limited uploads and commits
# themselves: cli/pacing.py).
IDEMPOTENT_METHODS = (
    "ServerInfo", "Stat", "ListFiles", "ListVersions", "GetManifest", "GetManifests", "GetChunks",
    "FindMissingChunks", "Diff", "Changes",
)
RETRY_ATTEMPTS = 5  # gRPC's own ceiling
RETRY_INITIAL_BACKOFF_S = 0.1
RETRY_MAX_BACKOFF_S = 1.0


def retry_service_config() -> str:
    """The gRPC service config (JSON) that retries the idempotent calls on UNAVAILABLE and on
    RESOURCE_EXHAUSTED that the server allows a retry of (a rate limit)."""
    policy = {
        "maxAttempts": RETRY_ATTEMPTS,
        "initialBackoff": f"{RETRY_INITIAL_BACKOFF_S}s",
        "maxBackoff": f"{RETRY_MAX_BACKOFF_S}s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"],
    }
    names = [{"service": "stratus.v1.Stratus", "method": m} for m in IDEMPOTENT_METHODS]
    return json.dumps({"methodConfig": [{"name": names, "retryPolicy": policy}]})


@dataclass(frozen=True)
class TransferParams:
    """The parameters a transfer must use, as announced by the server."""

    chunking: ChunkParams
    compression_level: int
    batch_bytes: int
    max_message_bytes: int
    max_manifest_chunks: int
    max_batch_files: int = DEFAULT_BATCH_FILES

    @classmethod
    def from_info(cls, info: pb.ServerInfoResponse) -> TransferParams:
        """Derive transfer parameters from a ServerInfo response."""
        c = info.chunking
        chunking = ChunkParams(c.min_size, c.avg_size, c.max_size) if c.max_size else ChunkParams()
        batch = info.max_batch_bytes or DEFAULT_BATCH_BYTES
        if info.max_message_bytes:
            # A batch must fit one message together with its framing, whatever the server suggests.
            batch = min(batch, info.max_message_bytes - _BATCH_OVERHEAD - chunking.max_size)
        batch = max(batch, chunking.max_size + _BATCH_OVERHEAD)
        return cls(
            chunking=chunking,
            compression_level=info.compression_level or 3,
            batch_bytes=batch,
            max_message_bytes=info.max_message_bytes,
            max_manifest_chunks=info.max_manifest_chunks,
            max_batch_files=info.max_batch_files or DEFAULT_BATCH_FILES,
        )


class Remote:
    """A stub plus the server's announced parameters, fetched once and cached."""

    def __init__(self, channel: grpc.Channel, target: str | None = None) -> None:
        self.stub = pb_grpc.StratusStub(channel)
        self.target = target
        self._lock = threading.Lock()
        self._info: pb.ServerInfoResponse | None = None
        self._params: TransferParams | None = None

    def call(self, method: Callable[..., T], *args: object, **kwargs: object) -> T:
        """Invoke a stub method, raising typed errors instead of grpc.RpcError."""
        try:
            return method(*args, **kwargs)
        except grpc.RpcError as err:
            raise map_rpc_error(err, self.target) from err

    def info(self, refresh: bool = False) -> pb.ServerInfoResponse:
        """ServerInfo, fetched on first use (or when ``refresh``) and cached."""
        with self._lock:
            if self._info is None or refresh:
                self._info = self.call(self.stub.ServerInfo, pb.ServerInfoRequest())
                self._params = TransferParams.from_info(self._info)
            return self._info

    @property
    def params(self) -> TransferParams:
        """The transfer parameters of the cached ServerInfo."""
        if self._params is None:
            self.info()
        assert self._params is not None
        return self._params


def cumulative(fn: ProgressFn | None, total: int | None) -> Advance | None:
    """An ``advance(n)`` that reports ``fn(done, total)`` (thread-safe; None when ``fn`` is None)."""
    if fn is None:
        return None
    lock = threading.Lock()
    done = [0]

    def advance(n: int) -> None:
        with lock:
            done[0] += n
            fn(done[0], total)

    return advance
