"""Configuration of the Zustelldienst.

A :class:`ServerConfig` is read from a TOML or JSON file and from environment variables named
``FITCONNECT_SERVER_<FIELD>`` (nested fields with a double underscore, e.g.
``FITCONNECT_SERVER_RATE_LIMIT__BURST=50``). Environment variables override the file. Relative
paths in a file are resolved against the file's directory, relative paths from the environment
against the working directory. Any problem becomes one :class:`ConfigError` line.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fitconnect_kit.protocol.api import (
    LIMIT_MAX_ATTACHMENT_BYTES,
    LIMIT_MAX_ATTACHMENTS,
    LIMIT_MAX_TOTAL_ATTACHMENT_BYTES,
)
from fitconnect_kit.protocol.errors import FitConnectError
from fitconnect_kit.server.compat import (
    CALLBACK_BACKOFF_FACTOR,
    CALLBACK_GIVE_UP_AFTER,
    CALLBACK_MAX_CONCURRENCY,
)

ENV_PREFIX = "FITCONNECT_SERVER_"
CONFIG_PATH_ENV = "FITCONNECT_CONFIG"

MIB = 1024 * 1024


class ConfigError(FitConnectError):
    """The server configuration is missing, unreadable or invalid (one-line message)."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RateLimitConfig(_Section):
    """Token buckets per client (bearer ``sub``) and per IP address for unauthenticated calls."""

    enabled: bool = True
    #: Sustained requests per second per client, and the burst a client may spend at once.
    requests_per_second: float = Field(default=20.0, gt=0)
    burst: int = Field(default=200, ge=1)
    #: The same for callers without a valid token (the token endpoint, public resources).
    anonymous_requests_per_second: float = Field(default=5.0, gt=0)
    anonymous_burst: int = Field(default=50, ge=1)
    #: Buckets kept in memory before full (idle) ones are dropped.
    max_tracked_keys: int = Field(default=100_000, ge=100)


class LimitsConfig(_Section):
    """Size limits; attachment sizes are sizes of the encrypted (JWE) bodies.

    Defaults are FITKO's 500 MB / 100 / 2 GB, read as decimal units ([U], ``protocol.api``).
    """

    max_attachment_size: int = Field(default=LIMIT_MAX_ATTACHMENT_BYTES, ge=1)
    max_attachments: int = Field(default=LIMIT_MAX_ATTACHMENTS, ge=0)
    max_submission_size: int = Field(default=LIMIT_MAX_TOTAL_ATTACHMENT_BYTES, ge=1)
    #: Any other request body (JSON with encrypted metadata/data, SETs, token requests). [U]
    max_json_body_size: int = Field(default=64 * MIB, ge=1024)
    #: A request refused while its body is still coming (401/403/404/409/413/429 …) has at most
    #: this many bytes (and seconds) of the rest read and discarded before the connection is
    #: closed, so that a client still sending receives the problem instead of a connection reset,
    #: and nobody makes the server read forever (``middleware.RefusalDrainMiddleware``).
    refusal_drain_size: int = Field(default=64 * MIB, ge=0)
    refusal_drain_seconds: float = Field(default=10.0, ge=0)


class DeadlinesConfig(_Section):
    """Deadlines of FIT-Connect; values are ISO 8601 durations ("P14D") or seconds."""

    incomplete_submission: timedelta = timedelta(days=1)
    first_reminder: timedelta = timedelta(days=3)
    second_reminder: timedelta = timedelta(days=9)
    reject_unfetched: timedelta = timedelta(days=14)
    delete_unfetched: timedelta = timedelta(days=21)
    delete_after_pickup: timedelta = timedelta(days=7)
    event_log_retention: timedelta = timedelta(days=730)

    @model_validator(mode="after")
    def _ordered(self) -> DeadlinesConfig:
        for name, value in self:
            if value <= timedelta(0):
                raise ValueError(f"{name} must be positive")
        if self.delete_unfetched < self.reject_unfetched:
            raise ValueError("delete_unfetched must not be shorter than reject_unfetched")
        return self


