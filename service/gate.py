"""Who is calling, which namespace they work in, and what they may do.

Every handler asks the gate first. Under mTLS the identity comes from the verified client
certificate (service/auth.py) and the rights from the access policy (service/access.py); in
plaintext loopback mode every caller is ``anonymous`` with full rights on the ``default``
namespace. The per-identity rate limit (service/ratelimit.py) applies in both modes.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from cas.errors import PermissionDeniedError
from service.access import AccessPolicy
from service.auth import ANONYMOUS, peer_identity, require_identity
from service.ratelimit import RateLimiter

# A client may ask to work in another namespace it holds a grant on.
NAMESPACE_HEADER = "stratus-namespace"


@dataclass(frozen=True)
class Caller:
    """An authenticated caller, the namespace their paths live in and what they may do there.

    ``readable``/``writable`` are the directories of the namespace the caller may read/write
    (``("",)``: all of it). A caller that may not read the whole namespace is *confined*: its
    chunk-level calls (FindMissingChunks, PutChunks, GetChunks, the chunk check of a commit)
    answer from its own chunk view, which holds only the chunks it uploaded itself or was shown
    in a manifest of a path it may read, never from the namespace's index (service/scoped.py).
    """

    identity: str
    namespace: str
    admin: bool = False
    readable: tuple[str, ...] = ()  # default: nothing (a Caller built by hand is confined)
    writable: tuple[str, ...] = ()
    quota_key: str = ""  # whose share of the stream and byte limits a call takes (service/admission.py)

    @property
    def share(self) -> str:
        """The holder of the caller's share of the per-identity limits: the identity, or, for an
        anonymous (plaintext) caller, its connection, so plaintext clients do not share one quota."""
        return self.quota_key or self.identity

    @property
    def view(self) -> str | None:
        """The chunk view of a confined caller (its identity), or None for one who reads everything."""
        return None if "" in self.readable else self.identity


class Gate:
    """Authentication, authorisation and rate limiting for each call."""

    def __init__(self, policy: AccessPolicy, limiter: RateLimiter, *, require_certificate: bool) -> None:
        self.policy = policy
        self.limiter = limiter
        self.require_certificate = require_certificate

    def caller(self, context: grpc.aio.ServicerContext, method: str) -> Caller:
        """Identify the caller (UnauthenticatedError, RateLimitedError, PermissionDeniedError)."""
        if self.require_certificate:
            identity = require_identity(context)
        else:
            identity = peer_identity(context) or ANONYMOUS
        self.limiter.check(identity)
        requested = dict(context.invocation_metadata() or ()).get(NAMESPACE_HEADER)
        namespace = self.policy.resolve_namespace(identity, requested if isinstance(requested, str) else None)
        return Caller(
            identity, namespace, admin=self.policy.is_admin(identity),
            readable=tuple(self.policy.readable_prefixes(identity, namespace)),
            writable=tuple(self.policy.writable_prefixes(identity, namespace)),
            quota_key=f"{ANONYMOUS}@{context.peer()}" if identity == ANONYMOUS else identity,
        )

    def authorize(self, caller: Caller, path: str, *, write: bool) -> None:
        """Allow or refuse access to a path or listing prefix (PermissionDeniedError)."""
        self.policy.check(caller.identity, caller.namespace, path, write)

    def authorize_chunks(self, caller: Caller, *, write: bool) -> None:
        """Allow chunk-level calls to a caller who may read (or write) somewhere in the namespace.

        Chunk calls carry no path; what a confined caller learns through them is bounded by its
        chunk view instead (see :class:`Caller`).
        """
        if not (caller.writable if write else caller.readable):
            verb = "write" if write else "read"
            raise PermissionDeniedError(
                f"identity {caller.identity!r} may not {verb} anything in namespace {caller.namespace!r}"
            )

    def listing(self, caller: Caller, prefix: str) -> list[str]:
        """The prefixes a listing or change feed of ``prefix`` covers for this caller (see
        :meth:`AccessPolicy.listing_prefixes`); PermissionDeniedError if none."""
        return self.policy.listing_prefixes(caller.identity, caller.namespace, prefix)
