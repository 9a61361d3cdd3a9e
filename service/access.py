"""Access policy: which namespace an identity lives in and what else it may read or write.

Without a policy file (mTLS) every identity owns one namespace named after it, read-write, and
sees nothing else. A policy file (TOML or JSON, same structure) changes that::

    # what happens to identities the file does not list: "own-namespace" (default) or "deny"
    unknown_identities = "own-namespace"

    [identities.alice]
    namespace = "team-a"        # home namespace (default: the identity, sanitised)
    access = "read-write"       # on the home namespace: "read-write" (default) or "read"
    admin = false               # admin role: server-wide info and maintenance calls

    [identities.ops]
    admin = true

    [[grants]]                  # extra rights on (part of) a namespace
    identities = ["bob", "carol"]   # or "*": every authenticated identity
    namespace = "team-a"
    prefix = "reports/"         # "" or absent: the whole namespace; otherwise a directory
    access = "read"             # "read" or "read-write"

A namespace that the file names (as a home or in a grant) is reserved: an identity the file
does not list is refused rather than given that namespace because its name happens to match.

A grant prefix is a directory: ``reports`` and ``reports/`` both mean everything below
``reports/``. A path or listing prefix is inside a grant when it starts with the grant's
directory, so listing ``rep`` is not covered by a grant on ``reports/`` (it would also list
``repo/...``). The admin role grants no data access by itself. Unknown keys are errors: a typo
in a security file must not silently widen or narrow access.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cas.errors import CasError, InvalidPathError, PermissionDeniedError, UnauthenticatedError
from cas.paths import normalize_path

NAMESPACE_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
ANY_IDENTITY = "*"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_ACCESS = {"read": False, "read-write": True}
_UNKNOWN = ("own-namespace", "deny")


class AccessPolicyError(CasError):
    """A policy file that cannot be read or does not make sense."""


def is_valid_namespace(name: str) -> bool:
    """True if ``name`` can be used as a namespace as is."""
    return isinstance(name, str) and bool(NAMESPACE_PATTERN.fullmatch(name)) and name not in (".", "..")


def sanitize_namespace(identity: str) -> str:
    """Namespace for an identity: the identity itself if it is a valid name, else a safe derivative.

    A derived name keeps the readable part of the identity and appends a hash of the full
    identity, so two identities that differ only in unsafe characters (``a@b`` and ``a#b``)
    never share a namespace.
    """
    if is_valid_namespace(identity):
        return identity
    readable = _UNSAFE.sub("_", identity).strip("._-")[:51] or "id"
    tag = hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{readable}-{tag}"


def _grant_prefix(prefix: str) -> str:
    if prefix in ("", "/"):
        return ""
    try:
        return normalize_path(prefix.removesuffix("/")) + "/"
    except InvalidPathError as exc:
        raise AccessPolicyError(f"grant prefix {prefix!r}: {exc}") from None


@dataclass(frozen=True)
class IdentityEntry:
    """What the policy file says about one identity."""

    namespace: str | None = None  # None: the sanitised identity
    write: bool = True  # on the home namespace
    admin: bool = False


@dataclass(frozen=True)
class Grant:
    """Read (or read-write) access for some identities to a namespace, or a directory in it."""

    identities: frozenset[str]
    namespace: str
    prefix: str = ""  # "" or a normalised directory ending in "/"
    write: bool = False

    def applies(self, identity: str, namespace: str) -> bool:
        """True if this grant is about ``identity`` in ``namespace``."""
        if namespace != self.namespace:
            return False
        return identity in self.identities or ANY_IDENTITY in self.identities

    def covers(self, path_or_prefix: str, write: bool) -> bool:
        """True if the path or listing prefix lies inside the grant and the access level suffices."""
        return (self.write or not write) and path_or_prefix.startswith(self.prefix)


class AccessPolicy:
    """Decides namespaces and permissions; immutable once built, safe to share between calls."""

    def __init__(
        self,
        identities: Mapping[str, IdentityEntry] | None = None,
        grants: Iterable[Grant] = (),
        *,
        unknown_identities: str = "own-namespace",
        open_namespace: str | None = None,
    ) -> None:
        if unknown_identities not in _UNKNOWN:
            raise AccessPolicyError(f"unknown_identities must be one of {', '.join(_UNKNOWN)}")
        self._identities = dict(identities or {})
        self._grants = tuple(grants)
        self._deny_unknown = unknown_identities == "deny"
        self._open = open_namespace
        # Namespaces the file hands out explicitly belong to whoever it names; an unlisted
        # identity that happens to carry the same name must not walk into one.
        self._reserved = {e.namespace for e in self._identities.values() if e.namespace is not None}
        self._reserved |= {g.namespace for g in self._grants}
        for name, entry in self._identities.items():
            if entry.namespace is not None and not is_valid_namespace(entry.namespace):
                raise AccessPolicyError(f"identity {name!r}: namespace {entry.namespace!r} is not valid")
        for grant in self._grants:
            if not is_valid_namespace(grant.namespace):
                raise AccessPolicyError(f"grant namespace {grant.namespace!r} is not valid")

    # ---- construction --------------------------------------------------------------------------

    @classmethod
    def default(cls) -> AccessPolicy:
        """mTLS without a policy file: every identity owns its own namespace, read-write."""
        return cls()

    @classmethod
    def open(cls, namespace: str = "default") -> AccessPolicy:
        """Plaintext mode: every caller shares ``namespace`` with full rights and the admin role."""
        if not is_valid_namespace(namespace):
            raise AccessPolicyError(f"namespace {namespace!r} is not valid")
        return cls(open_namespace=namespace)

    @classmethod
    def load(cls, path: str | Path) -> AccessPolicy:
        """Read a policy file; ``.json`` is JSON, anything else TOML. Raises AccessPolicyError."""
        file = Path(path)
        try:
            text = file.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise AccessPolicyError(f"cannot read access policy {file}: {exc}") from None
        try:
            data = json.loads(text) if file.suffix.lower() == ".json" else tomllib.loads(text)
        except (ValueError, tomllib.TOMLDecodeError) as exc:
            raise AccessPolicyError(f"access policy {file} is not valid: {exc}") from None
        try:
            return cls.from_dict(data)
        except AccessPolicyError as exc:
            raise AccessPolicyError(f"access policy {file}: {exc}") from None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AccessPolicy:
        """Build a policy from the parsed file structure (see the module docstring)."""
        if not isinstance(data, Mapping):
            raise AccessPolicyError("the policy must be a table/object")
        _no_extra_keys("policy", data, {"unknown_identities", "identities", "grants"})
        identities: dict[str, IdentityEntry] = {}
        raw_identities = data.get("identities", {})
        if not isinstance(raw_identities, Mapping):
            raise AccessPolicyError("'identities' must be a table")
        for name, raw in raw_identities.items():
            if not isinstance(raw, Mapping):
                raise AccessPolicyError(f"identities.{name} must be a table")
            _no_extra_keys(f"identities.{name}", raw, {"namespace", "access", "admin"})
            namespace = raw.get("namespace")
            if namespace is not None and not isinstance(namespace, str):
                raise AccessPolicyError(f"identities.{name}.namespace must be a string")
            admin = raw.get("admin", False)
            if not isinstance(admin, bool):
                raise AccessPolicyError(f"identities.{name}.admin must be true or false")
            write = _access(f"identities.{name}", raw, "read-write")
            identities[name] = IdentityEntry(namespace, write, admin)
        raw_grants = data.get("grants", [])
        if not isinstance(raw_grants, list):
            raise AccessPolicyError("'grants' must be an array of tables")
        grants = [_grant(i, raw) for i, raw in enumerate(raw_grants)]
        unknown = data.get("unknown_identities", "own-namespace")
        return cls(identities, grants, unknown_identities=unknown)

    # ---- decisions -----------------------------------------------------------------------------

    def _known(self, identity: str | None) -> str:
        if self._open is not None:
            return identity or "anonymous"
        if not identity:
            raise UnauthenticatedError("a client identity is required")
        if self._deny_unknown and identity not in self._identities:
            raise PermissionDeniedError(f"identity {identity!r} is not allowed on this server")
        return identity

    def namespace_for(self, identity: str | None) -> str:
        """Home namespace of ``identity``; PermissionDeniedError if the policy denies it."""
        identity = self._known(identity)
        if self._open is not None:
            return self._open
        entry = self._identities.get(identity)
        if entry is not None and entry.namespace is not None:
            return entry.namespace
        namespace = sanitize_namespace(identity)
        if entry is None and namespace in self._reserved:
            raise PermissionDeniedError(
                f"identity {identity!r} is not in the access policy "
                f"and its namespace {namespace!r} is reserved"
            )
        return namespace

    def resolve_namespace(self, identity: str | None, requested: str | None = None) -> str:
        """The namespace a call works in: the home one, or ``requested`` if some grant reaches it."""
        home = self.namespace_for(identity)
        if not requested or requested == home:
            return home
        assert identity is not None  # namespace_for raised otherwise (or the policy is open)
        if any(g.applies(identity, requested) for g in self._grants):
            return requested
        raise PermissionDeniedError(f"identity {identity!r} has no access to namespace {requested!r}")

    def is_admin(self, identity: str | None) -> bool:
        """True if ``identity`` holds the admin role."""
        if self._open is not None:
            return True
        entry = self._identities.get(identity or "")
        return bool(identity) and entry is not None and entry.admin

    def require_admin(self, identity: str | None) -> None:
        """Raise PermissionDeniedError unless ``identity`` holds the admin role."""
        self._known(identity)
        if not self.is_admin(identity):
            raise PermissionDeniedError(f"identity {identity!r} does not hold the admin role")

    def allowed(self, identity: str | None, namespace: str, path_or_prefix: str, write: bool) -> bool:
        """Non-raising form of :meth:`check` (an unauthenticated or denied identity gets False)."""
        try:
            self.check(identity, namespace, path_or_prefix, write)
        except (PermissionDeniedError, UnauthenticatedError):
            return False
        return True

    def check(self, identity: str | None, namespace: str, path_or_prefix: str, write: bool) -> None:
        """Allow reading (or writing) a normalised path or listing prefix, else raise.

        Raises UnauthenticatedError without an identity and PermissionDeniedError when neither
        the home namespace nor any grant covers the access.
        """
        home = self.namespace_for(identity)
        if self._open is not None:
            if namespace == home:
                return
        else:
            assert identity is not None
            entry = self._identities.get(identity)
            if namespace == home and (not write or entry is None or entry.write):
                return
            if any(g.applies(identity, namespace) and g.covers(path_or_prefix, write) for g in self._grants):
                return
        verb = "write" if write else "read"
        raise PermissionDeniedError(
            f"identity {identity!r} may not {verb} {path_or_prefix!r} in namespace {namespace!r}"
        )

    def readable_prefixes(self, identity: str | None, namespace: str) -> list[str]:
        """Directories ``identity`` may read in ``namespace`` (``[""]`` means all), to filter listings."""
        return self._prefixes(identity, namespace, write=False)

    def writable_prefixes(self, identity: str | None, namespace: str) -> list[str]:
        """Directories ``identity`` may write in ``namespace`` (``[""]`` means all, ``[]`` none)."""
        return self._prefixes(identity, namespace, write=True)

    def _prefixes(self, identity: str | None, namespace: str, *, write: bool) -> list[str]:
        if self.allowed(identity, namespace, "", write=write):
            return [""]
        if identity is None or self._open is not None:
            return []
        try:
            self.namespace_for(identity)
        except PermissionDeniedError:
            return []
        prefixes = {g.prefix for g in self._grants if g.applies(identity, namespace) and (g.write or not write)}
        return sorted(p for p in prefixes if not any(p != q and p.startswith(q) for q in prefixes))

    def listing_prefixes(self, identity: str | None, namespace: str, prefix: str) -> list[str]:
        """What a listing of ``prefix`` may show: ``[prefix]`` if it is readable, else the readable
        directories inside it (sorted, disjoint); PermissionDeniedError if there are none.

        A grantee of ``reports/`` who lists the whole namespace sees ``reports/`` and nothing else.
        """
        readable = self.readable_prefixes(identity, namespace)
        if any(prefix.startswith(p) for p in readable):
            return [prefix]
        inside = [p for p in readable if p.startswith(prefix)]
        if not inside:
            self.check(identity, namespace, prefix, write=False)  # raises with the usual message
        return inside


def load_policy(path: str | Path | None, *, tls: bool, insecure_namespace: str = "default") -> AccessPolicy:
    """The policy a server runs with: the file if given, else the default (mTLS) or open one."""
    if path:
        return AccessPolicy.load(path)
    return AccessPolicy.default() if tls else AccessPolicy.open(insecure_namespace)


def _no_extra_keys(where: str, raw: Mapping[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(raw) - allowed)
    if extra:
        raise AccessPolicyError(
            f"{where}: unknown key(s) {', '.join(extra)}; allowed: {', '.join(sorted(allowed))}"
        )


def _access(where: str, raw: Mapping[str, Any], default: str) -> bool:
    value = raw.get("access", default)
    if value not in _ACCESS:
        raise AccessPolicyError(f"{where}.access must be \"read\" or \"read-write\", not {value!r}")
    return _ACCESS[value]


def _grant(index: int, raw: Any) -> Grant:
    where = f"grants[{index}]"
    if not isinstance(raw, Mapping):
        raise AccessPolicyError(f"{where} must be a table")
    _no_extra_keys(where, raw, {"identities", "namespace", "prefix", "access"})
    who = raw.get("identities")
    if isinstance(who, str):
        who = [who]
    if not isinstance(who, list) or not who or not all(isinstance(w, str) and w for w in who):
        raise AccessPolicyError(f"{where}.identities must be \"*\" or a non-empty list of identities")
    namespace = raw.get("namespace")
    if not isinstance(namespace, str):
        raise AccessPolicyError(f"{where}.namespace is required")
    prefix = raw.get("prefix", "")
    if not isinstance(prefix, str):
        raise AccessPolicyError(f"{where}.prefix must be a string")
    if "access" not in raw:
        raise AccessPolicyError(f"{where}.access is required (\"read\" or \"read-write\")")
    return Grant(frozenset(who), namespace, _grant_prefix(prefix), _access(where, raw, "read"))
