"""Who is calling, which namespace they work in, and what they may do.

Every handler asks the gate first. Under mTLS the identity comes from the verified client
certificate (service/auth.py) and the rights from the access policy (service/access.py); in
plaintext loopback mode every caller is ``anonymous`` with full rights on the ``default``
namespace. The per-identity rate limit (service/ratelimit.py) applies in both modes.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc

from service.access import AccessPolicy
from service.auth import ANONYMOUS, peer_identity, require_identity
from service.ratelimit import RateLimiter

# A client may ask to work in another namespace it holds a grant on.
NAMESPACE_HEADER = "stratus-namespace"


@dataclass(frozen=True)
class Caller:
    """An authenticated caller and the namespace their paths live in."""

    identity: str
    namespace: str
    admin: bool = False


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
        return Caller(identity, namespace, admin=self.policy.is_admin(identity))

    def authorize(self, caller: Caller, path: str, *, write: bool) -> None:
        """Allow or refuse access to a path or listing prefix (PermissionDeniedError)."""
        self.policy.check(caller.identity, caller.namespace, path, write)
