from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ChunkRef(_message.Message):
    __slots__ = ("digest", "length")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    digest: bytes
    length: int
    def __init__(self, digest: _Optional[bytes] = ..., length: _Optional[int] = ...) -> None: ...

class Manifest(_message.Message):
    __slots__ = ("chunks", "size", "file_digest")
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    FILE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    chunks: _containers.RepeatedCompositeFieldContainer[ChunkRef]
    size: int
    file_digest: bytes
    def __init__(self, chunks: _Optional[_Iterable[_Union[ChunkRef, _Mapping]]] = ..., size: _Optional[int] = ..., file_digest: _Optional[bytes] = ...) -> None: ...

class VersionInfo(_message.Message):
    __slots__ = ("path", "version", "manifest_digest", "size", "created_ms", "identity", "deleted", "mode", "mtime_ns", "file_digest", "chunk_count", "new_chunks", "new_bytes", "signature", "signer_public_key")
    PATH_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CREATED_MS_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    MTIME_NS_FIELD_NUMBER: _ClassVar[int]
    FILE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COUNT_FIELD_NUMBER: _ClassVar[int]
    NEW_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    NEW_BYTES_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SIGNER_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    path: str
    version: int
    manifest_digest: bytes
    size: int
    created_ms: int
    identity: str
    deleted: bool
    mode: int
    mtime_ns: int
    file_digest: bytes
    chunk_count: int
    new_chunks: int
    new_bytes: int
    signature: bytes
    signer_public_key: bytes
    def __init__(self, path: _Optional[str] = ..., version: _Optional[int] = ..., manifest_digest: _Optional[bytes] = ..., size: _Optional[int] = ..., created_ms: _Optional[int] = ..., identity: _Optional[str] = ..., deleted: _Optional[bool] = ..., mode: _Optional[int] = ..., mtime_ns: _Optional[int] = ..., file_digest: _Optional[bytes] = ..., chunk_count: _Optional[int] = ..., new_chunks: _Optional[int] = ..., new_bytes: _Optional[int] = ..., signature: _Optional[bytes] = ..., signer_public_key: _Optional[bytes] = ...) -> None: ...

class ChunkParams(_message.Message):
    __slots__ = ("min_size", "avg_size", "max_size")
    MIN_SIZE_FIELD_NUMBER: _ClassVar[int]
    AVG_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_SIZE_FIELD_NUMBER: _ClassVar[int]
    min_size: int
    avg_size: int
    max_size: int
    def __init__(self, min_size: _Optional[int] = ..., avg_size: _Optional[int] = ..., max_size: _Optional[int] = ...) -> None: ...

class ServerInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StoreStats(_message.Message):
    __slots__ = ("chunk_count", "unique_bytes", "stored_bytes", "logical_bytes", "file_count", "version_count", "store_chunk_count")
    CHUNK_COUNT_FIELD_NUMBER: _ClassVar[int]
    UNIQUE_BYTES_FIELD_NUMBER: _ClassVar[int]
    STORED_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOGICAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    FILE_COUNT_FIELD_NUMBER: _ClassVar[int]
    VERSION_COUNT_FIELD_NUMBER: _ClassVar[int]
    STORE_CHUNK_COUNT_FIELD_NUMBER: _ClassVar[int]
    chunk_count: int
    unique_bytes: int
    stored_bytes: int
    logical_bytes: int
    file_count: int
    version_count: int
    store_chunk_count: int
    def __init__(self, chunk_count: _Optional[int] = ..., unique_bytes: _Optional[int] = ..., stored_bytes: _Optional[int] = ..., logical_bytes: _Optional[int] = ..., file_count: _Optional[int] = ..., version_count: _Optional[int] = ..., store_chunk_count: _Optional[int] = ...) -> None: ...