class CallbackConfig(_Section):
    """Delivery of callbacks (webhooks) from the outbox. [U] retry schedule (``compat.py``).

    Retry n waits ``initial_backoff · backoff_factor^(n-1)`` seconds (at most ``max_backoff``,
    minus up to 20 % jitter); a delivery is ``failed`` after ``max_attempts`` attempts or once
    ``give_up_after`` has passed since it was enqueued, whichever comes first.
    """

    #: Seconds for one whole request (connect, send, response headers).
    request_timeout: float = Field(default=10.0, gt=0)
    max_attempts: int = Field(default=100, ge=1)
    initial_backoff: float = Field(default=5.0, gt=0)
    backoff_factor: float = Field(default=CALLBACK_BACKOFF_FACTOR, ge=1)
    max_backoff: float = Field(default=3600.0, gt=0)
    give_up_after: timedelta = CALLBACK_GIVE_UP_AFTER
    #: Requests one node sends at the same time.
    max_concurrency: int = Field(default=CALLBACK_MAX_CONCURRENCY, ge=1, le=1000)
    #: How long a worker may hold a delivery before another node may take it over.
    lock_seconds: float = Field(default=60.0, gt=0)
    #: Refuse callback targets that are (or resolve to) private, loopback, link-local or other
    #: non-public addresses — when a callback is configured and again when it is delivered
    #: (SSRF guard). ``None`` (default): on with ``key_policy = "strict"``, off with ``"test"``.
    block_private_addresses: bool | None = None

    @model_validator(mode="after")
    def _lease_covers_request(self) -> CallbackConfig:
        if self.lock_seconds <= self.request_timeout:
            raise ValueError("lock_seconds must be longer than request_timeout")
        if self.give_up_after <= timedelta(0):
            raise ValueError("give_up_after must be positive")
        return self


class WorkersConfig(_Section):
    """Background workers; disable them on nodes that should only serve HTTP."""

    enabled: bool = True
    deadline_interval: float = Field(default=60.0, gt=0)
    callback_interval: float = Field(default=2.0, gt=0)
    cleanup_interval: float = Field(default=300.0, gt=0)
    #: The ``cleanup`` worker removes blob-store temp files and unreferenced blobs only once
    #: they are this old (uploads in progress and blobs about to be recorded are younger).
    cleanup_grace: timedelta = timedelta(hours=1)
    #: On shutdown, a running callbacks pass gets this many seconds to finish (requests in
    #: flight are recorded) before it is cancelled; leases of unfinished callbacks are released.
    #: Other workers' passes are cancelled at once.
    shutdown_grace: float = Field(default=5.0, ge=0)

    @model_validator(mode="after")
    def _positive_grace(self) -> WorkersConfig:
        if self.cleanup_grace <= timedelta(0):
            raise ValueError("cleanup_grace must be positive")
        return self


