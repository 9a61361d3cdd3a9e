"""The one place where failures become exit codes and one-line messages.

Exit codes are part of the CLI contract (DESIGN §7), so scripts can rely on them:

    0 ok · 1 error · 2 usage · 3 not found · 4 conflict (if-version mismatch) · 5 integrity failure

Every command runs inside ``cli.main.StratusGroup``, which catches any error, prints one line on
stderr that says what went wrong and what to do (:func:`report`), and exits with the mapped code. A
traceback is shown only with ``--debug`` (or ``STRATUS_DEBUG=1``).

This module imports no typer (nor rich): the settings and time parsing that the client library
shares with the CLI raise :class:`UsageError` from here.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any

from cas import errors as cas_errors

OK = 0
ERROR = 1
USAGE = 2
NOT_FOUND = 3
CONFLICT = 4
INTEGRITY = 5


class UsageError(cas_errors.CasError):
    """A command line that cannot work as given (conflicting options, missing settings)."""


# Ordered: the first matching class wins, so subclasses come before their bases.
_CODES: list[tuple[type[BaseException], int, str, str]] = [
    (UsageError, USAGE, "usage", ""),
    (cas_errors.InvalidPathError, USAGE, "usage", "remote paths are relative, '/'-separated, without '..'"),
    (cas_errors.InvalidPolicyError, USAGE, "usage",
     "give at least one --keep-* rule; counts are numbers or 'unlimited', durations like 1y2m3d4h"),
    (cas_errors.NotFoundError, NOT_FOUND, "not_found", "check the path with `stratus ls`"),
    (cas_errors.VersionConflictError, CONFLICT, "conflict",
     "the file changed on the server; check `stratus log PATH`, then retry with the current --if-version"),
    (cas_errors.IntegrityError, INTEGRITY, "integrity",
     "the data failed verification and was not used; nothing was written"),
    (cas_errors.BackendUnavailableError, ERROR, "unavailable",
     "the server's metadata store is down; nothing was changed, run the same command again shortly"),
    (cas_errors.ServerUnavailableError, ERROR, "unavailable", ""),
    (cas_errors.StorageFullError, ERROR, "storage_full",
     "nothing was stored; free space on the server, then run the same command again"),
    (cas_errors.UnauthenticatedError, ERROR, "unauthenticated",
     "check --tls-dir / STRATUS_TLS_DIR and the client certificate (`stratus certs init`)"),
    (cas_errors.PermissionDeniedError, ERROR, "permission_denied", "ask the server's operator for access"),
    (cas_errors.RateLimitedError, ERROR, "rate_limited", "retry later"),
    (cas_errors.LocalChangedError, ERROR, "local_changed", "the file is looked at again on the next pass"),
    (FileNotFoundError, NOT_FOUND, "not_found", "check the local path"),
    (PermissionError, ERROR, "local_permission", "check the local file permissions"),
    (OSError, ERROR, "os_error", ""),
    (cas_errors.CasError, ERROR, "error", ""),
]

_INTERNAL_HINT = "this is a bug in stratus; run again with --debug and report the traceback"


def classify(exc: BaseException) -> tuple[int, str, str]:
    """Return ``(exit code, kind, hint)`` for an exception; unexpected ones are internal errors (1)."""
    for cls, code, kind, hint in _CODES:
        if isinstance(exc, cls):
            return code, kind, hint
    return ERROR, "internal", _INTERNAL_HINT


def exit_code(exc: BaseException) -> int:
    """The exit code for an exception (see the module docstring)."""
    return classify(exc)[0]


def describe(exc: BaseException) -> str:
    """One line: what went wrong and what to do about it (an exception's own ``hint`` wins)."""
    _, kind, hint = classify(exc)
    hint = getattr(exc, "hint", None) or hint
    if isinstance(exc, OSError) and exc.strerror:
        target = f"{exc.filename}: " if exc.filename else ""
        text = f"{target}{exc.strerror}"
    else:
        text = str(exc) or type(exc).__name__
    if kind == "internal":
        text = f"internal error: {type(exc).__name__}: {text}"
    text = " ".join(text.split())  # one line, whatever the message held
    return f"{text} ({hint})" if hint and hint not in text else text


def error_document(exc: BaseException) -> dict[str, Any]:
    """The JSON document printed on stdout for a failure under ``--json``."""
    code, kind, _ = classify(exc)
    return {"ok": False, "error": {"exit_code": code, "kind": kind, "message": describe(exc)}}


def debug_enabled(ctx: object | None) -> bool:
    """Whether ``--debug`` (or STRATUS_DEBUG=1) asks for tracebacks."""
    obj = getattr(ctx, "obj", None) if ctx is not None else None
    if getattr(obj, "debug", False):
        return True
    return os.environ.get("STRATUS_DEBUG", "").lower() in ("1", "true", "yes")


def _wants_json(ctx: object) -> bool:
    out = getattr(getattr(ctx, "obj", None), "out", None)
    return bool(getattr(out, "json", False))


def report(exc: BaseException, ctx: object | None = None) -> int:
    """Print the error (one line on stderr, a JSON document on stdout under --json); return its code."""
    if debug_enabled(ctx):
        traceback.print_exception(exc, file=sys.stderr)
    if ctx is not None and _wants_json(ctx):
        print(json.dumps(error_document(exc)), flush=True)
    print(f"stratus: error: {describe(exc)}", file=sys.stderr, flush=True)
    return exit_code(exc)