class ServerInfoResponse(_message.Message):
    __slots__ = ("server_version", "chunking", "compression", "compression_level", "max_message_bytes", "max_batch_bytes", "max_page_size", "identity", "namespace", "stats", "max_manifest_chunks", "max_batch_files", "manifest_deltas", "delta_hints", "delta_downloads")
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHUNKING_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_LEVEL_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    MAX_MANIFEST_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FILES_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_DELTAS_FIELD_NUMBER: _ClassVar[int]
    DELTA_HINTS_FIELD_NUMBER: _ClassVar[int]
    DELTA_DOWNLOADS_FIELD_NUMBER: _ClassVar[int]
    server_version: str
    chunking: ChunkParams
    compression: str
    compression_level: int
    max_message_bytes: int
    max_batch_bytes: int
    max_page_size: int
    identity: str
    namespace: str
    stats: StoreStats
    max_manifest_chunks: int
    max_batch_files: int
    manifest_deltas: bool
    delta_hints: bool
    delta_downloads: bool
    def __init__(self, server_version: _Optional[str] = ..., chunking: _Optional[_Union[ChunkParams, _Mapping]] = ..., compression: _Optional[str] = ..., compression_level: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., max_batch_bytes: _Optional[int] = ..., max_page_size: _Optional[int] = ..., identity: _Optional[str] = ..., namespace: _Optional[str] = ..., stats: _Optional[_Union[StoreStats, _Mapping]] = ..., max_manifest_chunks: _Optional[int] = ..., max_batch_files: _Optional[int] = ..., manifest_deltas: _Optional[bool] = ..., delta_hints: _Optional[bool] = ..., delta_downloads: _Optional[bool] = ...) -> None: ...

class FindMissingChunksRequest(_message.Message):
    __slots__ = ("digests",)
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    digests: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, digests: _Optional[_Iterable[bytes]] = ...) -> None: ...

class FindMissingChunksResponse(_message.Message):
    __slots__ = ("missing",)
    MISSING_FIELD_NUMBER: _ClassVar[int]
    missing: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, missing: _Optional[_Iterable[bytes]] = ...) -> None: ...

class ChunkData(_message.Message):
    __slots__ = ("digest", "frame", "base_hints", "base")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    BASE_HINTS_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    digest: bytes
    frame: bytes
    base_hints: _containers.RepeatedScalarFieldContainer[bytes]
    base: bytes
    def __init__(self, digest: _Optional[bytes] = ..., frame: _Optional[bytes] = ..., base_hints: _Optional[_Iterable[bytes]] = ..., base: _Optional[bytes] = ...) -> None: ...

class ChunkBatch(_message.Message):
    __slots__ = ("chunks",)
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    chunks: _containers.RepeatedCompositeFieldContainer[ChunkData]
    def __init__(self, chunks: _Optional[_Iterable[_Union[ChunkData, _Mapping]]] = ...) -> None: ...

class PutChunksResponse(_message.Message):
    __slots__ = ("received", "stored", "frame_bytes")
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    FRAME_BYTES_FIELD_NUMBER: _ClassVar[int]
    received: int
    stored: int
    frame_bytes: int
    def __init__(self, received: _Optional[int] = ..., stored: _Optional[int] = ..., frame_bytes: _Optional[int] = ...) -> None: ...

class CommitFileRequest(_message.Message):
    __slots__ = ("path", "manifest", "if_version", "mode", "mtime_ns", "signature", "signer_public_key", "base_manifest_digest", "pieces")
    PATH_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    IF_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    MTIME_NS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    SIGNER_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    BASE_MANIFEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PIECES_FIELD_NUMBER: _ClassVar[int]
    path: str
    manifest: Manifest
    if_version: int
    mode: int
    mtime_ns: int
    signature: bytes
    signer_public_key: bytes
    base_manifest_digest: bytes
    pieces: _containers.RepeatedCompositeFieldContainer[ManifestPiece]
    def __init__(self, path: _Optional[str] = ..., manifest: _Optional[_Union[Manifest, _Mapping]] = ..., if_version: _Optional[int] = ..., mode: _Optional[int] = ..., mtime_ns: _Optional[int] = ..., signature: _Optional[bytes] = ..., signer_public_key: _Optional[bytes] = ..., base_manifest_digest: _Optional[bytes] = ..., pieces: _Optional[_Iterable[_Union[ManifestPiece, _Mapping]]] = ...) -> None: ...

class ManifestRun(_message.Message):
    __slots__ = ("start", "count")
    START_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    start: int
    count: int
    def __init__(self, start: _Optional[int] = ..., count: _Optional[int] = ...) -> None: ...

class ManifestPiece(_message.Message):
    __slots__ = ("copy", "chunk")
    COPY_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    copy: ManifestRun
    chunk: ChunkRef
    def __init__(self, copy: _Optional[_Union[ManifestRun, _Mapping]] = ..., chunk: _Optional[_Union[ChunkRef, _Mapping]] = ...) -> None: ...

class CommitFileResponse(_message.Message):
    __slots__ = ("version", "unchanged")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    version: VersionInfo
    unchanged: bool
    def __init__(self, version: _Optional[_Union[VersionInfo, _Mapping]] = ..., unchanged: _Optional[bool] = ...) -> None: ...

