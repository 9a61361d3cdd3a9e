"""Access policy: namespaces, grants, admin role, policy files."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cas.errors import PermissionDeniedError, UnauthenticatedError
from service.access import (
    NAMESPACE_PATTERN,
    AccessPolicy,
    AccessPolicyError,
    is_valid_namespace,
    load_policy,
    sanitize_namespace,
)

POLICY_TOML = """
unknown_identities = "own-namespace"

[identities.alice]
namespace = "team-a"

[identities.viewer]
namespace = "team-a"
access = "read"

[identities.ops]
admin = true

[[grants]]
identities = ["bob", "carol"]
namespace = "team-a"
prefix = "reports"
access = "read"

[[grants]]
identities = "bob"
namespace = "team-a"
prefix = "inbox/bob/"
access = "read-write"

[[grants]]
identities = "*"
namespace = "public"
access = "read"
"""


@pytest.fixture
def policy(tmp_path) -> AccessPolicy:
    path = tmp_path / "access.toml"
    path.write_text(POLICY_TOML)
    return AccessPolicy.load(path)


# ---- default policy ---------------------------------------------------------------------------


def test_default_gives_each_identity_its_own_namespace():
    p = AccessPolicy.default()
    assert p.namespace_for("alice") == "alice"
    p.check("alice", "alice", "any/path", write=True)
    p.check("alice", "alice", "", write=False)
    with pytest.raises(PermissionDeniedError, match="may not read"):
        p.check("alice", "bob", "x", write=False)
    with pytest.raises(PermissionDeniedError, match="may not write"):
        p.check("alice", "bob", "x", write=True)
    assert not p.is_admin("alice")
    with pytest.raises(PermissionDeniedError, match="admin"):
        p.require_admin("alice")
    with pytest.raises(UnauthenticatedError):
        p.namespace_for(None)
    with pytest.raises(UnauthenticatedError):
        p.check("", "alice", "x", write=False)


def test_open_policy_shares_one_namespace():
    p = load_policy(None, tls=False)
    assert p.namespace_for(None) == "default" and p.namespace_for("anonymous") == "default"
    p.check("anonymous", "default", "x", write=True)
    assert p.is_admin("anonymous")
    assert not p.allowed("anonymous", "other", "x", write=False)
    assert isinstance(load_policy(None, tls=True).namespace_for("zed"), str)
    assert load_policy(None, tls=True).namespace_for("zed") == "zed"


# ---- namespaces -------------------------------------------------------------------------------


@pytest.mark.parametrize("identity", ["alice", "svc.backup-01", "A_b", "x" * 64])
def test_safe_identities_are_their_own_namespace(identity):
    assert sanitize_namespace(identity) == identity


@pytest.mark.parametrize(
    "identity", ["spiffe://example.org/backup", "a b", ".", "..", "x" * 65, "é", "{tag}", "a/b"]
)
def test_unsafe_identities_get_a_safe_distinct_namespace(identity):
    ns = sanitize_namespace(identity)
    assert is_valid_namespace(ns) and ns != identity
    assert sanitize_namespace(identity) == ns  # stable


def test_sanitised_namespaces_do_not_collide():
    names = {sanitize_namespace(i) for i in ["a@b", "a#b", "a b", "a_b", "a/b"]}
    assert len(names) == 5


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=100))
def test_sanitize_always_valid(identity):
    ns = sanitize_namespace(identity)
    assert NAMESPACE_PATTERN.fullmatch(ns) and ns not in (".", "..")


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=30), st.text(min_size=1, max_size=30))
def test_sanitize_is_injective_in_practice(a, b):
    if a != b:
        assert sanitize_namespace(a) != sanitize_namespace(b)


# ---- policy file ------------------------------------------------------------------------------


def test_home_namespaces_and_access_levels(policy):
    assert policy.namespace_for("alice") == "team-a"
    assert policy.namespace_for("viewer") == "team-a"
    assert policy.namespace_for("ops") == "ops"
    assert policy.namespace_for("dave") == "dave"  # unlisted: own namespace
    policy.check("alice", "team-a", "anything", write=True)
    policy.check("viewer", "team-a", "anything", write=False)
    with pytest.raises(PermissionDeniedError):
        policy.check("viewer", "team-a", "anything", write=True)


def test_grants_on_directories(policy):
    # "reports" in the file means the directory reports/
    policy.check("bob", "team-a", "reports/q1.pdf", write=False)
    policy.check("carol", "team-a", "reports/", write=False)
    assert not policy.allowed("bob", "team-a", "reports/q1.pdf", write=True)
    assert not policy.allowed("bob", "team-a", "reports", write=False)  # the listing would include reportsX
    assert not policy.allowed("bob", "team-a", "reportsX/a", write=False)
    assert not policy.allowed("bob", "team-a", "rep", write=False)
    assert not policy.allowed("bob", "team-a", "", write=False)
    policy.check("bob", "team-a", "inbox/bob/new.txt", write=True)
    assert not policy.allowed("carol", "team-a", "inbox/bob/new.txt", write=False)
    assert not policy.allowed("dave", "team-a", "reports/q1.pdf", write=False)
    # bob's own namespace is untouched by the grants
    policy.check("bob", "bob", "x", write=True)


def test_wildcard_grant_and_namespace_resolution(policy):
    for who in ("bob", "dave", "alice"):
        policy.check(who, "public", "readme", write=False)
        assert not policy.allowed(who, "public", "readme", write=True)
    assert policy.resolve_namespace("bob") == "bob"
    assert policy.resolve_namespace("bob", "team-a") == "team-a"
    assert policy.resolve_namespace("dave", "public") == "public"
    with pytest.raises(PermissionDeniedError):
        policy.resolve_namespace("dave", "team-a")


def test_admin_role_grants_no_data_access(policy):
    assert policy.is_admin("ops")
    policy.require_admin("ops")
    assert not policy.is_admin("alice") and not policy.is_admin("dave") and not policy.is_admin(None)
    assert not policy.allowed("ops", "team-a", "x", write=False)


def test_unlisted_identity_cannot_take_over_a_reserved_namespace(policy):
    # A certificate that happens to be named like a team namespace does not get into it.
    with pytest.raises(PermissionDeniedError, match="reserved"):
        policy.namespace_for("team-a")
    assert not policy.allowed("team-a", "team-a", "x", write=False)
    with pytest.raises(PermissionDeniedError):
        policy.namespace_for("public")


def test_readable_prefixes(policy):
    assert policy.readable_prefixes("alice", "team-a") == [""]
    assert policy.readable_prefixes("bob", "team-a") == ["inbox/bob/", "reports/"]
    assert policy.readable_prefixes("carol", "team-a") == ["reports/"]
    assert policy.readable_prefixes("dave", "team-a") == []
    assert policy.readable_prefixes(None, "team-a") == []


def test_writable_prefixes(policy):
    assert policy.writable_prefixes("alice", "team-a") == [""]
    assert policy.writable_prefixes("viewer", "team-a") == []  # read-only home
    assert policy.writable_prefixes("bob", "team-a") == ["inbox/bob/"]  # only the read-write grant
    assert policy.writable_prefixes("carol", "team-a") == []
    assert policy.writable_prefixes("bob", "public") == []
    assert policy.writable_prefixes(None, "team-a") == []


def test_listing_prefixes_narrow_a_wide_listing_to_the_grants(policy):
    assert policy.listing_prefixes("alice", "team-a", "") == [""]
    assert policy.listing_prefixes("bob", "team-a", "") == ["inbox/bob/", "reports/"]
    assert policy.listing_prefixes("bob", "team-a", "inbox/") == ["inbox/bob/"]
    assert policy.listing_prefixes("bob", "team-a", "rep") == ["reports/"]
    assert policy.listing_prefixes("bob", "team-a", "reports/2024/") == ["reports/2024/"]
    assert policy.listing_prefixes("carol", "team-a", "reports/q1.csv") == ["reports/q1.csv"]
    for outside in ("inbox/alice/", "x", "reportsX", "inbox/bobby/"):
        with pytest.raises(PermissionDeniedError, match="may not read"):
            policy.listing_prefixes("bob", "team-a", outside)
    with pytest.raises(PermissionDeniedError):
        policy.listing_prefixes("dave", "team-a", "")


@settings(max_examples=300, deadline=None)
@given(st.text(st.sampled_from("abinox/rept"), max_size=14), st.text(st.sampled_from("abinox/rept"), max_size=14))
def test_listing_prefixes_never_reach_outside_the_grants(suffix, request_prefix):
    # every path a narrowed listing could return is readable, and every readable path under the
    # requested prefix is covered by one of the narrowed prefixes
    p = AccessPolicy.from_dict({"grants": [
        {"identities": ["g"], "namespace": "ns", "prefix": "inbox/b/", "access": "read-write"},
        {"identities": ["g"], "namespace": "ns", "prefix": "rep", "access": "read"},
    ]})
    try:
        prefixes = p.listing_prefixes("g", "ns", request_prefix)
    except PermissionDeniedError:
        prefixes = []
    path = request_prefix + suffix
    covered = any(path.startswith(q) for q in prefixes)
    assert covered <= p.allowed("g", "ns", path, write=False)
    if path.startswith(request_prefix) and p.allowed("g", "ns", path, write=False):
        assert covered


def test_deny_unknown_identities():
    p = AccessPolicy.from_dict({"unknown_identities": "deny", "identities": {"alice": {}}})
    assert p.namespace_for("alice") == "alice"
    with pytest.raises(PermissionDeniedError, match="not allowed"):
        p.namespace_for("mallory")
    assert not p.allowed("mallory", "mallory", "x", write=False)
    with pytest.raises(PermissionDeniedError):
        p.require_admin("mallory")


def test_json_policy_equals_toml(tmp_path, policy):
    import tomllib

    path = tmp_path / "access.json"
    path.write_text(json.dumps(tomllib.loads(POLICY_TOML)))
    p = load_policy(path, tls=True)
    cases = [("bob", "team-a", "reports/a", False), ("bob", "team-a", "reports/a", True),
             ("viewer", "team-a", "x", True), ("carol", "public", "x", False)]
    for who, ns, target, write in cases:
        assert p.allowed(who, ns, target, write) == policy.allowed(who, ns, target, write)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"identites": {}}, "unknown key"),
        ({"identities": {"a": {"namespce": "x"}}}, "unknown key"),
        ({"identities": {"a": {"namespace": "bad/ns"}}}, "not valid"),
        ({"identities": {"a": {"access": "write"}}}, "read-write"),
        ({"identities": {"a": {"admin": "yes"}}}, "true or false"),
        ({"grants": [{"identities": [], "namespace": "n", "access": "read"}]}, "identities"),
        ({"grants": [{"identities": "a", "access": "read"}]}, "namespace is required"),
        ({"grants": [{"identities": "a", "namespace": "n"}]}, "access is required"),
        ({"grants": [{"identities": "a", "namespace": "n", "access": "read", "prefix": "../x"}]}, "prefix"),
        ({"grants": [{"identities": "a", "namespace": "n", "access": "read", "prefix": "/abs"}]}, "prefix"),
        ({"grants": {"identities": "a"}}, "array"),
        ({"unknown_identities": "allow"}, "unknown_identities"),
    ],
)
def test_bad_policies_are_refused(data, message):
    with pytest.raises(AccessPolicyError, match=message):
        AccessPolicy.from_dict(data)


def test_unreadable_or_malformed_files(tmp_path):
    with pytest.raises(AccessPolicyError, match="cannot read"):
        AccessPolicy.load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[identities\n")
    with pytest.raises(AccessPolicyError, match="not valid"):
        AccessPolicy.load(bad)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{")
    with pytest.raises(AccessPolicyError, match="bad.json"):
        AccessPolicy.load(bad_json)
