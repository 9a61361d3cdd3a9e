"""Which failures a client's channel may retry, and after how long (grpc-retry-pushback-ms)."""

from __future__ import annotations

from cas.errors import BackendUnavailableError, LimitExceededError, NotFoundError, RateLimitedError, StorageFullError
from service.errors import PUSHBACK_KEY, RATE_LIMIT_PUSHBACK_MAX_MS, grpc_status


def _pushback(exc: BaseException) -> str | None:
    return dict(grpc_status(exc, "Test").trailing_metadata).get(PUSHBACK_KEY)


def test_a_rate_limit_is_retried_after_the_delay_it_names():
    assert _pushback(RateLimitedError(0.25)) == "250"
    assert _pushback(RateLimitedError(RATE_LIMIT_PUSHBACK_MAX_MS / 1000)) == str(RATE_LIMIT_PUSHBACK_MAX_MS)


def test_a_rate_limit_that_lifts_too_late_is_not_retried_by_the_channel():
    assert _pushback(RateLimitedError(RATE_LIMIT_PUSHBACK_MAX_MS / 1000 + 1)) == "-1"


def test_other_exhausted_resources_forbid_a_retry():
    assert _pushback(LimitExceededError("x", limit="max_find_digests", value=11, maximum=10)) == "-1"
    assert _pushback(StorageFullError()) == "-1"


def test_unavailable_keeps_its_delay_and_other_codes_carry_none():
    assert _pushback(BackendUnavailableError("metadata", retry_after_s=0.5)) == "500"
    assert _pushback(NotFoundError("gone")) is None
