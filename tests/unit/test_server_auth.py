"""Client secret hashing, scope rules and access tokens (no HTTP)."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from tests.keycache import rsa_key

from fitconnect_kit.protocol.clock import ManualClock
from fitconnect_kit.server import auth
from fitconnect_kit.server.auth import (
    MANAGE_SCOPE,
    SUBSCRIBE_SCOPE,
    InvalidTokenError,
    Principal,
    ScopeError,
    grant_scopes,
    hash_client_secret,
    issue_access_token,
    validate_client_scopes,
    verify_access_token,
    verify_client_secret,
)
from fitconnect_kit.server.server_keys import (
    ServerKeyPurpose,
    ServerKeys,
    SigningKey,
    VerifiedTokenCache,
    kid_for,
)
from fitconnect_kit.server.storage.models import ClientKind


def test_secret_hash_round_trip() -> None:
    stored = hash_client_secret("correct horse battery staple")
    assert stored.startswith("scrypt$n=16384,r=8,p=1$")
    assert "correct" not in stored
    assert verify_client_secret("correct horse battery staple", stored)
    assert not verify_client_secret("wrong", stored)
    assert hash_client_secret("same") != hash_client_secret("same")  # salted
    assert not verify_client_secret("x", "garbage")
    assert not verify_client_secret("x", "bcrypt$n=1,r=1,p=1$AA$AA")


def test_client_scope_validation() -> None:
    assert validate_client_scopes(ClientKind.SENDER, ["send:region:DE", "send:region:DE"]) == [
        "send:region:DE"
    ]
    assert validate_client_scopes(ClientKind.SUBSCRIBER, [SUBSCRIBE_SCOPE, MANAGE_SCOPE])
    for kind, scopes in [
        (ClientKind.SENDER, [SUBSCRIBE_SCOPE]),
        (ClientKind.SENDER, ["send:region:XX"]),
        (ClientKind.SUBSCRIBER, ["send:region:DE"]),
        (ClientKind.SENDER, []),
    ]:
        with pytest.raises(ScopeError):
            validate_client_scopes(kind, scopes)


def test_grant_scopes() -> None:
    granted = ["send:region:DE09", "send:region:DE11"]
    assert grant_scopes(granted, None) == granted
    assert grant_scopes(granted, "  ") == granted
    assert grant_scopes(granted, "send:region:DE0937 send:region:DE11") == [
        "send:region:DE0937",
        "send:region:DE11",
    ]
    with pytest.raises(ScopeError, match="send:region:DE"):
        grant_scopes(granted, "send:region:DE")
    with pytest.raises(ScopeError):
        grant_scopes([SUBSCRIBE_SCOPE], MANAGE_SCOPE)


def _keys() -> ServerKeys:
    from datetime import UTC, datetime

    def key(index: int, purpose: ServerKeyPurpose) -> SigningKey:
        private = rsa_key(index)
        return SigningKey(kid_for(private.public_key()), purpose, 1, private, datetime.now(UTC))

    set_key = key(100, ServerKeyPurpose.SET_SIGNING)
    token_key = key(101, ServerKeyPurpose.TOKEN_SIGNING)
    return ServerKeys(set_key, token_key, (set_key,), {token_key.kid: token_key})


def test_access_token_round_trip_and_expiry() -> None:
    keys, clock = _keys(), ManualClock()
    token = issue_access_token(
        keys,
        issuer="https://zd",
        client_id="c1",
        scopes=["send:region:DE"],
        lifetime=60,
        clock=clock,
    )
    access = verify_access_token(token, keys=keys, issuer="https://zd", clock=clock)
    assert access.client_id == "c1"
    assert access.scopes == ("send:region:DE",)
    with pytest.raises(InvalidTokenError, match="issuer"):
        verify_access_token(token, keys=keys, issuer="https://other", clock=clock)
    clock.advance(timedelta(seconds=60))
    with pytest.raises(InvalidTokenError, match="expired"):
        verify_access_token(token, keys=keys, issuer="https://zd", clock=clock)
    with pytest.raises(InvalidTokenError, match="malformed"):
        verify_access_token("abc", keys=keys, issuer="https://zd", clock=clock)
    # A token signed with the SET key (not a token key) is refused.
    forged = keys.set_signing.sign({"typ": "JWT"}, b'{"iss":"https://zd"}')
    with pytest.raises(InvalidTokenError, match="not issued"):
        verify_access_token(forged, keys=keys, issuer="https://zd", clock=clock)


def _token(keys: ServerKeys, clock: ManualClock, *, lifetime: int = 60) -> str:
    return issue_access_token(
        keys,
        issuer="https://zd",
        client_id="c1",
        scopes=["send:region:DE"],
        lifetime=lifetime,
        clock=clock,
    )


def test_a_verified_signature_is_remembered_but_claims_are_checked_on_every_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys, clock = _keys(), ManualClock()
    token = _token(keys, clock)
    signature_checks = 0
    original = auth.verify_parsed

    def counting_verify(*args: Any, **kwargs: Any) -> None:
        nonlocal signature_checks
        signature_checks += 1
        original(*args, **kwargs)

    monkeypatch.setattr(auth, "verify_parsed", counting_verify)
    for _ in range(3):
        assert verify_access_token(token, keys=keys, issuer="https://zd", clock=clock).client_id
    assert signature_checks == 1
    # Remembered by SHA-256 of the token, never by the token itself.
    assert list(keys.verified_tokens._claims) == [hashlib.sha256(token.encode()).digest()]

    with pytest.raises(InvalidTokenError, match="issuer"):
        verify_access_token(token, keys=keys, issuer="https://other", clock=clock)
    issued = clock.now()
    clock.advance(timedelta(seconds=60))
    with pytest.raises(InvalidTokenError, match="expired"):
        verify_access_token(token, keys=keys, issuer="https://zd", clock=clock)
    assert signature_checks == 1

    # Keys loaded anew (e.g. after a rotation) verify again: the cache belongs to the keys.
    reloaded = replace(keys, verified_tokens=VerifiedTokenCache())
    clock.set(issued)
    verify_access_token(token, keys=reloaded, issuer="https://zd", clock=clock)
    assert signature_checks == 2


def test_a_token_that_does_not_verify_is_never_remembered() -> None:
    keys, clock = _keys(), ManualClock()
    token = _token(keys, clock)
    header, payload, signature = token.split(".")
    tampered = (
        f"{header}.{payload}.{signature[:-4]}{'AAAA' if signature[-4:] != 'AAAA' else 'BBBB'}"
    )
    for _ in range(2):
        with pytest.raises(InvalidTokenError, match="signature"):
            verify_access_token(tampered, keys=keys, issuer="https://zd", clock=clock)
    assert len(keys.verified_tokens) == 0
    # A token issued in the future is remembered (its signature is fine) but refused until due.
    now = clock.now()
    clock.advance(timedelta(hours=1))
    future = _token(keys, clock, lifetime=7200)
    clock.set(now)
    with pytest.raises(InvalidTokenError, match="future"):
        verify_access_token(future, keys=keys, issuer="https://zd", clock=clock)
    assert len(keys.verified_tokens) == 1
    clock.advance(timedelta(hours=1))
    assert verify_access_token(future, keys=keys, issuer="https://zd", clock=clock)


def test_verified_token_cache_is_bounded_and_drops_the_least_recently_used() -> None:
    cache = VerifiedTokenCache(max_entries=2)
    cache.put("a", {"sub": "a"})
    cache.put("b", {"sub": "b"})
    assert cache.get("a") == {"sub": "a"}  # now "b" is the least recently used
    cache.put("c", {"sub": "c"})
    assert len(cache) == 2
    assert cache.get("b") is None
    assert cache.get("a") is not None
    assert cache.get("c") is not None


def test_principal_rules() -> None:
    from datetime import UTC, datetime

    sender = Principal(
        "c",
        ClientKind.SENDER,
        frozenset({"send:region:DE09"}),
        "j",
        datetime.now(UTC),
        frozenset(),
        frozenset(),
    )
    assert sender.region_scopes == ("DE09",)
    assert sender.may_send_to_region("DE09372126")
    assert not sender.may_send_to_region("DE11")
    assert sender.may_send_to_any(["DE11", "DE0937"])
    sender.require_sender()
    with pytest.raises(Exception, match="subscribe"):
        sender.require_subscriber()

    subscriber = Principal(
        "s",
        ClientKind.SUBSCRIBER,
        frozenset({SUBSCRIBE_SCOPE}),
        "j",
        datetime.now(UTC),
        frozenset({"d1", "d2"}),
        frozenset({"d2"}),
    )
    subscriber.require_linked("d1")
    with pytest.raises(Exception, match="not linked"):
        subscriber.require_linked("d3")
    with pytest.raises(Exception, match="manage"):
        subscriber.require_manager("d2")  # link allows it, the token lacks the scope
