"""The PutChunks deserializer's wire scan: chunks per message and base hints per chunk are
counted before the message is parsed."""

from __future__ import annotations

import pytest
from google.protobuf.message import DecodeError

from proto import stratus_pb2 as pb
from service.admission import MAX_HINTS_PER_CHUNK, OversizeBatch, chunk_batch_reader


def batch(*hint_counts: int) -> bytes:
    chunks = [pb.ChunkData(digest=bytes([n]) * 32, frame=b"f" * (n + 1),
                           base_hints=[h.to_bytes(32, "big") for h in range(k)])
              for n, k in enumerate(hint_counts)]
    return pb.ChunkBatch(chunks=chunks).SerializeToString()


def test_chunks_within_the_hint_limit_parse_as_sent():
    raw = batch(0, 1, MAX_HINTS_PER_CHUNK, 2)
    parsed = chunk_batch_reader(8)(raw)
    assert isinstance(parsed, pb.ChunkBatch)
    assert parsed.SerializeToString() == raw
    assert [len(c.base_hints) for c in parsed.chunks] == [0, 1, MAX_HINTS_PER_CHUNK, 2]


@pytest.mark.parametrize("hints", [MAX_HINTS_PER_CHUNK + 1, 200_000])
def test_a_chunk_with_too_many_hints_is_refused_before_parsing(hints):
    raw = batch(1, hints, 0)
    refused = chunk_batch_reader(8)(raw)
    assert refused == OversizeBatch(3, len(raw), MAX_HINTS_PER_CHUNK + 1)


def test_too_many_chunks_is_refused_as_before():
    raw = batch(*[0] * 9)
    assert chunk_batch_reader(8)(raw) == OversizeBatch(9, len(raw))


def test_a_truncated_message_is_left_to_the_parser():
    raw = batch(2, 1)[:-5]
    with pytest.raises(DecodeError):
        chunk_batch_reader(8)(raw)
