"""Credentials, profiles, profile lookup order and settings resolution."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fitconnect_kit.client.config import (
    Credentials,
    Profile,
    find_profile,
    load_profile,
    profile_candidates,
    resolve_settings,
)
from fitconnect_kit.client.errors import (
    ConfigurationError,
    ProfileError,
    ProfileNotFoundError,
)

SECRET = "very-secret-value"


def write_profile(path: Path, **members: Any) -> Path:
    data: dict[str, Any] = {
        "name": "local",
        "environment": "local",
        "submissionApiUrl": "http://127.0.0.1:9999/v1",
        "tokenUrl": "http://127.0.0.1:9999/token",
        "sender": {"clientId": "sender-id", "clientSecret": SECRET},
        "subscriber": {"clientId": "subscriber-id", "clientSecret": "sub-" + SECRET},
        "destinationId": "879ee109-a690-4db8-ab32-424284184d7d",
        "serviceIdentifier": "99400048079000",
        "serviceName": "Testantrag",
        "dataSchemaUri": "urn:example:schema",
        "keys": {"encryptionPrivate": "keys/enc.json", "signingPrivate": "/abs/sig.json"},
    }
    data.update(members)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# --- credentials ---------------------------------------------------------------------------------


def test_credentials_never_show_the_secret() -> None:
    creds = Credentials("client", SECRET)
    assert SECRET not in repr(creds)
    assert SECRET not in str(creds)
    assert SECRET not in f"{creds!r} {creds}"
    assert "client" in repr(creds)


def test_credentials_from_environment_variables() -> None:
    assert Credentials.from_env({}) is None
    creds = Credentials.from_env({"FITCONNECT_CLIENT_ID": "a", "FITCONNECT_CLIENT_SECRET": "b"})
    assert creds == Credentials("a", "b")
    with pytest.raises(ConfigurationError, match="FITCONNECT_CLIENT_SECRET is not set"):
        Credentials.from_env({"FITCONNECT_CLIENT_ID": "a"})
    with pytest.raises(ConfigurationError, match="shown only once"):
        Credentials("a", "")


# --- profile lookup ------------------------------------------------------------------------------


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    cwd = tmp_path / "project"
    cwd.mkdir()
    xdg = tmp_path / "xdg"
    return {"cwd": cwd, "xdg": xdg, "home": tmp_path / "home"}


def test_lookup_order(dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    cwd, xdg = dirs["cwd"], dirs["xdg"]
    environ = {"XDG_CONFIG_HOME": str(xdg)}
    explicit = write_profile(cwd / "explicit.json")
    from_env = write_profile(cwd / "from-env.json")
    dev = write_profile(cwd / ".fitconnect-dev" / "profile.json")
    xdg_local = write_profile(xdg / "fitconnect-kit" / "profiles" / "local.json")

    with_env = {**environ, "FITCONNECT_PROFILE": str(from_env)}
    assert find_profile(explicit, "local", environ=with_env, cwd=cwd) == explicit
    assert find_profile(None, "local", environ=with_env, cwd=cwd) == from_env
    assert find_profile(None, "local", environ=environ, cwd=cwd) == dev
    assert find_profile(None, None, environ=environ, cwd=cwd) == dev  # default env: local
    dev.unlink()
    assert find_profile(None, "local", environ=environ, cwd=cwd) == xdg_local
    xdg_local.unlink()
    assert find_profile(None, "local", environ=environ, cwd=cwd) is None


def test_lookup_for_other_environments_skips_the_dev_profile(dirs: dict[str, Path]) -> None:
    cwd, xdg = dirs["cwd"], dirs["xdg"]
    environ = {"XDG_CONFIG_HOME": str(xdg)}
    write_profile(cwd / ".fitconnect-dev" / "profile.json")
    assert find_profile(None, "test", environ=environ, cwd=cwd) is None
    test_profile = write_profile(
        xdg / "fitconnect-kit" / "profiles" / "test.json", environment="test"
    )
    assert find_profile(None, "testing", environ=environ, cwd=cwd) == test_profile


def test_xdg_default_is_dot_config(dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(dirs["home"]))
    candidates = profile_candidates("local", environ={}, cwd=dirs["cwd"])
    assert candidates == [
        dirs["cwd"] / ".fitconnect-dev" / "profile.json",
        dirs["home"] / ".config" / "fitconnect-kit" / "profiles" / "local.json",
    ]


def test_named_profiles_must_exist(dirs: dict[str, Path]) -> None:
    with pytest.raises(ProfileNotFoundError, match="profile file not found"):
        find_profile(dirs["cwd"] / "nope.json", environ={}, cwd=dirs["cwd"])
    with pytest.raises(ProfileNotFoundError, match="FITCONNECT_PROFILE"):
        find_profile(None, environ={"FITCONNECT_PROFILE": "/nope.json"}, cwd=dirs["cwd"])
    assert ProfileNotFoundError("x").cli_exit_code == 4


# --- profile contents ----------------------------------------------------------------------------


def test_profile_parsing_paths_and_extra_members(tmp_path: Path) -> None:
    path = write_profile(tmp_path / "p" / "profile.json", futureMember={"x": 1})
    profile = Profile.load(path)
    assert profile.environment_name == "local"
    assert profile.sender == Credentials("sender-id", SECRET)
    assert profile.credentials("subscriber") == Credentials("subscriber-id", "sub-" + SECRET)
    assert profile.keys["encryptionPrivate"] == tmp_path / "p" / "keys" / "enc.json"
    assert profile.keys["signingPrivate"] == Path("/abs/sig.json")
    assert profile.extra == {"futureMember": {"x": 1}}
    env = profile.environment()
    assert env.name == "local"
    assert env.submission_api_url == "http://127.0.0.1:9999/v1"
    assert env.token_url == "http://127.0.0.1:9999/token"
    assert env.trust == "test"
    assert SECRET not in repr(profile)

    masked = profile.to_dict()
    assert masked["sender"] == {"clientId": "sender-id", "clientSecret": "********"}
    assert SECRET not in json.dumps(masked)
    assert masked["futureMember"] == {"x": 1}
    revealed = profile.to_dict(show_secrets=True)
    assert revealed["sender"]["clientSecret"] == SECRET
    # Round trip: what to_dict writes is a valid profile again.
    again = Profile.from_dict(revealed, path=path)
    assert again.sender == profile.sender
    assert again.keys == profile.keys


def test_profile_save_round_trip(tmp_path: Path) -> None:
    import stat

    profile = Profile.load(write_profile(tmp_path / "in.json", futureMember=[1]))
    out = profile.save(tmp_path / "sub" / "out.json")
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    again = Profile.load(out)
    assert again.sender == profile.sender
    assert again.extra == {"futureMember": [1]}
    assert json.loads(out.read_text())["sender"]["clientSecret"] == SECRET


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ({"environment": None}, "'environment' is required"),
        ({"sender": {"clientId": "x"}}, "needs both 'clientId' and 'clientSecret'"),
        ({"trust": "maybe"}, "'trust' must be 'test' or 'strict'"),
        ({"keys": ["a"]}, "'keys' must map"),
        ({"tokenUrl": 5}, "'tokenUrl' must be a string"),
    ],
)
def test_profile_errors(tmp_path: Path, members: dict[str, Any], message: str) -> None:
    path = write_profile(tmp_path / "profile.json", **members)
    with pytest.raises(ProfileError, match=message):
        Profile.load(path)


def test_profile_not_json(tmp_path: Path) -> None:
    path = tmp_path / "profile.json"
    path.write_text("{nope", encoding="utf-8")
    with pytest.raises(ProfileError, match="not valid JSON"):
        Profile.load(path)


def test_local_profile_with_only_the_api_url(tmp_path: Path) -> None:
    path = write_profile(
        tmp_path / "profile.json", tokenUrl=None, submissionApiUrl="http://127.0.0.1:9000/v1"
    )
    env = Profile.load(path).environment()
    assert env.token_url == "http://127.0.0.1:9000/token"
    assert env.jwks_url == "http://127.0.0.1:9000/.well-known/jwks.json"


def test_custom_environment_profile_needs_urls(tmp_path: Path) -> None:
    path = write_profile(tmp_path / "profile.json", environment="mine", tokenUrl=None)
    with pytest.raises(ProfileError, match="needs 'tokenUrl' and 'submissionApiUrl'"):
        Profile.load(path).environment()
    path = write_profile(tmp_path / "profile.json", environment="mine", trust="test")
    env = Profile.load(path).environment()
    assert (env.name, env.trust) == ("mine", "test")


# --- resolution ----------------------------------------------------------------------------------


def test_resolution_precedence(dirs: dict[str, Path]) -> None:
    cwd = dirs["cwd"]
    write_profile(cwd / ".fitconnect-dev" / "profile.json")
    environ = {"XDG_CONFIG_HOME": str(dirs["xdg"])}

    settings = resolve_settings(environ=environ, cwd=cwd)
    assert settings.environment.name == "local"
    assert settings.credentials == Credentials("sender-id", SECRET)
    assert settings.profile is not None
    assert SECRET not in repr(settings)

    sub = resolve_settings(role="subscriber", environ=environ, cwd=cwd)
    assert sub.credentials.client_id == "subscriber-id"

    env_creds = {**environ, "FITCONNECT_CLIENT_ID": "env-id", "FITCONNECT_CLIENT_SECRET": "e"}
    assert resolve_settings(environ=env_creds, cwd=cwd).credentials.client_id == "env-id"
    explicit = Credentials("arg-id", "a")
    assert resolve_settings(credentials=explicit, environ=env_creds, cwd=cwd).credentials == (
        explicit
    )


def test_switching_local_to_test_changes_only_name_and_credentials(
    dirs: dict[str, Path],
) -> None:
    cwd = dirs["cwd"]
    write_profile(cwd / ".fitconnect-dev" / "profile.json")
    base = {"XDG_CONFIG_HOME": str(dirs["xdg"])}
    local = resolve_settings(environ={**base, "FITCONNECT_ENV": "local"}, cwd=cwd)
    test = resolve_settings(
        environ={
            **base,
            "FITCONNECT_ENV": "test",
            "FITCONNECT_CLIENT_ID": "ssp-client",
            "FITCONNECT_CLIENT_SECRET": "ssp-secret",
        },
        cwd=cwd,
    )
    assert local.environment.name == "local"
    assert test.environment.name == "test"
    assert test.environment.submission_api_url.startswith("https://submission-api-testing")
    assert test.credentials.client_id == "ssp-client"
    assert test.profile is None


def test_profile_for_another_environment_is_refused(dirs: dict[str, Path]) -> None:
    path = write_profile(dirs["cwd"] / "local.json")
    with pytest.raises(ConfigurationError, match="is for environment 'local'"):
        resolve_settings("test", profile=path, environ={}, cwd=dirs["cwd"])


def test_missing_credentials_say_what_to_do(dirs: dict[str, Path]) -> None:
    environ = {"XDG_CONFIG_HOME": str(dirs["xdg"])}
    with pytest.raises(ConfigurationError, match="fitconnect dev"):
        resolve_settings("local", environ=environ, cwd=dirs["cwd"])
    with pytest.raises(ConfigurationError, match="Self-Service-Portal"):
        resolve_settings("test", environ=environ, cwd=dirs["cwd"])


def test_trust_anchor_variable(dirs: dict[str, Path]) -> None:
    from cryptography.hazmat.primitives import serialization
    from tests.unit.test_client_fakes import destination_keys

    pem = dirs["cwd"] / "roots.pem"
    pem.write_bytes(destination_keys().ca_certificate.public_bytes(serialization.Encoding.PEM))
    environ = {
        "FITCONNECT_TRUST_ANCHORS": str(pem),
        "FITCONNECT_CLIENT_ID": "a",
        "FITCONNECT_CLIENT_SECRET": "b",
    }
    settings = resolve_settings("prod", environ=environ, cwd=dirs["cwd"])
    assert len(settings.environment.trust_policy().trust_anchors) == 1


def test_load_profile_returns_none_without_any(dirs: dict[str, Path]) -> None:
    assert (
        load_profile(None, "local", environ={"XDG_CONFIG_HOME": "/nonexistent"}, cwd=dirs["cwd"])
        is None
    )