class ItemError(_message.Message):
    __slots__ = ("code", "message", "detail")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    detail: ErrorDetail
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., detail: _Optional[_Union[ErrorDetail, _Mapping]] = ...) -> None: ...

class ErrorDetail(_message.Message):
    __slots__ = ("reason", "retry_after_ms", "missing_chunks", "version_conflict", "limit_exceeded", "backend_unavailable", "storage_full")
    class Reason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        REASON_UNSPECIFIED: _ClassVar[ErrorDetail.Reason]
        INVALID_INPUT: _ClassVar[ErrorDetail.Reason]
        NOT_FOUND: _ClassVar[ErrorDetail.Reason]
        VERSION_CONFLICT: _ClassVar[ErrorDetail.Reason]
        MISSING_CHUNKS: _ClassVar[ErrorDetail.Reason]
        INTEGRITY: _ClassVar[ErrorDetail.Reason]
        UNAUTHENTICATED: _ClassVar[ErrorDetail.Reason]
        PERMISSION_DENIED: _ClassVar[ErrorDetail.Reason]
        RATE_LIMITED: _ClassVar[ErrorDetail.Reason]
        LIMIT_EXCEEDED: _ClassVar[ErrorDetail.Reason]
        STORAGE_FULL: _ClassVar[ErrorDetail.Reason]
        BACKEND_UNAVAILABLE: _ClassVar[ErrorDetail.Reason]
        INTERNAL: _ClassVar[ErrorDetail.Reason]
    REASON_UNSPECIFIED: ErrorDetail.Reason
    INVALID_INPUT: ErrorDetail.Reason
    NOT_FOUND: ErrorDetail.Reason
    VERSION_CONFLICT: ErrorDetail.Reason
    MISSING_CHUNKS: ErrorDetail.Reason
    INTEGRITY: ErrorDetail.Reason
    UNAUTHENTICATED: ErrorDetail.Reason
    PERMISSION_DENIED: ErrorDetail.Reason
    RATE_LIMITED: ErrorDetail.Reason
    LIMIT_EXCEEDED: ErrorDetail.Reason
    STORAGE_FULL: ErrorDetail.Reason
    BACKEND_UNAVAILABLE: ErrorDetail.Reason
    INTERNAL: ErrorDetail.Reason
    REASON_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    MISSING_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    VERSION_CONFLICT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_EXCEEDED_FIELD_NUMBER: _ClassVar[int]
    BACKEND_UNAVAILABLE_FIELD_NUMBER: _ClassVar[int]
    STORAGE_FULL_FIELD_NUMBER: _ClassVar[int]
    reason: ErrorDetail.Reason
    retry_after_ms: int
    missing_chunks: MissingChunksDetail
    version_conflict: VersionConflictDetail
    limit_exceeded: LimitExceededDetail
    backend_unavailable: BackendUnavailableDetail
    storage_full: StorageFullDetail
    def __init__(self, reason: _Optional[_Union[ErrorDetail.Reason, str]] = ..., retry_after_ms: _Optional[int] = ..., missing_chunks: _Optional[_Union[MissingChunksDetail, _Mapping]] = ..., version_conflict: _Optional[_Union[VersionConflictDetail, _Mapping]] = ..., limit_exceeded: _Optional[_Union[LimitExceededDetail, _Mapping]] = ..., backend_unavailable: _Optional[_Union[BackendUnavailableDetail, _Mapping]] = ..., storage_full: _Optional[_Union[StorageFullDetail, _Mapping]] = ...) -> None: ...

class MissingChunksDetail(_message.Message):
    __slots__ = ("digests", "total")
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    digests: _containers.RepeatedScalarFieldContainer[bytes]
    total: int
    def __init__(self, digests: _Optional[_Iterable[bytes]] = ..., total: _Optional[int] = ...) -> None: ...

class VersionConflictDetail(_message.Message):
    __slots__ = ("path", "expected", "actual")
    PATH_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FIELD_NUMBER: _ClassVar[int]
    ACTUAL_FIELD_NUMBER: _ClassVar[int]
    path: str
    expected: int
    actual: int
    def __init__(self, path: _Optional[str] = ..., expected: _Optional[int] = ..., actual: _Optional[int] = ...) -> None: ...

