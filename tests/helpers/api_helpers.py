"""Raw API calls shared by the protocol tests (they speak protobuf, not the client library)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from proto import stratus_pb2 as pb
from proto import stratus_pb2_grpc as pb_grpc


def put_chunks(stub: pb_grpc.StratusStub, chunks: Iterable[tuple[bytes, bytes]], **call: Any) -> pb.PutChunksResponse:
    """PutChunks of one batch of (digest, frame) pairs; ``call`` goes to the RPC (timeout, metadata)."""
    batch = pb.ChunkBatch(chunks=[pb.ChunkData(digest=d, frame=f) for d, f in chunks])
    return stub.PutChunks(iter([batch]), **call)
