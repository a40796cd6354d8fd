"""Environment presets (pinned to the reference's environment table) and trust policies."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from tests.unit.test_client_fakes import destination_keys

from fitconnect_kit.client.environments import Environment, canonical_name
from fitconnect_kit.client.errors import ConfigurationError

# Exactly the URLs of FIT-CONNECT-PROTOCOL.md §1 (generation v1); None where nothing is confirmed.
PINNED = {
    "test": {
        "token_url": "https://auth-testing.fit-connect.fitko.dev/token",
        "submission_api_url": "https://submission-api-testing.fit-connect.fitko.dev/v1",
        "zd_root_url": "https://submission-api-testing.fit-connect.fitko.dev",
        "routing_api_url": "https://routing-api-testing.fit-connect.fitko.dev/v1/",
        "portal_url": "https://portal.auth-testing.fit-connect.fitko.dev/",
        "trust": "test",
    },
    "stage": {
        "token_url": "https://auth-refz.fit-connect.fitko.net/token",
        "submission_api_url": "https://submission-api-refz.fit-connect.niedersachsen.de/v1",
        "zd_root_url": "https://submission-api-refz.fit-connect.niedersachsen.de",
        "routing_api_url": None,
        "portal_url": None,
        "trust": "strict",
    },
    "prod": {
        "token_url": "https://auth-prod.fit-connect.fitko.net/token",
        "submission_api_url": "https://submission-api-prod.fit-connect.niedersachsen.de/v1",
        "zd_root_url": "https://submission-api-prod.fit-connect.niedersachsen.de",
        "routing_api_url": "https://routing-api-prod.fit-connect.fitko.net/v1/",
        "portal_url": None,
        "trust": "strict",
    },
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_presets_carry_exactly_the_reference_urls(name: str) -> None:
    env = Environment.preset(name)
    assert env.name == name
    for attribute, expected in PINNED[name].items():
        assert getattr(env, attribute) == expected, attribute
    assert env.jwks_url == PINNED[name]["zd_root_url"] + "/.well-known/jwks.json"


def test_reference_table_still_lists_the_pinned_urls(reference_dir: Path) -> None:
    text = (reference_dir / "FIT-CONNECT-PROTOCOL.md").read_text(encoding="utf-8")
    for urls in PINNED.values():
        for key in ("token_url", "submission_api_url", "routing_api_url", "portal_url"):
            if urls[key] is not None:
                assert f"`{urls[key]}`" in text, urls[key]


def test_local_preset_and_base_url() -> None:
    env = Environment.local()
    assert env.token_url == "http://127.0.0.1:8080/token"
    assert env.submission_api_url == "http://127.0.0.1:8080/v1"
    assert env.jwks_url == "http://127.0.0.1:8080/.well-known/jwks.json"
    assert env.trust == "test"
    other = Environment.local("http://localhost:9000/")
    assert other.api_url("/submissions") == "http://localhost:9000/v1/submissions"
    assert other.api_url("https://elsewhere/x") == "https://elsewhere/x"


def test_aliases_and_unknown_names() -> None:
    assert canonical_name(" Testing ") == "test"
    assert Environment.preset("refz").name == "stage"
    assert Environment.preset("production").name == "prod"
    with pytest.raises(ConfigurationError, match="unknown environment 'moon'"):
        Environment.preset("moon")


def test_custom_environment_and_validation() -> None:
    env = Environment.custom(
        "dev",
        token_url="https://auth-dev.fit-connect.fitko.dev/token",
        submission_api_url="https://submission-api-dev.fit-connect.fitko.dev/v1",
        trust="test",
    )
    assert env.zd_root_url == "https://submission-api-dev.fit-connect.fitko.dev"
    proxied = env.replace(zustelldienst_url="https://proxy.example/zd/")
    assert proxied.jwks_url == "https://proxy.example/zd/.well-known/jwks.json"
    with pytest.raises(ConfigurationError, match="token_url must be an http"):
        Environment.custom("x", token_url="ftp://x", submission_api_url="https://x/v1")


def test_trust_policy_test_allows_self_signed() -> None:
    policy = Environment.test().trust_policy()
    assert policy.allow_self_signed
    assert Environment.local().trust_policy().allow_self_signed


def test_trust_policy_strict_needs_anchors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="no trust anchors are configured"):
        Environment.prod().trust_policy()
    ca = destination_keys().ca_certificate
    pem = tmp_path / "anchor.pem"
    pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for env in (
        Environment.prod(pem),
        Environment.stage().with_trust_anchors(ca),
        Environment.stage(ca.public_bytes(serialization.Encoding.DER)),
    ):
        policy = env.trust_policy()
        assert not policy.allow_self_signed
        assert policy.trust_anchors == (ca,)
    with pytest.raises(ConfigurationError, match="cannot read trust anchor"):
        Environment.prod(tmp_path / "missing.pem")
    with pytest.raises(ConfigurationError, match="PEM or DER"):
        Environment.prod(b"not a certificate")
