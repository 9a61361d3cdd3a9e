"""Shared fixtures: every metadata test runs against the system Redis and an embedded Valkey.

The system Redis is expected at ``redis://127.0.0.1:6379`` (override with STRATUS_TEST_REDIS_URL).
Tests never assume the database is empty: each store gets a random key prefix, and every key
under it is deleted afterwards.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
import redis.asyncio as aioredis

from service.metadata import MetadataStore
from service.valkey import EmbeddedValkey

# the server fixtures (`server`, `fresh_server`, `client`, `prefix`) live in helpers/server_fixtures.py
# (helpers/ is on pytest's pythonpath) and build on redis_url
pytest_plugins = ["server_fixtures"]

SYSTEM_REDIS_URL = os.environ.get("STRATUS_TEST_REDIS_URL", "redis://127.0.0.1:6379")
START_REDIS = 'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no'


@pytest.fixture(scope="session")
def system_redis_url() -> str:
    """URL of the system Redis.

    A machine with nothing but Python has no Redis server: there the Redis half of the suite is
    skipped with this note (the same tests still run against the embedded Valkey). CI sets
    STRATUS_REQUIRE_REDIS=1, which turns a missing Redis into a failure.
    """
    client = redis.Redis.from_url(SYSTEM_REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        message = f"no Redis at {SYSTEM_REDIS_URL} ({exc}); start it with:\n    {START_REDIS}"
        if os.environ.get("STRATUS_REQUIRE_REDIS"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message + "\n(the same tests ran against the embedded Valkey)")
    finally:
        client.close()
    return SYSTEM_REDIS_URL


@pytest.fixture(scope="session")
def embedded_valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedValkey]:
    """One private Valkey for the whole test run."""
    with EmbeddedValkey(tmp_path_factory.mktemp("valkey")) as server:
        yield server


@pytest.fixture(scope="session", params=["redis", "valkey"])
def redis_url(request: pytest.FixtureRequest) -> str:
    """URL of each metadata backend in turn: the system Redis, then the embedded Valkey."""
    if request.param == "redis":
        return request.getfixturevalue("system_redis_url")
    return request.getfixturevalue("embedded_valkey").url


async def drop_keys(client: aioredis.Redis, prefix: str) -> None:
    """Delete every key under ``prefix``."""
    keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
    for start in range(0, len(keys), 500):
        await client.delete(*keys[start : start + 500])


@pytest.fixture
async def metadata(redis_url: str) -> AsyncIterator[MetadataStore]:
    """A MetadataStore under a random key prefix; all its keys are deleted afterwards."""
    client = aioredis.from_url(redis_url)
    store = MetadataStore(client, prefix=f"svtest-{secrets.token_hex(6)}")
    try:
        yield store
    finally:
        await client.aclose()
        # a fresh client: a failed test may have left the store's pool exhausted or closed
        cleaner = aioredis.from_url(redis_url)
        try:
            await drop_keys(cleaner, store.prefix)
        finally:
            await cleaner.aclose()