class LimitExceededDetail(_message.Message):
    __slots__ = ("limit", "value", "max")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    limit: str
    value: int
    max: int
    def __init__(self, limit: _Optional[str] = ..., value: _Optional[int] = ..., max: _Optional[int] = ...) -> None: ...

class BackendUnavailableDetail(_message.Message):
    __slots__ = ("backend",)
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    backend: str
    def __init__(self, backend: _Optional[str] = ...) -> None: ...

class StorageFullDetail(_message.Message):
    __slots__ = ("quota",)
    QUOTA_FIELD_NUMBER: _ClassVar[int]
    quota: bool
    def __init__(self, quota: _Optional[bool] = ...) -> None: ...

class CommitFilesRequest(_message.Message):
    __slots__ = ("files",)
    FILES_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedCompositeFieldContainer[CommitFileRequest]
    def __init__(self, files: _Optional[_Iterable[_Union[CommitFileRequest, _Mapping]]] = ...) -> None: ...

class CommitFileResult(_message.Message):
    __slots__ = ("ok", "error")
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ok: CommitFileResponse
    error: ItemError
    def __init__(self, ok: _Optional[_Union[CommitFileResponse, _Mapping]] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ...) -> None: ...

class CommitFilesResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[CommitFileResult]
    def __init__(self, results: _Optional[_Iterable[_Union[CommitFileResult, _Mapping]]] = ...) -> None: ...

class VersionSelector(_message.Message):
    __slots__ = ("version", "as_of_ms")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    AS_OF_MS_FIELD_NUMBER: _ClassVar[int]
    version: int
    as_of_ms: int
    def __init__(self, version: _Optional[int] = ..., as_of_ms: _Optional[int] = ...) -> None: ...

class GetManifestRequest(_message.Message):
    __slots__ = ("path", "at", "base_manifest_digest")
    PATH_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    BASE_MANIFEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    path: str
    at: VersionSelector
    base_manifest_digest: bytes
    def __init__(self, path: _Optional[str] = ..., at: _Optional[_Union[VersionSelector, _Mapping]] = ..., base_manifest_digest: _Optional[bytes] = ...) -> None: ...

class GetManifestResponse(_message.Message):
    __slots__ = ("version", "manifest", "base_manifest_digest", "pieces")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    BASE_MANIFEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PIECES_FIELD_NUMBER: _ClassVar[int]
    version: VersionInfo
    manifest: Manifest
    base_manifest_digest: bytes
    pieces: _containers.RepeatedCompositeFieldContainer[ManifestPiece]
    def __init__(self, version: _Optional[_Union[VersionInfo, _Mapping]] = ..., manifest: _Optional[_Union[Manifest, _Mapping]] = ..., base_manifest_digest: _Optional[bytes] = ..., pieces: _Optional[_Iterable[_Union[ManifestPiece, _Mapping]]] = ...) -> None: ...

class GetManifestsRequest(_message.Message):
    __slots__ = ("files",)
    FILES_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedCompositeFieldContainer[GetManifestRequest]
    def __init__(self, files: _Optional[_Iterable[_Union[GetManifestRequest, _Mapping]]] = ...) -> None: ...

class GetManifestResult(_message.Message):
    __slots__ = ("ok", "error")
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ok: GetManifestResponse
    error: ItemError
    def __init__(self, ok: _Optional[_Union[GetManifestResponse, _Mapping]] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ...) -> None: ...

class GetManifestsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[GetManifestResult]
    def __init__(self, results: _Optional[_Iterable[_Union[GetManifestResult, _Mapping]]] = ...) -> None: ...

class GetChunksRequest(_message.Message):
    __slots__ = ("digests", "bases")
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    BASES_FIELD_NUMBER: _ClassVar[int]
    digests: _containers.RepeatedScalarFieldContainer[bytes]
    bases: _containers.RepeatedCompositeFieldContainer[DeltaBase]
    def __init__(self, digests: _Optional[_Iterable[bytes]] = ..., bases: _Optional[_Iterable[_Union[DeltaBase, _Mapping]]] = ...) -> None: ...

class DeltaBase(_message.Message):
    __slots__ = ("digest", "base")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    digest: bytes
    base: bytes
    def __init__(self, digest: _Optional[bytes] = ..., base: _Optional[bytes] = ...) -> None: ...

class ReportDamagedChunksRequest(_message.Message):
    __slots__ = ("digests",)
    DIGESTS_FIELD_NUMBER: _ClassVar[int]
    digests: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, digests: _Optional[_Iterable[bytes]] = ...) -> None: ...

