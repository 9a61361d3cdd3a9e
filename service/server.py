"""Run the StratusVault gRPC server: ``python -m service.server`` or ``stratus serve``.

Start-up order: configuration, data dir, metadata (external Redis or the embedded Valkey),
repository, gRPC services (API, health, reflection), then the listening port. SIGTERM or SIGINT
marks the server NOT_SERVING, lets in-flight calls finish within the grace period, and stops
the embedded Valkey last, so every acknowledged commit is on disk before the process exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import sys
from typing import Any

import grpc
import redis
import redis.asyncio as aioredis
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry as SyncRetry

from cas.errors import CasError
from proto import stratus_pb2, stratus_pb2_grpc
from service.access import load_policy
from service.admission import chunk_batch_reader
from service.api import StratusService
from service.audit import AuditLog
from service.binding import bind_store
from service.certs import grpc_server_credentials
from service.config import ConfigError, ServerConfig, load_config
from service.decoding import tolerant_handlers
from service.gate import Gate
from service.metadata import MetadataStore
from service.metadata.locations import RedisLocationIndex, named_index
from service.ratelimit import RateLimiter
from service.rebuild import seed_journal
from service.repository import FILES, PACKS, Repository, open_stores, store_layout
from service.retention_schedule import RetentionSchedule
from service.valkey import DataDirLock, EmbeddedValkey

log = logging.getLogger("stratus.server")
SERVICE_NAME = stratus_pb2.DESCRIPTOR.services_by_name["Stratus"].full_name


def _is_loopback(listen: str) -> bool:
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _build_gate(config: ServerConfig) -> tuple[Gate, grpc.ServerCredentials | None]:
    limiter = RateLimiter(config.rate_limit_per_second, config.rate_limit_burst)
    if config.insecure:
        if not config.insecure_any_host and not _is_loopback(config.listen):
            raise ConfigError(
                f"refusing plaintext on {config.listen}: --insecure serves loopback only; "
                "add --insecure-any-host to expose it anyway, or use --tls-dir"
            )
        if not _is_loopback(config.listen):
            log.warning("serving PLAINTEXT on %s, not a loopback address (--insecure-any-host): anyone who "
                        "can reach it can read and write this store", config.listen)
        policy = load_policy(config.access_file or None, tls=False)
        return Gate(policy, limiter, require_certificate=False), None
    if not config.tls_dir:
        raise ConfigError(
            "no TLS material: pass --tls-dir DIR (create one with `stratus certs init DIR`) "
            "or --insecure for plaintext on loopback"
        )
    policy = load_policy(config.access_file or None, tls=True)
    return Gate(policy, limiter, require_certificate=True), grpc_server_credentials(config.tls_dir)


# A command on a pooled connection that a Redis restart broke is retried on a new connection; while
# the metadata store is down a call gives up after about 1.2 s of backoff (UNAVAILABLE, see
# service/errors.py) and the client retries the idempotent ones.
_REDIS_RETRY = Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=4)
_REDIS_HEALTH_CHECK_S = 15  # an idle pooled connection is pinged before use after this long
_POOL_OPTIONS: dict[str, Any] = {
    "timeout": 30, "retry_on_error": [RedisConnectionError, RedisTimeoutError],
    "health_check_interval": _REDIS_HEALTH_CHECK_S, "socket_connect_timeout": 5,
}


def metadata_client(url: str) -> aioredis.Redis:
    """The Redis/Valkey client of the metadata store: a blocking pool with retries and health checks.

    Past its size the pool makes callers wait for a connection instead of failing; connection and
    timeout errors are retried with exponential backoff, so the first call after a restart of the
    store succeeds; connecting gives up after 5 s instead of hanging on an unreachable host.
    """
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=256, retry=_REDIS_RETRY, **_POOL_OPTIONS)
    return aioredis.Redis(connection_pool=pool)


def location_client(url: str, threads: int) -> redis.Redis:
    """A blocking client for the chunk location index, used only on the repository's worker threads
    (the pack store is synchronous): a pool of one connection per worker thread, with the same
    retries, health checks and connect timeout as :func:`metadata_client`."""
    retry = SyncRetry(ExponentialBackoff(cap=0.5, base=0.05), retries=4)
    pool = redis.BlockingConnectionPool.from_url(url, max_connections=threads + 4, retry=retry, **_POOL_OPTIONS)
    return redis.Redis(connection_pool=pool)


def grpc_options(cfg: ServerConfig) -> list[tuple[str, int]]:
    """Channel options of the server: message sizes, HTTP/2 keepalive, per-connection limits.

    The server pings a connection that has been quiet for ``keepalive_time_s`` and drops it when
    no answer comes within ``keepalive_timeout_s``, so the calls of a vanished peer end and give
    back what they hold. Clients may ping too, but not more often than every 10 s without data.
    """
    ms = 1000
    return [
        ("grpc.max_receive_message_length", cfg.max_message_bytes),
        ("grpc.max_send_message_length", cfg.max_message_bytes),
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_time_ms", int(cfg.keepalive_time_s * ms)),
        ("grpc.keepalive_timeout_ms", int(cfg.keepalive_timeout_s * ms)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10 * ms),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.max_concurrent_streams", cfg.max_streams_per_connection),
        ("grpc.max_connection_idle_ms", int(cfg.connection_idle_timeout_s * ms)),
    ]


class _Handlers:
    """Stands in for a server to collect the method handlers the generated code registers."""

    handlers: dict[str, grpc.RpcMethodHandler]

    def add_generic_rpc_handlers(self, handlers: object) -> None:
        pass

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.handlers = handlers


def _add_service(service: StratusService, server: grpc.aio.Server, cfg: ServerConfig) -> None:
    """Register the API: PutChunks messages are counted on the wire before they are parsed, and
    request bytes that are no message become INVALID_ARGUMENT (service/decoding.py)."""
    collected = _Handlers()
    stratus_pb2_grpc.add_StratusServicer_to_server(service, collected)
    handlers = dict(collected.handlers)
    handlers["PutChunks"] = grpc.stream_unary_rpc_method_handler(
        service.PutChunks, request_deserializer=chunk_batch_reader(cfg.max_chunks_per_message),
        response_serializer=stratus_pb2.PutChunksResponse.SerializeToString,
    )
    handlers = tolerant_handlers(handlers)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


class Server:
    """A configured, running StratusVault server (also used in-process by tests and benchmarks)."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.port = 0
        self._valkey: EmbeddedValkey | None = None
        self._redis: aioredis.Redis | None = None
        self._locations: redis.Redis | None = None
        self._grpc: grpc.aio.Server | None = None
        self._repo: Repository | None = None
        self._health = health.aio.HealthServicer()
        self._lock: DataDirLock | None = None
        self._audit = AuditLog.disabled()
        self._retention: RetentionSchedule | None = None
        self.store_id = ""
        self.store_format = PACKS

    async def start(self) -> int:
        """Start every part and return the bound port."""
        cfg = self.config
        gate, credentials = _build_gate(cfg)
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        if cfg.redis_url:
            self._lock = DataDirLock(cfg.data_dir)
            self._lock.acquire()
            url = cfg.redis_url
        else:
            self._valkey = EmbeddedValkey(cfg.data_dir)
            self._valkey.start()
            url = self._valkey.url
        self._redis = metadata_client(url)
        await self._redis.ping()
        threads = cfg.io_threads or 2 * (os.cpu_count() or 2)
        layout = store_layout(cfg.data_dir, cfg.store_format)
        log.info("chunk store: %s in %s%s", layout, cfg.data_dir,
                 "" if layout == cfg.store_format else " (the layout this data dir already has)")
        if layout == FILES and cfg.store_format == PACKS:
            log.warning("data dir %s keeps one file per chunk; to move it to packs, stop the server and run "
                        "`stratus admin migrate --data-dir %s` (resumable; see README)", cfg.data_dir, cfg.data_dir)

        def index(name: str) -> RedisLocationIndex:
            if self._locations is None:
                self._locations = location_client(url, threads)
            return named_index(self._locations, cfg.redis_prefix, name)

        chunks, manifests = await asyncio.to_thread(
            open_stores, cfg.data_dir, layout, cfg.chunk_params, index, cfg.pack_size
        )
        self.store_format = layout
        self._repo = Repository(
            cfg.data_dir, MetadataStore(self._redis, prefix=cfg.redis_prefix), cfg.chunk_params,
            verify_reads=cfg.verify_reads, threads=threads, chunks=chunks, manifests=manifests,
            delta_hints=cfg.delta_hints,
        )
        self.store_id = await bind_store(
            cfg.data_dir, self._repo.metadata, (self._repo.chunks, self._repo.manifests)
        )
        if seeded := await seed_journal(self._repo):
            log.info("journaled the %d versions of a store written before the version journal", seeded)
        service = StratusService(cfg, self._repo, gate)
        self._audit = AuditLog.open(cfg.audit_log)
        service.observers.append(self._audit.observe)
        self._grpc = grpc.aio.server(options=grpc_options(cfg))
        _add_service(service, self._grpc, cfg)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._grpc)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._grpc
        )
        try:
            if credentials is None:
                self.port = self._grpc.add_insecure_port(cfg.listen)
            else:
                self.port = self._grpc.add_secure_port(cfg.listen, credentials)
        except RuntimeError:  # grpcio >= 1.60 raises where older versions returned port 0
            self.port = 0
        if not self.port:
            raise ConfigError(f"cannot listen on {cfg.listen}")
        await self._grpc.start()
        for name in ("", SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._retention = RetentionSchedule(self._repo, cfg.retention, cfg.retention_interval_s, self._audit)
        self._retention.start()
        return self.port

    async def stop(self) -> None:
        """Drain in-flight calls within the grace period, then stop everything."""
        await self._health.enter_graceful_shutdown()
        if self._retention is not None:
            await self._retention.stop()
        if self._grpc is not None:
            await self._grpc.stop(self.config.shutdown_grace_seconds)
        if self._repo is not None:
            self._repo.close()
        if self._redis is not None:
            await self._redis.aclose()
        if self._locations is not None:
            self._locations.close()
        if self._valkey is not None:
            self._valkey.stop()
        if self._lock is not None:
            self._lock.release()
        self._audit.close()

    async def wait(self) -> None:
        """Block until the gRPC server terminates."""
        assert self._grpc is not None
        await self._grpc.wait_for_termination()


async def run(config: ServerConfig, announce: bool = True) -> None:
    """Run a server until SIGTERM or SIGINT, then shut it down gracefully."""
    server = Server(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        port = await server.start()
        if announce:
            host = config.listen.rsplit(":", 1)[0]
            backend = "redis " + config.redis_url if config.redis_url else "embedded valkey in " + str(config.data_dir)
            mode = "PLAINTEXT (--insecure)" if config.insecure else "mTLS"
            print(f"stratus: serving on {host}:{port} [{mode}] metadata: {backend}", flush=True)
        await stop.wait()
        log.info("shutting down: draining in-flight calls")
    finally:
        await server.stop()


def parse_args(argv: list[str]) -> ServerConfig:
    """Command-line flags of ``python -m service.server`` (the same ones ``stratus serve`` takes)."""
    p = argparse.ArgumentParser(prog="stratus-server", description="Run the StratusVault gRPC server.")
    p.add_argument("--config")
    p.add_argument("--data-dir")
    p.add_argument("--listen")
    p.add_argument("--redis-url")
    p.add_argument("--tls-dir")
    p.add_argument("--insecure", action="store_true", default=None)
    p.add_argument("--insecure-any-host", action="store_true", default=None)
    p.add_argument("--access-file")
    p.add_argument("--audit-log")
    args = p.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k != "config"}
    return load_config(args.config, overrides)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = parse_args(sys.argv[1:] if argv is None else argv)
    except CasError as exc:
        print(f"stratus serve: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(run(config))
    except CasError as exc:
        print(f"stratus serve: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError) else 1
    except (RedisConnectionError, RedisTimeoutError) as exc:
        where = config.redis_url or "the embedded Valkey"
        print(f"stratus serve: cannot reach the metadata store at {where} ({exc}); "
              "check --redis-url and that the server is running", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
