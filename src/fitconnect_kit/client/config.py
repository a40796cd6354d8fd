"""Credentials, profiles and how the SDK finds its configuration.

Configuration comes from, in this order (first wins):

1. explicit arguments (``environment=``, ``credentials=``, ``profile=``);
2. environment variables ``FITCONNECT_ENV``, ``FITCONNECT_CLIENT_ID``,
   ``FITCONNECT_CLIENT_SECRET``, ``FITCONNECT_PROFILE``, ``FITCONNECT_TRUST_ANCHORS``;
3. a **profile file** (JSON, see :class:`Profile` and ``docs/sdk-sender.md``).

Profile lookup: explicit path → ``$FITCONNECT_PROFILE`` → ``./.fitconnect-dev/profile.json``
(only for the ``local`` environment) → ``$XDG_CONFIG_HOME/fitconnect-kit/profiles/<env>.json``
(default ``~/.config/...``). Only the first two are required to exist when named.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fitconnect_kit.client.environments import (
    Environment,
    TrustMode,
    canonical_name,
    load_certificates,
)
from fitconnect_kit.client.errors import ConfigurationError, ProfileError, ProfileNotFoundError

ENV_ENVIRONMENT = "FITCONNECT_ENV"
ENV_CLIENT_ID = "FITCONNECT_CLIENT_ID"
ENV_CLIENT_SECRET = "FITCONNECT_CLIENT_SECRET"  # noqa: S105 - a variable name, not a secret
ENV_PROFILE = "FITCONNECT_PROFILE"
ENV_TRUST_ANCHORS = "FITCONNECT_TRUST_ANCHORS"

LOCAL_PROFILE_PATH = Path(".fitconnect-dev") / "profile.json"
PROFILE_FORMAT_VERSION = 1

Role = Literal["sender", "subscriber"]
_MASK = "********"


# --- credentials --------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class Credentials:
    """OAuth client credentials of an API client registered in the Self-Service-Portal.

    The secret is never shown by ``repr``/``str`` and never logged.
    """

    client_id: str
    client_secret: str = field(compare=True)

    def __post_init__(self) -> None:
        if not isinstance(self.client_id, str) or not self.client_id.strip():
            raise ConfigurationError("client_id must be a non-empty string")
        if not isinstance(self.client_secret, str) or not self.client_secret:
            raise ConfigurationError(
                f"client secret of client {self.client_id!r} is empty; copy it from the "
                "Self-Service-Portal (it is shown only once when the client is created)"
            )

    def __repr__(self) -> str:
        return f"Credentials(client_id={self.client_id!r}, client_secret='{_MASK}')"

    __str__ = __repr__

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Credentials | None:
        """Credentials from ``FITCONNECT_CLIENT_ID``/``FITCONNECT_CLIENT_SECRET``, or ``None``.

        Raises :class:`ConfigurationError` when only one of the two is set.
        """
        env = os.environ if environ is None else environ
        client_id = env.get(ENV_CLIENT_ID) or None
        secret = env.get(ENV_CLIENT_SECRET) or None
        if client_id is None and secret is None:
            return None
        if client_id is None or secret is None:
            missing = ENV_CLIENT_ID if client_id is None else ENV_CLIENT_SECRET
            raise ConfigurationError(f"{missing} is not set (set both or neither)")
        return cls(client_id, secret)


# --- profiles -----------------------------------------------------------------------------------

_KNOWN_MEMBERS = frozenset(
    {
        "profileVersion",
        "name",
        "environment",
        "tokenUrl",
        "submissionApiUrl",
        "zustelldienstUrl",
        "routingApiUrl",
        "portalUrl",
        "trust",
        "trustAnchors",
        "sender",
        "subscriber",
        "destinationId",
        "serviceIdentifier",
        "serviceName",
        "dataSchemaUri",
        "dataMimeType",
        "keys",
    }
)


def _opt_str(data: Mapping[str, Any], member: str, where: str) -> str | None:
    value = data.get(member)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ProfileError(f"{where}: member {member!r} must be a string")
    return value


def _credentials_of(data: Mapping[str, Any], role: str, where: str) -> Credentials | None:
    raw = data.get(role)
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ProfileError(f"{where}: member {role!r} must be an object with clientId/clientSecret")
    client_id = _opt_str(raw, "clientId", f"{where} {role}")
    secret = _opt_str(raw, "clientSecret", f"{where} {role}")
    if not client_id or not secret:
        raise ProfileError(f"{where}: {role} needs both 'clientId' and 'clientSecret'")
    return Credentials(client_id, secret)


@dataclass(frozen=True, repr=False)
class Profile:
    """One environment's configuration as a JSON file (written by ``fitconnect dev``).

    Members (camelCase on disk; all optional except ``environment``)::

        {
          "profileVersion": 1,
          "name": "local",
          "environment": "local" | "test" | "stage" | "prod" | "<custom>",
          "tokenUrl": "...", "submissionApiUrl": ".../v1", "zustelldienstUrl": "...",
          "routingApiUrl": "...", "portalUrl": "...",
          "trust": "test" | "strict", "trustAnchors": ["roots.pem"],
          "sender":     {"clientId": "...", "clientSecret": "..."},
          "subscriber": {"clientId": "...", "clientSecret": "..."},
          "destinationId": "...", "serviceIdentifier": "...", "serviceName": "...",
          "dataSchemaUri": "...", "dataMimeType": "application/json",
          "keys": {"encryptionPrivate": "keys/enc.jwk.json", "signingPrivate": "..."}
        }

    Relative paths are relative to the profile file. Unknown members are kept in ``extra`` and
    written back unchanged, so newer writers and older readers get along.
    """

    environment_name: str
    name: str | None = None
    path: Path | None = None
    token_url: str | None = None
    submission_api_url: str | None = None
    zustelldienst_url: str | None = None
    routing_api_url: str | None = None
    portal_url: str | None = None
    trust: TrustMode | None = None
    trust_anchors: tuple[Path, ...] = ()
    sender: Credentials | None = None
    subscriber: Credentials | None = None
    destination_id: str | None = None
    service_identifier: str | None = None
    service_name: str | None = None
    data_schema_uri: str | None = None
    data_mime_type: str | None = None
    keys: Mapping[str, Path] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        env = self.environment_name
        return f"Profile(name={self.name!r}, environment={env!r}, path={self.path})"

    # --- reading -------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        """Read a profile file; :class:`ProfileNotFoundError` if it does not exist."""
        p = Path(path).expanduser()
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ProfileNotFoundError(f"profile file not found: {p}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ProfileError(f"cannot read profile {p}: {exc}") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ProfileError(f"profile {p} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ProfileError(f"profile {p} must contain a JSON object")
        return cls.from_dict(data, path=p.resolve())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, path: Path | None = None) -> Profile:
        """Build a profile from its JSON object; relative paths resolve against ``path``."""
        where = f"profile {path}" if path else "profile"
        version = data.get("profileVersion", PROFILE_FORMAT_VERSION)
        if not isinstance(version, int) or version < 1:
            raise ProfileError(f"{where}: 'profileVersion' must be a positive integer")
        env_name = _opt_str(data, "environment", where)
        if not env_name:
            raise ProfileError(f"{where}: member 'environment' is required (e.g. 'local', 'test')")
        base_dir = path.parent if path else Path.cwd()

        def resolve(p: str) -> Path:
            candidate = Path(p).expanduser()
            return candidate if candidate.is_absolute() else base_dir / candidate

        trust = _opt_str(data, "trust", where)
        if trust is not None and trust not in ("test", "strict"):
            raise ProfileError(f"{where}: 'trust' must be 'test' or 'strict', got {trust!r}")
        anchors_raw = data.get("trustAnchors", [])
        if isinstance(anchors_raw, str):
            anchors_raw = [anchors_raw]
        if not isinstance(anchors_raw, list) or not all(isinstance(a, str) for a in anchors_raw):
            raise ProfileError(f"{where}: 'trustAnchors' must be a list of file paths")
        keys_raw = data.get("keys", {})
        if not isinstance(keys_raw, Mapping) or not all(
            isinstance(v, str) for v in keys_raw.values()
        ):
            raise ProfileError(f"{where}: 'keys' must map key names to file paths")
        return cls(
            environment_name=env_name,
            name=_opt_str(data, "name", where),
            path=path,
            token_url=_opt_str(data, "tokenUrl", where),
            submission_api_url=_opt_str(data, "submissionApiUrl", where),
            zustelldienst_url=_opt_str(data, "zustelldienstUrl", where),
            routing_api_url=_opt_str(data, "routingApiUrl", where),
            portal_url=_opt_str(data, "portalUrl", where),
            trust=trust,  # type: ignore[arg-type]
            trust_anchors=tuple(resolve(a) for a in anchors_raw),
            sender=_credentials_of(data, "sender", where),
            subscriber=_credentials_of(data, "subscriber", where),
            destination_id=_opt_str(data, "destinationId", where),
            service_identifier=_opt_str(data, "serviceIdentifier", where),
            service_name=_opt_str(data, "serviceName", where),
            data_schema_uri=_opt_str(data, "dataSchemaUri", where),
            data_mime_type=_opt_str(data, "dataMimeType", where),
            keys={str(k): resolve(v) for k, v in keys_raw.items()},
            extra={k: v for k, v in data.items() if k not in _KNOWN_MEMBERS},
        )

    # --- using ---------------------------------------------------------------------------------

    def credentials(self, role: Role = "sender") -> Credentials | None:
        """The credentials stored for ``role`` (``sender`` or ``subscriber``)."""
        return self.sender if role == "sender" else self.subscriber

    def environment(self) -> Environment:
        """The :class:`Environment` this profile describes (preset plus overrides)."""
        key = canonical_name(self.environment_name)
        if key in ("local", "test", "stage", "prod"):
            env = Environment.preset(key)
            if key == "local" and self.submission_api_url and not self.token_url:
                # Our Zustelldienst serves the token endpoint next to the API.
                api = self.submission_api_url.rstrip("/")
                env = Environment.local(api[: -len("/v1")] if api.endswith("/v1") else api)
            changes: dict[str, object] = {}
            if self.token_url:
                changes["token_url"] = self.token_url
            if self.submission_api_url:
                changes["submission_api_url"] = self.submission_api_url
            if self.zustelldienst_url:
                changes["zustelldienst_url"] = self.zustelldienst_url
            if self.routing_api_url:
                changes["routing_api_url"] = self.routing_api_url
            if self.portal_url:
                changes["portal_url"] = self.portal_url
            if self.trust:
                changes["trust"] = self.trust
            if changes:
                env = env.replace(**changes)
        else:
            if not self.token_url or not self.submission_api_url:
                raise ProfileError(
                    f"profile {self.path or self.name}: custom environment "
                    f"{self.environment_name!r} needs 'tokenUrl' and 'submissionApiUrl'"
                )
            env = Environment.custom(
                self.environment_name,
                token_url=self.token_url,
                submission_api_url=self.submission_api_url,
                zustelldienst_url=self.zustelldienst_url,
                routing_api_url=self.routing_api_url,
                portal_url=self.portal_url,
                trust=self.trust or "strict",
            )
        if self.trust_anchors:
            env = env.with_trust_anchors(*self.trust_anchors)
        return env

    def to_dict(self, *, show_secrets: bool = False) -> dict[str, Any]:
        """The profile as its JSON object; secrets are masked unless ``show_secrets``."""
        data: dict[str, Any] = {"profileVersion": PROFILE_FORMAT_VERSION}
        if self.name is not None:
            data["name"] = self.name
        data["environment"] = self.environment_name
        simple = {
            "tokenUrl": self.token_url,
            "submissionApiUrl": self.submission_api_url,
            "zustelldienstUrl": self.zustelldienst_url,
            "routingApiUrl": self.routing_api_url,
            "portalUrl": self.portal_url,
            "trust": self.trust,
        }
        data.update({k: v for k, v in simple.items() if v is not None})
        if self.trust_anchors:
            data["trustAnchors"] = [str(p) for p in self.trust_anchors]
        for role, creds in (("sender", self.sender), ("subscriber", self.subscriber)):
            if creds is not None:
                data[role] = {
                    "clientId": creds.client_id,
                    "clientSecret": creds.client_secret if show_secrets else _MASK,
                }
        more = {
            "destinationId": self.destination_id,
            "serviceIdentifier": self.service_identifier,
            "serviceName": self.service_name,
            "dataSchemaUri": self.data_schema_uri,
            "dataMimeType": self.data_mime_type,
        }
        data.update({k: v for k, v in more.items() if v is not None})
        if self.keys:
            data["keys"] = {k: str(v) for k, v in self.keys.items()}
        for key, value in self.extra.items():
            data.setdefault(key, value)
        return data

    def save(self, path: str | Path | None = None) -> Path:
        """Write the profile (with secrets) as JSON, atomically and readable only by the owner.

        ``path`` defaults to the file it was loaded from. Returns the path written.
        """
        target = Path(path) if path is not None else self.path
        if target is None:
            raise ProfileError("no path to save the profile to")
        target = target.expanduser()
        target.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(self.to_dict(show_secrets=True), indent=2, ensure_ascii=False) + "\n"
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(data)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return target


# --- lookup ------------------------------------------------------------------------------------


def config_home(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/fitconnect-kit`` (default ``~/.config/fitconnect-kit``)."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME") or ""
    root = Path(base).expanduser() if base else Path.home() / ".config"
    return root / "fitconnect-kit"


def profile_candidates(
    env_name: str | None,
    *,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> list[Path]:
    """Implicit profile locations for ``env_name``, in lookup order (may not exist)."""
    key = canonical_name(env_name) if env_name else "local"
    here = cwd or Path.cwd()
    candidates: list[Path] = []
    if key == "local":
        candidates.append(here / LOCAL_PROFILE_PATH)
    candidates.append(config_home(environ) / "profiles" / f"{key}.json")
    return candidates


def find_profile(
    explicit: str | Path | None = None,
    env_name: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Path | None:
    """The profile file to use, or ``None``.

    An explicit path or ``$FITCONNECT_PROFILE`` must exist (else :class:`ProfileNotFoundError`);
    the implicit locations of :func:`profile_candidates` are used only when they exist.
    """
    env = os.environ if environ is None else environ
    if explicit is not None and str(explicit) != "":
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ProfileNotFoundError(f"profile file not found: {path}")
        return path
    from_env = env.get(ENV_PROFILE)
    if from_env:
        path = Path(from_env).expanduser()
        if not path.is_file():
            raise ProfileNotFoundError(f"profile file not found: {path} (from ${ENV_PROFILE})")
        return path
    for candidate in profile_candidates(env_name, environ=env, cwd=cwd):
        if candidate.is_file():
            return candidate
    return None


def load_profile(
    explicit: str | Path | None = None,
    env_name: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Profile | None:
    """Find (see :func:`find_profile`) and read the profile, or ``None`` if there is none."""
    path = find_profile(explicit, env_name, environ=environ, cwd=cwd)
    return None if path is None else Profile.load(path)


@dataclass(frozen=True, repr=False)
class Settings:
    """What a client needs: environment, credentials, and the profile they came from."""

    environment: Environment
    credentials: Credentials
    profile: Profile | None = None

    def __repr__(self) -> str:
        return (
            f"Settings(environment={self.environment.name!r}, "
            f"credentials={self.credentials!r}, profile={self.profile!r})"
        )


def resolve_settings(
    environment: Environment | str | None = None,
    *,
    credentials: Credentials | None = None,
    profile: Profile | str | Path | None = None,
    role: Role = "sender",
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Resolve environment and credentials from arguments, environment variables and profile.

    Environment name: argument → ``$FITCONNECT_ENV`` → the profile's ``environment`` →
    ``local``. Credentials: argument → ``$FITCONNECT_CLIENT_ID``/``_SECRET`` → the profile's
    ``sender``/``subscriber`` member. A profile whose environment differs from the requested one
    is an error (so ``--env test`` never silently talks to ``local``).
    """
    env = os.environ if environ is None else environ
    env_obj = environment if isinstance(environment, Environment) else None
    env_name: str | None
    if env_obj is not None:
        env_name = env_obj.name
    elif isinstance(environment, str) and environment:
        env_name = environment
    else:
        env_name = env.get(ENV_ENVIRONMENT) or None

    if isinstance(profile, Profile):
        prof: Profile | None = profile
    else:
        prof = load_profile(profile, env_name, environ=env, cwd=cwd)

    if (
        prof is not None
        and env_name is not None
        and env_obj is None
        and canonical_name(prof.environment_name) != canonical_name(env_name)
    ):
        raise ConfigurationError(
            f"profile {prof.path or prof.name} is for environment "
            f"{prof.environment_name!r}, but environment {env_name!r} was requested; "
            "pick a matching profile or drop one of the two"
        )

    if env_obj is None:
        if prof is not None:
            env_obj = prof.environment()
        else:
            env_obj = Environment.preset(env_name or "local")

    anchors = env.get(ENV_TRUST_ANCHORS)
    if anchors:
        for item in anchors.split(os.pathsep):
            if item:
                env_obj = env_obj.with_trust_anchors(*load_certificates(Path(item)))

    creds = credentials or Credentials.from_env(env)
    if creds is None and prof is not None:
        creds = prof.credentials(role)
    if creds is None:
        hint = (
            "run `fitconnect dev` (it writes ./.fitconnect-dev/profile.json)"
            if env_obj.name == "local"
            else f"create a {role.capitalize()} client in the Self-Service-Portal"
            + (f" ({env_obj.portal_url})" if env_obj.portal_url else "")
        )
        raise ConfigurationError(
            f"no {role} credentials for environment {env_obj.name!r}: pass Credentials(...), "
            f"set {ENV_CLIENT_ID}/{ENV_CLIENT_SECRET} or use a profile with a {role!r} member; "
            f"{hint}"
        )
    return Settings(environment=env_obj, credentials=creds, profile=prof)


__all__ = [
    "ENV_CLIENT_ID",
    "ENV_CLIENT_SECRET",
    "ENV_ENVIRONMENT",
    "ENV_PROFILE",
    "ENV_TRUST_ANCHORS",
    "Credentials",
    "Profile",
    "Role",
    "Settings",
    "config_home",
    "find_profile",
    "load_profile",
    "profile_candidates",
    "resolve_settings",
]