class ReportDamagedChunksResponse(_message.Message):
    __slots__ = ("damaged",)
    DAMAGED_FIELD_NUMBER: _ClassVar[int]
    damaged: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, damaged: _Optional[_Iterable[bool]] = ...) -> None: ...

class UploadHeader(_message.Message):
    __slots__ = ("path", "if_version", "mode", "mtime_ns")
    PATH_FIELD_NUMBER: _ClassVar[int]
    IF_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    MTIME_NS_FIELD_NUMBER: _ClassVar[int]
    path: str
    if_version: int
    mode: int
    mtime_ns: int
    def __init__(self, path: _Optional[str] = ..., if_version: _Optional[int] = ..., mode: _Optional[int] = ..., mtime_ns: _Optional[int] = ...) -> None: ...

class UploadRequest(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: UploadHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[UploadHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class DownloadRequest(_message.Message):
    __slots__ = ("path", "at", "offset")
    PATH_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    path: str
    at: VersionSelector
    offset: int
    def __init__(self, path: _Optional[str] = ..., at: _Optional[_Union[VersionSelector, _Mapping]] = ..., offset: _Optional[int] = ...) -> None: ...

class DownloadResponse(_message.Message):
    __slots__ = ("version", "data")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    version: VersionInfo
    data: bytes
    def __init__(self, version: _Optional[_Union[VersionInfo, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class StatRequest(_message.Message):
    __slots__ = ("path", "at")
    PATH_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    path: str
    at: VersionSelector
    def __init__(self, path: _Optional[str] = ..., at: _Optional[_Union[VersionSelector, _Mapping]] = ...) -> None: ...

class ListFilesRequest(_message.Message):
    __slots__ = ("prefix", "page_size", "page_token", "as_of_ms", "include_deleted")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    AS_OF_MS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_DELETED_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    page_size: int
    page_token: str
    as_of_ms: int
    include_deleted: bool
    def __init__(self, prefix: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., as_of_ms: _Optional[int] = ..., include_deleted: _Optional[bool] = ...) -> None: ...

class ListFilesResponse(_message.Message):
    __slots__ = ("files", "next_page_token")
    FILES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedCompositeFieldContainer[VersionInfo]
    next_page_token: str
    def __init__(self, files: _Optional[_Iterable[_Union[VersionInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListVersionsRequest(_message.Message):
    __slots__ = ("path", "limit")
    PATH_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    path: str
    limit: int
    def __init__(self, path: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListVersionsResponse(_message.Message):
    __slots__ = ("versions",)
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[VersionInfo]
    def __init__(self, versions: _Optional[_Iterable[_Union[VersionInfo, _Mapping]]] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("path", "if_version")
    PATH_FIELD_NUMBER: _ClassVar[int]
    IF_VERSION_FIELD_NUMBER: _ClassVar[int]
    path: str
    if_version: int
    def __init__(self, path: _Optional[str] = ..., if_version: _Optional[int] = ...) -> None: ...

class RetentionPolicy(_message.Message):
    __slots__ = ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly", "keep_within")
    KEEP_LAST_FIELD_NUMBER: _ClassVar[int]
    KEEP_HOURLY_FIELD_NUMBER: _ClassVar[int]
    KEEP_DAILY_FIELD_NUMBER: _ClassVar[int]
    KEEP_WEEKLY_FIELD_NUMBER: _ClassVar[int]
    KEEP_MONTHLY_FIELD_NUMBER: _ClassVar[int]
    KEEP_YEARLY_FIELD_NUMBER: _ClassVar[int]
    KEEP_WITHIN_FIELD_NUMBER: _ClassVar[int]
    keep_last: int
    keep_hourly: int
    keep_daily: int
    keep_weekly: int
    keep_monthly: int
    keep_yearly: int
    keep_within: str
    def __init__(self, keep_last: _Optional[int] = ..., keep_hourly: _Optional[int] = ..., keep_daily: _Optional[int] = ..., keep_weekly: _Optional[int] = ..., keep_monthly: _Optional[int] = ..., keep_yearly: _Optional[int] = ..., keep_within: _Optional[str] = ...) -> None: ...

class ForgetRequest(_message.Message):
    __slots__ = ("prefix", "policy", "dry_run")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    policy: RetentionPolicy
    dry_run: bool
    def __init__(self, prefix: _Optional[str] = ..., policy: _Optional[_Union[RetentionPolicy, _Mapping]] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class VersionVerdict(_message.Message):
    __slots__ = ("version", "keep", "reasons")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    KEEP_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    version: VersionInfo
    keep: bool
    reasons: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: _Optional[_Union[VersionInfo, _Mapping]] = ..., keep: _Optional[bool] = ..., reasons: _Optional[_Iterable[str]] = ...) -> None: ...

class ForgetPathResult(_message.Message):
    __slots__ = ("path", "versions", "removed", "error")
    PATH_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    path: str
    versions: _containers.RepeatedCompositeFieldContainer[VersionVerdict]
    removed: int
    error: ItemError
    def __init__(self, path: _Optional[str] = ..., versions: _Optional[_Iterable[_Union[VersionVerdict, _Mapping]]] = ..., removed: _Optional[int] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ...) -> None: ...

class ByteRange(_message.Message):
    __slots__ = ("offset", "length")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    offset: int
    length: int
    def __init__(self, offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class DiffRequest(_message.Message):
    __slots__ = ("path", "from_version", "to_version")
    PATH_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    path: str
    from_version: int
    to_version: int
    def __init__(self, path: _Optional[str] = ..., from_version: _Optional[int] = ..., to_version: _Optional[int] = ...) -> None: ...

class DiffResponse(_message.Message):
    __slots__ = ("to", "changed", "shared_chunks", "new_chunks", "shared_bytes", "new_bytes")
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    SHARED_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    NEW_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    SHARED_BYTES_FIELD_NUMBER: _ClassVar[int]
    NEW_BYTES_FIELD_NUMBER: _ClassVar[int]
    to: VersionInfo
    changed: _containers.RepeatedCompositeFieldContainer[ByteRange]
    shared_chunks: int
    new_chunks: int
    shared_bytes: int
    new_bytes: int
    def __init__(self, to: _Optional[_Union[VersionInfo, _Mapping]] = ..., changed: _Optional[_Iterable[_Union[ByteRange, _Mapping]]] = ..., shared_chunks: _Optional[int] = ..., new_chunks: _Optional[int] = ..., shared_bytes: _Optional[int] = ..., new_bytes: _Optional[int] = ..., **kwargs) -> None: ...

class Event(_message.Message):
    __slots__ = ("cursor", "kind", "path", "version", "size", "time_ms", "identity", "manifest_digest")
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    TIME_MS_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    cursor: str
    kind: str
    path: str
    version: int
    size: int
    time_ms: int
    identity: str
    manifest_digest: bytes
    def __init__(self, cursor: _Optional[str] = ..., kind: _Optional[str] = ..., path: _Optional[str] = ..., version: _Optional[int] = ..., size: _Optional[int] = ..., time_ms: _Optional[int] = ..., identity: _Optional[str] = ..., manifest_digest: _Optional[bytes] = ...) -> None: ...

class ChangesRequest(_message.Message):
    __slots__ = ("since", "limit", "prefix")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    since: str
    limit: int
    prefix: str
    def __init__(self, since: _Optional[str] = ..., limit: _Optional[int] = ..., prefix: _Optional[str] = ...) -> None: ...

class ChangesResponse(_message.Message):
    __slots__ = ("events", "cursor")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    cursor: str
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ..., cursor: _Optional[str] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("prefix", "since")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    since: str
    def __init__(self, prefix: _Optional[str] = ..., since: _Optional[str] = ...) -> None: ...

class CheckStoreRequest(_message.Message):
    __slots__ = ("read_data",)
    READ_DATA_FIELD_NUMBER: _ClassVar[int]
    read_data: bool
    def __init__(self, read_data: _Optional[bool] = ...) -> None: ...

class CheckStoreResponse(_message.Message):
    __slots__ = ("chunks_checked", "bytes_checked", "damaged", "missing", "awaiting_repair", "damaged_digests")
    CHUNKS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    BYTES_CHECKED_FIELD_NUMBER: _ClassVar[int]
    DAMAGED_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    AWAITING_REPAIR_FIELD_NUMBER: _ClassVar[int]
    DAMAGED_DIGESTS_FIELD_NUMBER: _ClassVar[int]
    chunks_checked: int
    bytes_checked: int
    damaged: int
    missing: int
    awaiting_repair: int
    damaged_digests: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, chunks_checked: _Optional[int] = ..., bytes_checked: _Optional[int] = ..., damaged: _Optional[int] = ..., missing: _Optional[int] = ..., awaiting_repair: _Optional[int] = ..., damaged_digests: _Optional[_Iterable[bytes]] = ...) -> None: ...