class ServerConfig(BaseModel):
    """Everything a Zustelldienst process needs to know (see ``docs/server.md``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Public base URL of this Zustelldienst, without trailing slash; ``iss`` of SETs and tokens.
    base_url: str = "http://127.0.0.1:8080"
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    data_dir: Path = Path("zustelldienst-data")
    #: SQLAlchemy async URL; default ``sqlite+aiosqlite:///<data_dir>/zustelldienst.sqlite3``.
    database_url: str = ""
    blob_store: Literal["filesystem", "postgres"] = "filesystem"
    #: ``test``: self-signed x5c chains and plain-HTTP loopback callbacks are accepted.
    key_policy: Literal["test", "strict"] = "test"
    trust_anchors: tuple[Path, ...] = ()
    token_lifetime: int = Field(default=1800, ge=1, le=86_400)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    rate_limit: RateLimitConfig = RateLimitConfig()
    limits: LimitsConfig = LimitsConfig()
    deadlines: DeadlinesConfig = DeadlinesConfig()
    callbacks: CallbackConfig = CallbackConfig()
    workers: WorkersConfig = WorkersConfig()

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"must be an http(s) URL like https://zd.example.org, got {value!r}")
        if parts.query or parts.fragment:
            raise ValueError("must not contain a query or fragment")
        return value.rstrip("/")

    @field_validator("trust_anchors", mode="before")
    @classmethod
    def _split_anchor_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        if value and not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
        return value

    @model_validator(mode="after")
    def _derive(self) -> ServerConfig:
        if not self.database_url:
            url = f"sqlite+aiosqlite:///{self.data_dir / 'zustelldienst.sqlite3'}"
            object.__setattr__(self, "database_url", url)
        if self.blob_store == "postgres" and not self.uses_postgres:
            raise ValueError("blob_store 'postgres' needs a postgresql+asyncpg:// database_url")
        if self.key_policy == "strict" and not self.trust_anchors:
            raise ValueError("key_policy 'strict' needs at least one trust_anchors PEM file")
        return self

    @property
    def uses_postgres(self) -> bool:
        return self.database_url.startswith("postgresql")

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def allows_insecure_loopback_callbacks(self) -> bool:
        """Plain-HTTP callbacks to loopback addresses are a test-environment convenience."""
        return self.key_policy == "test"

    @property
    def blocks_private_callback_targets(self) -> bool:
        """The SSRF guard of callbacks (``callbacks.block_private_addresses``, see there)."""
        explicit = self.callbacks.block_private_addresses
        return self.key_policy == "strict" if explicit is None else explicit

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/token"

    def redacted_database_url(self) -> str:
        """The database URL with any password replaced, safe to log."""
        parts = urlsplit(self.database_url)
        if parts.password is None:
            return self.database_url
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        return parts._replace(netloc=netloc).geturl()


# --- loading -------------------------------------------------------------------------------------


def _read_file(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"configuration file not found: {path}") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from exc
    try:
        if path.suffix.lower() == ".json":
            data: Any = json.loads(raw.decode("utf-8"))
        else:
            data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"configuration file {path} is not valid: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"configuration file {path} must contain an object/table at top level")
    # A TOML file may nest everything under [server]; accept both layouts.
    if set(data) == {"server"} and isinstance(data["server"], dict):
        data = data["server"]
    return dict(data)


def _resolve_relative_paths(data: dict[str, Any], base: Path) -> None:
    if isinstance(data.get("data_dir"), str) and not Path(data["data_dir"]).is_absolute():
        data["data_dir"] = str(base / data["data_dir"])
    anchors = data.get("trust_anchors")
    if isinstance(anchors, list):
        data["trust_anchors"] = [
            str(base / a) if isinstance(a, str) and not Path(a).is_absolute() else a
            for a in anchors
        ]


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX:
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        target = overrides
        for part in path[:-1]:
            nested = target.setdefault(part, {})
            if not isinstance(nested, dict):
                raise ConfigError(f"environment variable {name} conflicts with another one")
            target = nested
        # JSON arrays/objects let lists be set from the environment; everything else is text
        # that pydantic converts (numbers, booleans, durations).
        stripped = value.strip()
        if stripped[:1] in ("[", "{"):
            try:
                target[path[-1]] = json.loads(stripped)
                continue
            except json.JSONDecodeError as exc:
                raise ConfigError(f"environment variable {name} is not valid JSON: {exc}") from exc
        target[path[-1]] = value
    return overrides


def _merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _one_line(exc: ValidationError) -> str:
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"]) or "configuration"
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown setting"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"invalid server configuration: {where}: {message}{more}"


def config_from_mapping(data: Mapping[str, Any]) -> ServerConfig:
    """Validate an already merged mapping; raises :class:`ConfigError` with one line."""
    try:
        return ServerConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(_one_line(exc)) from None


def load_config(
    path: Path | str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ServerConfig:
    """Load the configuration: file (optional), then environment, then explicit overrides.

    ``env`` defaults to :data:`os.environ`; ``overrides`` (e.g. ``--host``/``--port`` from the
    command line) win over both.
    """
    environment = os.environ if env is None else env
    data: dict[str, Any] = {}
    if path is not None:
        file_path = Path(path)
        data = _read_file(file_path)
        _resolve_relative_paths(data, file_path.resolve().parent)
    data = _merge(data, _env_overrides(environment))
    if overrides:
        data = _merge(data, {k: v for k, v in overrides.items() if v is not None})
    return config_from_mapping(data)


def load_config_from_env(env: Mapping[str, str] | None = None) -> ServerConfig:
    """Load the file named by ``FITCONNECT_CONFIG`` (if set) plus environment overrides."""
    environment = os.environ if env is None else env
    path = environment.get(CONFIG_PATH_ENV) or None
    return load_config(path, env=environment)
