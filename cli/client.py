"""Synchronous StratusVault client: delta upload/download plus thin wrappers over every RPC.

This is the low-level connection (protobuf in and out) that the engines run on; scripts use the
public library, :class:`cli.library.Client`, which wraps it.

Every method raises the typed errors of :mod:`cas.errors` (never ``grpc.RpcError``), so callers
such as the CLI map failures to exit codes without knowing about gRPC. The transfer logic lives
in :mod:`cli.upload` and :mod:`cli.download`; this module owns the connection.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, BinaryIO

import grpc

from cas.errors import CasError, InvalidInputError
from cli.lazy import lazy
from cli.manifestdelta import ManifestCache
from cli.remote import ProgressFn, Remote, TransferParams, cumulative, retry_service_config, with_namespace
from cli.rpc_errors import translate_errors
from proto import stratus_pb2 as pb

if TYPE_CHECKING:
    from cli import batch as _batch
    from cli import download as _download
    from cli import fetch as _fetch
    from cli import upload as _upload
    from cli.download import GetOutcome
    from cli.upload import FileOutcome
else:  # the transfer machinery (chunking, hashing, zstd) loads with the first transfer, not for stat or ls
    _batch = lazy("cli.batch")
    _download = lazy("cli.download")
    _upload = lazy("cli.upload")
    _fetch = lazy("cli.fetch")

__all__ = ["FileOutcome", "GetOutcome", "StratusClient", "channel_options", "tls_credentials"]


def __getattr__(name: str) -> object:
    """The outcome types are importable from here, loaded with their modules on demand
    (``PutResult`` is another name for the upload engine's one per-file outcome, ``FileOutcome``)."""
    if name == "GetOutcome":
        return _download.GetOutcome
    if name in ("FileOutcome", "PutResult"):
        return _upload.FileOutcome
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_UPLOAD_PIECE = 1 << 20


def channel_options() -> list[tuple[str, int | str]]:
    """gRPC channel options: room for big batches and manifests, retries of idempotent calls, and
    a connection of the client's own (gRPC would otherwise share one between clients of the same
    server in a process, and with it a plaintext caller's per-connection limits)."""
    return [
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", retry_service_config()),
    ]


def tls_credentials(
    tls_dir: str | os.PathLike[str], client_name: str | None = None
) -> grpc.ChannelCredentials:
    """mTLS credentials from ``tls_dir``: ``ca.pem`` plus ``client.pem``/``client-key.pem``
    (or ``client-NAME.pem``/``client-NAME-key.pem`` when ``client_name`` is given)."""
    folder = Path(tls_dir)
    stem = f"client-{client_name}" if client_name else "client"
    files = {"ca": folder / "ca.pem", "cert": folder / f"{stem}.pem", "key": folder / f"{stem}-key.pem"}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise InvalidInputError(
            f"TLS material not found: {', '.join(missing)} (create it with `stratus certs init {folder}`)"
        )
    return grpc.ssl_channel_credentials(
        root_certificates=files["ca"].read_bytes(),
        private_key=files["key"].read_bytes(),
        certificate_chain=files["cert"].read_bytes(),
    )


class StratusClient:
    """A connection to a StratusVault server.

    Thread-safe for concurrent calls (gRPC channels are); ServerInfo is fetched once, on first
    use, and its chunking parameters, compression level and batch size drive every transfer.

    ``manifest_cache``: a folder where the manifests of files put and got are kept, so that the
    next put of the same path sends its manifest as a delta (see :mod:`cli.manifestdelta`);
    None (the default) keeps none. ``namespace``: work in that namespace (one the caller holds a
    grant on) instead of its own; sent as the ``stratus-namespace`` header on every call.
    """

    def __init__(
        self,
        channel: grpc.Channel,
        *,
        target: str | None = None,
        manifest_cache: str | os.PathLike[str] | None = None,
        namespace: str | None = None,
    ) -> None:
        self._channel = channel
        self._remote = Remote(with_namespace(channel, namespace), target)
        self.stub = self._remote.stub
        self._manifests = ManifestCache(manifest_cache) if manifest_cache is not None else None

    @classmethod
    def connect(
        cls,
        server: str,
        *,
        tls_dir: str | os.PathLike[str] | None = None,
        insecure: bool = False,
        client_name: str | None = None,
        manifest_cache: str | os.PathLike[str] | None = None,
        namespace: str | None = None,
    ) -> StratusClient:
        """Open a channel to ``server`` (HOST:PORT): mTLS with the files in ``tls_dir``, or plaintext
        when ``insecure``; every call works in ``namespace`` when given (else the caller's own).
        No network traffic happens until the first call."""
        if insecure:
            channel = grpc.insecure_channel(server, options=channel_options())
        elif tls_dir is not None:
            credentials = tls_credentials(tls_dir, client_name)
            channel = grpc.secure_channel(server, credentials, options=channel_options())
        else:
            raise InvalidInputError(
                "give --tls-dir (or STRATUS_TLS_DIR) for mTLS, or --insecure for plaintext"
            )
        return cls(channel, target=server, manifest_cache=manifest_cache, namespace=namespace)

    def close(self) -> None:
        """Close the channel (in-flight calls are cancelled)."""
        self._channel.close()

    def __enter__(self) -> StratusClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ---- server information ---------------------------------------------------------------------

    def info(self) -> pb.ServerInfoResponse:
        """Fresh ServerInfo (identity, namespace, limits, store statistics); also refreshes the cache."""
        return self._remote.info(refresh=True)

    def server_info(self) -> pb.ServerInfoResponse:
        """The cached ServerInfo (fetched on first use)."""
        return self._remote.info()

    def check_store(self, read_data: bool = False) -> pb.CheckStoreResponse:
        """Admin role: verify the server's chunk store and mark what is damaged (CheckStore)."""
        return self._remote.call(self._remote.stub.CheckStore, pb.CheckStoreRequest(read_data=read_data))

    @property
    def params(self) -> TransferParams:
        """The transfer parameters the server announced."""
        return self._remote.params

    @property
    def remote(self) -> Remote:
        """The stub, the server's parameters and error mapping that the transfer engines run on."""
        return self._remote

    @property
    def manifests(self) -> ManifestCache | None:
        """The manifest cache that makes re-uploads send deltas (None: none is kept)."""
        return self._manifests

    # ---- delta upload -----------------------------------------------------------------------------

    def put_file(
        self,
        local_path: str | os.PathLike[str],
        remote_path: str,
        *,
        if_version: int | None = None,
        sign_key: object = None,
        progress: ProgressFn | None = None,
    ) -> FileOutcome:
        """Upload a local file, sending only the chunks the server lacks; records its mode and mtime.

        ``if_version``: commit only if the head is that version (0: only if the path has no live
        head), else VersionConflictError. ``sign_key``: an Ed25519 private key (object or PEM
        bytes) to sign the version with. ``progress(done, total)`` may be called from a worker thread.
        """
        size = os.path.getsize(local_path) if progress is not None else None
        return _upload.upload_path(
            self._remote, local_path, remote_path, if_version=if_version, sign_key=sign_key,
            advance=cumulative(progress, size), cache=self._manifests,
        )

    def put_stream(
        self,
        stream: BinaryIO,
        remote_path: str,
        *,
        if_version: int | None = None,
        mode: int = 0,
        mtime_ns: int = 0,
        size: int | None = None,
        sign_key: object = None,
        progress: ProgressFn | None = None,
    ) -> FileOutcome:
        """Upload everything readable from a binary stream (e.g. stdin) as a new version.

        Memory stays bounded. A seekable stream can be re-read if the server asks for chunks again
        at commit; a pipe cannot, and then the MissingChunksError is raised.
        """
        source = _upload.stream_source(stream, size)
        return _upload.upload(
            self._remote, source, remote_path, if_version=if_version, mode=mode, mtime_ns=mtime_ns,
            sign_key=sign_key, advance=cumulative(progress, source.size), cache=self._manifests,
        )

    def put_bytes(
        self,
        data: bytes,
        remote_path: str,
        *,
        if_version: int | None = None,
        mode: int = 0,
        mtime_ns: int = 0,
        sign_key: object = None,
        progress: ProgressFn | None = None,
    ) -> FileOutcome:
        """Upload an in-memory buffer as a new version."""
        return self.put_stream(
            io.BytesIO(data), remote_path, if_version=if_version, mode=mode, mtime_ns=mtime_ns,
            sign_key=sign_key, progress=progress,
        )

    # ---- batches of small files ---------------------------------------------------------------------

    def commit_many(self, requests: Sequence[pb.CommitFileRequest]) -> list[pb.CommitFileResponse | CasError]:
        """Commit many manifests with CommitFiles (split to the server's limits).

        Returns, in request order, each file's response or the typed error that refused that file
        (VersionConflictError, MissingChunksError with its digests, InvalidInputError...). Errors
        of a whole call (server unreachable, credentials refused) are raised.
        """
        return _batch.commit_many(self._remote, requests)

    def get_manifests(self, requests: Sequence[pb.GetManifestRequest]) -> list[pb.GetManifestResponse | CasError]:
        """Fetch many manifests with GetManifests; per request, the response or its typed error."""
        return _batch.get_manifests(self._remote, requests)

    # ---- delta download ---------------------------------------------------------------------------

    def get_file(
        self,
        remote_path: str,
        local_path: str | os.PathLike[str],
        *,
        version: int | None = None,
        as_of_ms: int | None = None,
        verify_key: object = None,
        progress: ProgressFn | None = None,
        base_manifest_digest: bytes = b"",
    ) -> GetOutcome:
        """Download a version (head, ``version``, or the newest at ``as_of_ms``) to ``local_path``.

        Chunks the existing local file already holds are reused, the rest is fetched; everything is
        verified and the file is replaced atomically (a failure leaves the old file untouched).
        ``verify_key`` (public key, any form :func:`cas.signing.load_public_key` reads) requires a
        valid signature by that key, checked before anything is written. ``base_manifest_digest``
        names the manifest of the version the local file holds (the state cache knows it): when the
        manifest cache has it, the server may send the new manifest as a delta of it.
        """
        cache = self._manifests
        return _download.get_file(
            self._remote, remote_path, local_path, version=version, as_of_ms=as_of_ms,
            verify_key=verify_key, progress=progress, keep=cache.put if cache is not None else None,
            base_manifest=cache.get(base_manifest_digest) if cache is not None else None,
        )

    def get_stream(
        self,
        remote_path: str,
        writer: BinaryIO,
        *,
        version: int | None = None,
        as_of_ms: int | None = None,
        verify_key: object = None,
        progress: ProgressFn | None = None,
    ) -> GetOutcome:
        """Download a version into a binary writer (``stratus get REMOTE -``); chunks verified first."""
        return _download.get_stream(
            self._remote, remote_path, writer, version=version, as_of_ms=as_of_ms,
            verify_key=verify_key, progress=progress,
        )

    def get_bytes(
        self, remote_path: str, *, version: int | None = None, as_of_ms: int | None = None
    ) -> bytes:
        """Download a version into memory (small files only: holds the whole file)."""
        buffer = io.BytesIO()
        self.get_stream(remote_path, buffer, version=version, as_of_ms=as_of_ms)
        return buffer.getvalue()

    def report_damaged(self, digests: Iterable[bytes]) -> list[bytes]:
        """Tell the server which chunks it sent failed this client's verification (ReportDamagedChunks).

        The server verifies its copies of them again and marks the damaged ones, which the next
        upload of that content then repairs. Returns the digests it marked (or had marked already),
        in the given order; a chunk whose copy verifies is not among them. At most the server's
        ``max_find_digests`` digests per call (LimitExceededError beyond). Downloads do this by
        themselves for every chunk that fails their check.
        """
        return _fetch.report_damaged(self._remote, list(digests))

    # ---- browsing ----------------------------------------------------------------------------------

    def stat(self, path: str, version: int | None = None, as_of_ms: int | None = None) -> pb.VersionInfo:
        """Metadata of a version (head by default); NotFoundError if there is none."""
        at = pb.VersionSelector(version=version or 0, as_of_ms=as_of_ms or 0)
        return self._remote.call(self.stub.Stat, pb.StatRequest(path=path, at=at))

    def list_files(
        self,
        prefix: str = "",
        page_size: int = 0,
        page_token: str = "",
        as_of_ms: int = 0,
        include_deleted: bool = False,
    ) -> tuple[list[pb.VersionInfo], str]:
        """One page of files under ``prefix``; returns (files, next_page_token or "")."""
        request = pb.ListFilesRequest(
            prefix=prefix, page_size=page_size, page_token=page_token, as_of_ms=as_of_ms,
            include_deleted=include_deleted,
        )
        response = self._remote.call(self.stub.ListFiles, request)
        return list(response.files), response.next_page_token

    def iter_files(
        self, prefix: str = "", as_of_ms: int = 0, include_deleted: bool = False, page_size: int = 0
    ) -> Iterator[pb.VersionInfo]:
        """Every file under ``prefix``, walking all pages."""
        token = ""
        while True:
            files, token = self.list_files(prefix, page_size, token, as_of_ms, include_deleted)
            yield from files
            if not token:
                return

    def list_versions(self, path: str, limit: int = 0) -> list[pb.VersionInfo]:
        """Versions of ``path``, newest first (``limit`` 0 = all)."""
        response = self._remote.call(self.stub.ListVersions, pb.ListVersionsRequest(path=path, limit=limit))
        return list(response.versions)

    def delete(self, path: str, if_version: int | None = None) -> pb.VersionInfo:
        """Delete ``path`` (writes a tombstone version, history is kept); returns the tombstone."""
        request = pb.DeleteRequest(path=path)
        if if_version is not None:
            request.if_version = if_version
        return self._remote.call(self.stub.Delete, request)

    def forget(self, prefix: str, policy: pb.RetentionPolicy, dry_run: bool = False) -> Iterator[pb.ForgetPathResult]:
        """Apply a retention policy under ``prefix``: one result per path, as the server sends them."""
        call = self.stub.Forget(pb.ForgetRequest(prefix=prefix, policy=policy, dry_run=dry_run))
        try:
            with translate_errors(self._remote.target):
                yield from call
        finally:
            call.cancel()

    def diff(self, path: str, from_v: int = 0, to_v: int = 0) -> pb.DiffResponse:
        """Changed byte ranges and shared/new chunk counts of two versions (default: head vs. previous)."""
        request = pb.DiffRequest(path=path, from_version=from_v, to_version=to_v)
        return self._remote.call(self.stub.Diff, request)

    # ---- change feed --------------------------------------------------------------------------------

    def changes(self, since: str = "", limit: int = 0, prefix: str = "") -> tuple[list[pb.Event], str]:
        """Events after cursor ``since`` ("" = from the beginning); returns (events, cursor to pass next)."""
        request = pb.ChangesRequest(since=since, limit=limit, prefix=prefix)
        response = self._remote.call(self.stub.Changes, request)
        return list(response.events), response.cursor

    def watch(self, prefix: str = "", since: str = "") -> Iterator[pb.Event]:
        """Stream events live (since "" = only new ones, "0" = from the beginning).

        Closing the iterator (or leaving a ``for`` loop early) cancels the call.
        """
        call = self.stub.Watch(pb.WatchRequest(prefix=prefix, since=since))
        try:
            with translate_errors(self._remote.target):
                yield from call
        finally:
            call.cancel()

    # ---- thin byte streams ------------------------------------------------------------------------------

    def upload(
        self,
        data: Iterable[bytes] | BinaryIO,
        remote_path: str,
        *,
        if_version: int | None = None,
        mode: int = 0,
        mtime_ns: int = 0,
    ) -> pb.CommitFileResponse:
        """Upload raw bytes with the Upload RPC: the server chunks them (no client-side dedup)."""
        header = pb.UploadHeader(path=remote_path, mode=mode, mtime_ns=mtime_ns)
        if if_version is not None:
            header.if_version = if_version

        def requests() -> Iterator[pb.UploadRequest]:
            yield pb.UploadRequest(header=header)
            pieces = iter(lambda: data.read(_UPLOAD_PIECE), b"") if hasattr(data, "read") else data
            for piece in pieces:
                for start in range(0, len(piece), _UPLOAD_PIECE):
                    yield pb.UploadRequest(data=piece[start : start + _UPLOAD_PIECE])

        return self._remote.call(self.stub.Upload, requests())

    def download(
        self, remote_path: str, *, version: int | None = None, as_of_ms: int | None = None, offset: int = 0
    ) -> tuple[pb.VersionInfo, Iterator[bytes]]:
        """Download raw bytes with the Download RPC from ``offset`` (to resume); returns (version, pieces).

        The server does the reassembly; use :meth:`get_file` for verified, delta downloads.
        """
        at = pb.VersionSelector(version=version or 0, as_of_ms=as_of_ms or 0)
        call = self.stub.Download(pb.DownloadRequest(path=remote_path, at=at, offset=offset))
        with translate_errors(self._remote.target):
            first = next(call, None)
        if first is None:
            raise InvalidInputError(f"{remote_path}: the server sent no version information")

        def pieces() -> Iterator[bytes]:
            try:
                if first.data:
                    yield first.data
                with translate_errors(self._remote.target):
                    for message in call:
                        if message.data:
                            yield message.data
            finally:
                call.cancel()

        return first.version, pieces()
