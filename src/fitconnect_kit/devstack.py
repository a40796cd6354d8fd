"""``fitconnect dev``: a complete local FIT-Connect in one process.

:class:`DevStack` runs, on one loopback port, the token service and our Zustelldienst (SQLite and
files in the data directory, test key policy, background workers on) plus — optionally — the
demo Fachverfahren (:mod:`fitconnect_kit.demo.fachverfahren`), whose callback endpoint is mounted
into the same ASGI app under :data:`DEMO_CALLBACK_PATH`.

On every start the stack makes sure that, in the data directory and its database, there are
(:meth:`DevStack.prepare`, idempotent — a restart reuses everything):

* a sender client (``send:region:DE``) and a subscriber client (subscribe + manage scopes);
* a destination for the demo Leistung (JSON and XSD Fachdaten schemas, reply channels eMail and
  fitConnect, region ``DE``, every metadata version we support) with freshly generated test keys
  in ``keys/``, linked to the subscriber client, whose callback points at the demo Fachverfahren
  (only while it runs);
* ``seed.json`` (mode 0600): the ids and secrets seeded, checked against the database each start;
* ``profile.json`` (mode 0600) — the ``local`` profile for the CLI and the SDK — and a copy
  registered as ``$XDG_CONFIG_HOME/fitconnect-kit/profiles/local.json``;
* demo files to send (``antrag.json``, ``antrag.xml``, ``nachweis.txt`` and
  ``antrag-ungueltig.json``, which violates the demo schema).

Tests and benchmarks start it programmatically::

    stack = DevStack(DevOptions(port=0, data_dir=tmp_path / "dev", quiet=True))
    stack.run()          # blocks until SIGINT/SIGTERM (main thread) or stack.request_stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib
import json
import logging
import os
import secrets
import shlex
import shutil
import signal
import socket
import sys
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, Protocol

from fitconnect_kit.client.config import (
    LOCAL_PROFILE_PATH,
    Credentials,
    Profile,
    config_home,
    find_profile,
)
from fitconnect_kit.demo import (
    DEMO_JSON_SCHEMA_URI,
    DEMO_LEISTUNGSSCHLUESSEL,
    DEMO_SERVICE_IDENTIFIER,
    DEMO_SERVICE_NAME,
    DEMO_XML_SCHEMA_URI,
    demo_json_data,
    demo_xml_data,
)
from fitconnect_kit.protocol.errors import FitConnectError
from fitconnect_kit.protocol.jose.jwk import Jwk, public_jwk
from fitconnect_kit.protocol.keygen import (
    KEY_FILE_NAMES,
    generate_key_set,
    load_jwk_file,
    write_key_set,
)
from fitconnect_kit.protocol.metadata import KNOWN_METADATA_VERSIONS

if TYPE_CHECKING:
    from fitconnect_kit.server.config import ServerConfig
    from fitconnect_kit.server.storage.db import Database

logger = logging.getLogger("fitconnect_kit.dev")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_DATA_DIR = Path(".fitconnect-dev")
#: Where the demo Fachverfahren's callback endpoint is served by the dev app.
DEMO_CALLBACK_PATH = "/demo-fachverfahren/callbacks"
SEED_FORMAT_VERSION = 1
PROFILE_NAME = "local"
#: Member of the registered profile naming the data directory it belongs to.
REGISTERED_DATA_DIR_MEMBER = "dataDir"
DEMO_REGION = "DE"
DEMO_REPLY_CHANNELS: dict[str, Any] = {"eMail": {}, "fitConnect": {}}
DEMO_DESTINATION_NAME = "Demo-Zustellpunkt (fitconnect dev)"
DEMO_DATA_FILES = {
    "json": "antrag.json",
    "xml": "antrag.xml",
    "attachment": "nachweis.txt",
    "invalid": "antrag-ungueltig.json",
}
GRACEFUL_SHUTDOWN_SECONDS = 10
_HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class DevStackError(FitConnectError):
    """The dev stack cannot start (one-line message saying what to do)."""


# --- options and layout --------------------------------------------------------------------------


@dataclass(frozen=True)
class DevOptions:
    """How ``fitconnect dev`` runs. ``port=0`` picks a free port."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    data_dir: Path = DEFAULT_DATA_DIR
    with_subscriber: bool = True
    quiet: bool = False
    #: Register the profile as ``$XDG_CONFIG_HOME/fitconnect-kit/profiles/local.json``.
    register_profile: bool = True
    #: Give the ``fitconnect_kit`` loggers a console handler and level (the CLI does).
    configure_logging: bool = False
    #: Extra ``ServerConfig`` settings (nested sections as dicts); they win over the defaults.
    server_settings: dict[str, Any] = field(default_factory=dict)
    #: Another database than the embedded SQLite file in the data directory, e.g.
    #: ``postgresql+asyncpg://postgres@127.0.0.1:5432/fitconnect_dev`` (``None``: embedded).
    database_url: str | None = None
    #: ``filesystem`` (``<data_dir>/blobs``) or ``postgres`` (needs a PostgreSQL database_url).
    blob_store: Literal["filesystem", "postgres"] = "filesystem"


@dataclass(frozen=True)
class DevPaths:
    """Files and directories of one data directory."""

    data_dir: Path

    @property
    def seed(self) -> Path:
        return self.data_dir / "seed.json"

    @property
    def profile(self) -> Path:
        return self.data_dir / "profile.json"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def fachverfahren_dir(self) -> Path:
        return self.data_dir / "fachverfahren"

    @property
    def lock(self) -> Path:
        return self.data_dir / ".lock"

    def key_file(self, name: str) -> Path:
        return self.keys_dir / KEY_FILE_NAMES[name]

    def demo_file(self, kind: str) -> Path:
        return self.data_dir / DEMO_DATA_FILES[kind]


def base_url_for(host: str, port: int) -> str:
    """The URL clients use: wildcard addresses are reached over loopback."""
    if host in ("", "0.0.0.0"):  # noqa: S104 - we only map the wildcard to loopback here
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


# --- seed.json -----------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class DevSeed:
    """What ``fitconnect dev`` seeded (``seed.json``). Secrets live only here and in the profile."""

    sender: Credentials
    subscriber: Credentials
    destination_id: str
    callback_secret: str
    created_at: str
    encryption_kid: str | None = None
    signing_kid: str | None = None
    #: The callback URL the dev stack set on the destination (None: none of ours is set).
    managed_callback_url: str | None = None

    def __repr__(self) -> str:
        return f"DevSeed(destination_id={self.destination_id!r})"

    @classmethod
    def new(cls) -> DevSeed:
        from fitconnect_kit.protocol.ids import new_id
        from fitconnect_kit.server.auth import new_client_secret

        return cls(
            sender=Credentials(new_id(), new_client_secret()),
            subscriber=Credentials(new_id(), new_client_secret()),
            destination_id=new_id(),
            callback_secret=secrets.token_urlsafe(32),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "seedVersion": SEED_FORMAT_VERSION,
            "createdAt": self.created_at,
            "sender": {
                "clientId": self.sender.client_id,
                "clientSecret": self.sender.client_secret,
            },
            "subscriber": {
                "clientId": self.subscriber.client_id,
                "clientSecret": self.subscriber.client_secret,
            },
            "destinationId": self.destination_id,
            "encryptionKid": self.encryption_kid,
            "signingKid": self.signing_kid,
            "demoCallback": {"url": self.managed_callback_url, "secret": self.callback_secret},
        }

    @classmethod
    def from_json(cls, data: Any, where: Path) -> DevSeed:
        try:
            if data.get("seedVersion") != SEED_FORMAT_VERSION:
                raise DevStackError(
                    f"{where} has an unknown seedVersion; remove the data directory "
                    f"{where.parent} to start afresh"
                )
            callback = data["demoCallback"]
            return cls(
                sender=Credentials(data["sender"]["clientId"], data["sender"]["clientSecret"]),
                subscriber=Credentials(
                    data["subscriber"]["clientId"], data["subscriber"]["clientSecret"]
                ),
                destination_id=str(data["destinationId"]),
                callback_secret=str(callback["secret"]),
                created_at=str(data["createdAt"]),
                encryption_kid=data.get("encryptionKid"),
                signing_kid=data.get("signingKid"),
                managed_callback_url=callback.get("url"),
            )
        except (AttributeError, KeyError, TypeError, FitConnectError) as exc:
            if isinstance(exc, DevStackError):
                raise
            raise DevStackError(
                f"{where} is damaged ({type(exc).__name__}); remove the data directory "
                f"{where.parent} to start afresh"
            ) from None


def _write_private_json(path: Path, data: Any) -> None:
    """Atomically write JSON readable only by the owner."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_seed(path: Path) -> DevSeed | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DevStackError(
            f"cannot read {path} ({type(exc).__name__}); remove the data directory "
            f"{path.parent} to start afresh"
        ) from None
    return DevSeed.from_json(data, path)


# --- what was prepared ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DevInfo:
    """Everything the welcome text (and tests) need after :meth:`DevStack.prepare`."""

    base_url: str
    paths: DevPaths
    seed: DevSeed
    profile_path: Path
    registered_profile_path: Path | None
    with_subscriber: bool
    callback_url: str | None
    warnings: tuple[str, ...] = ()
    #: The database when it is not the embedded SQLite file (password removed), else ``None``.
    database: str | None = None

    @property
    def api_url(self) -> str:
        return self.base_url + "/v1"

    @property
    def token_url(self) -> str:
        return self.base_url + "/token"

    @property
    def docs_url(self) -> str:
        return self.base_url + "/docs"

    @property
    def jwks_url(self) -> str:
        return self.base_url + "/.well-known/jwks.json"


class FachverfahrenRunner(Protocol):
    """What the dev stack needs from a demo Fachverfahren (see ``demo/fachverfahren.py``)."""

    #: ASGI app answering ``POST`` callbacks, served at :data:`DEMO_CALLBACK_PATH`.
    callback_app: Any

    async def run(self, stop: asyncio.Event) -> None:
        """Receive until ``stop`` is set (callbacks wake it; it also polls)."""


FachverfahrenFactory = Callable[[DevInfo], FachverfahrenRunner]


# --- the stack -----------------------------------------------------------------------------------


class DevStack:
    """One ``fitconnect dev`` instance (see the module docstring)."""

    def __init__(
        self,
        options: DevOptions | None = None,
        *,
        out: IO[str] | None = None,
        fachverfahren_factory: FachverfahrenFactory | None = None,
    ) -> None:
        self.options = options or DevOptions()
        self.paths = DevPaths(self.options.data_dir.expanduser().absolute())
        self._out = out
        self._fachverfahren_factory = fachverfahren_factory
        self._sock: socket.socket | None = None
        self._lock_handle: IO[str] | None = None
        self._server: Any = None
        self._stop_requested = threading.Event()
        self._fv_stop: asyncio.Event | None = None
        self._fv_task: asyncio.Task[None] | None = None
        self._stopping: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.info: DevInfo | None = None
        self.started = threading.Event()

    # --- configuration ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._sock is None:
            return self.options.port
        port: int = self._sock.getsockname()[1]
        return port

    @property
    def base_url(self) -> str:
        return base_url_for(self.options.host, self.port)

    @property
    def callback_url(self) -> str:
        return self.base_url + DEMO_CALLBACK_PATH

    def server_config(self) -> ServerConfig:
        """The ``ServerConfig`` of the dev Zustelldienst.

        Dev defaults, then ``FITCONNECT_SERVER_*`` variables (e.g. shorter deadlines), then
        ``options.server_settings``; address, data directory, storage (``options.database_url``
        and ``options.blob_store``, default: embedded SQLite and files) and the test key policy
        are always the dev stack's own.
        """
        from fitconnect_kit.server.config import _env_overrides, _merge, config_from_mapping

        data: dict[str, Any] = {
            "log_level": "warning" if self.options.quiet else "info",
            # Everything comes from 127.0.0.1 here: CLI calls, the demo Fachverfahren, callbacks.
            "rate_limit": {"anonymous_requests_per_second": 100, "anonymous_burst": 1000},
        }
        data = _merge(data, _env_overrides(os.environ))
        data = _merge(data, self.options.server_settings)
        data = _merge(
            data,
            {
                "base_url": self.base_url,
                "host": self.options.host,
                "port": self.port,
                "data_dir": str(self.paths.data_dir),
                "key_policy": "test",
                "trust_anchors": [],
                "database_url": self.options.database_url or "",
                "blob_store": self.options.blob_store,
            },
        )
        return config_from_mapping(data)

    # --- startup steps ---------------------------------------------------------------------------

    def bind(self) -> None:
        """Create the data directory, take its lock and bind the listening socket."""
        if not self.paths.data_dir.exists():
            # Only the owner may read it: secrets, private keys, decrypted submissions.
            self.paths.data_dir.mkdir(mode=0o700, parents=True)
        self._take_lock()
        family = socket.AF_INET6 if ":" in self.options.host else socket.AF_INET
        # proto IPPROTO_TCP (not 0): accepted connections inherit it, and asyncio only turns
        # Nagle's algorithm off (TCP_NODELAY) for sockets that say they are TCP. Without it a
        # response body written after its headers waits for the client's delayed ACK (~40 ms
        # per request on keep-alive connections). TCP_NODELAY on the listener is inherited too.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.bind((self.options.host, self.options.port))
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise DevStackError(
                    f"port {self.options.port} on {self.options.host} is already in use "
                    "(another `fitconnect dev`?); stop it or pass --port"
                ) from None
            raise DevStackError(
                f"cannot listen on {self.options.host}:{self.options.port}: {exc.strerror}"
            ) from None
        sock.listen(128)
        sock.setblocking(False)
        self._sock = sock

    def _take_lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return
        handle = self.paths.lock.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise DevStackError(
                f"another `fitconnect dev` is using {self.paths.data_dir}; stop it first or "
                "pass another --data-dir"
            ) from None
        self._lock_handle = handle

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._lock_handle is not None:
            self._lock_handle.close()
            self._lock_handle = None

    async def prepare(self) -> DevInfo:
        """Seed (or check) clients, destination, keys, profile and demo files; idempotent."""
        from fitconnect_kit.server.admin import open_admin_database

        config = self.server_config()
        warnings: list[str] = []
        seed = load_seed(self.paths.seed)
        database = await open_admin_database(config)
        try:
            if seed is None:
                if await _has_clients(database):
                    raise DevStackError(
                        f"{self.paths.data_dir} holds a Zustelldienst database but no seed.json "
                        "(not made by `fitconnect dev`?); pass another --data-dir or remove "
                        "the directory to start afresh"
                    )
                seed = DevSeed.new()
                # Recorded before anything is created: a crash in between is repaired next time.
                _write_private_json(self.paths.seed, seed.to_json())
            keys = self._ensure_keys(seed)
            seed = replace(
                seed, encryption_kid=keys["encryption"]["kid"], signing_kid=keys["signing"]["kid"]
            )
            await self._ensure_clients(database, seed, warnings)
            await self._ensure_destination(database, config, seed, keys, warnings)
            seed = await self._ensure_callback(database, config, seed, warnings)
        finally:
            await database.dispose()
        _write_private_json(self.paths.seed, seed.to_json())
        profile_path, registered = self._write_profiles(seed, warnings)
        self._write_demo_files()
        self.paths.fachverfahren_dir.mkdir(mode=0o700, exist_ok=True)
        self.info = DevInfo(
            base_url=self.base_url,
            paths=self.paths,
            seed=seed,
            profile_path=profile_path,
            registered_profile_path=registered,
            with_subscriber=self.options.with_subscriber,
            callback_url=seed.managed_callback_url,
            warnings=tuple(warnings),
            database=config.redacted_database_url() if self.options.database_url else None,
        )
        return self.info

    def _ensure_keys(self, seed: DevSeed) -> dict[str, Jwk]:
        names = ("encryption_private", "encryption_public", "signing_private", "signing_public")
        present = [self.paths.key_file(n).exists() for n in names]
        if not any(present):
            if seed.encryption_kid is not None:
                raise DevStackError(
                    f"the destination keys in {self.paths.keys_dir} are gone, so submissions to "
                    f"destination {seed.destination_id} cannot be decrypted any more; remove "
                    f"the data directory {self.paths.data_dir} to start afresh"
                )
            logger.info("generating the destination's keys (RSA-4096) …")
            keys_dir = self.paths.keys_dir
            # Written next to it and renamed: an interrupted first start leaves no half set.
            staging = keys_dir.with_name(f".{keys_dir.name}.{os.getpid()}.tmp")
            shutil.rmtree(staging, ignore_errors=True)
            write_key_set(generate_key_set(common_name="fitconnect dev"), staging)
            if keys_dir.exists():
                shutil.rmtree(keys_dir)  # holds no key (see above): leftovers of a crash
            staging.rename(keys_dir)
        elif not all(present):
            missing = [
                str(self.paths.key_file(n)) for n, p in zip(names, present, strict=True) if not p
            ]
            raise DevStackError(
                f"some key files are missing ({', '.join(missing)}); remove the data "
                f"directory {self.paths.data_dir} to start afresh"
            )
        try:
            enc_private = load_jwk_file(self.paths.key_file("encryption_private"))
            enc_public = load_jwk_file(self.paths.key_file("encryption_public"))
            sig_private = load_jwk_file(self.paths.key_file("signing_private"))
            sig_public = load_jwk_file(self.paths.key_file("signing_public"))
        except FitConnectError as exc:
            raise DevStackError(f"cannot read the destination keys: {exc}") from None
        for private, public, what in (
            (enc_private, enc_public, "encryption"),
            (sig_private, sig_public, "signing"),
        ):
            derived = public_jwk(private)
            if derived.get("n") != public.get("n") or private.get("kid") != public.get("kid"):
                raise DevStackError(
                    f"the {what} key files in {self.paths.keys_dir} do not belong together"
                )
        if seed.encryption_kid is not None and (
            seed.encryption_kid != enc_public["kid"] or seed.signing_kid != sig_public["kid"]
        ):
            raise DevStackError(
                f"the keys in {self.paths.keys_dir} are not the ones seeded for destination "
                f"{seed.destination_id}; remove the data directory {self.paths.data_dir} to "
                "start afresh"
            )
        return {"encryption": enc_public, "signing": sig_public}

    async def _ensure_clients(self, database: Database, seed: DevSeed, warnings: list[str]) -> None:
        from fitconnect_kit.server.admin import create_client
        from fitconnect_kit.server.auth import (
            SUBSCRIBER_SCOPES,
            hash_client_secret,
            verify_client_secret,
        )
        from fitconnect_kit.server.storage.models import Client

        wanted = (
            (seed.sender, "sender", "Demo-Onlinedienst (fitconnect dev)", ["send:region:DE"]),
            (seed.subscriber, "subscriber", "Demo-Fachverfahren (fitconnect dev)", None),
        )
        for creds, kind, name, scopes in wanted:
            async with database.sessions() as session:
                client = await session.get(Client, creds.client_id)
                if client is not None:
                    if client.kind != kind:
                        raise DevStackError(
                            f"client {creds.client_id} in the database is a {client.kind}, "
                            f"seed.json says {kind}; remove the data directory to start afresh"
                        )
                    if not verify_client_secret(creds.client_secret, client.secret_hash):
                        client.secret_hash = hash_client_secret(creds.client_secret)
                        await session.commit()
                        warnings.append(f"reset the secret of the {kind} client to seed.json's")
                    if client.disabled:
                        warnings.append(f"the {kind} client {creds.client_id} is disabled")
                    continue
            await create_client(
                database,
                kind=kind,
                name=name,
                scopes=scopes if scopes is not None else list(SUBSCRIBER_SCOPES),
                client_id=creds.client_id,
                client_secret=creds.client_secret,
            )
            logger.info("created the %s client %s", kind, creds.client_id)

    async def _ensure_destination(
        self,
        database: Database,
        config: ServerConfig,
        seed: DevSeed,
        keys: dict[str, Jwk],
        warnings: list[str],
    ) -> None:
        from fitconnect_kit.server.admin import (
            AdminNotFoundError,
            create_destination,
            get_destination,
            link_client,
        )

        try:
            info = await get_destination(database, seed.destination_id)
        except AdminNotFoundError:
            await create_destination(
                database,
                config,
                services=[demo_service()],
                encryption_key=keys["encryption"],
                signing_key=keys["signing"],
                metadata_versions=list(KNOWN_METADATA_VERSIONS),
                reply_channels=DEMO_REPLY_CHANNELS,
                status="active",
                name=DEMO_DESTINATION_NAME,
                destination_id=seed.destination_id,
            )
            logger.info("created the demo destination %s", seed.destination_id)
        else:
            kids = {key.get("kid") for key in info.keys}
            if keys["encryption"]["kid"] not in kids or keys["signing"]["kid"] not in kids:
                raise DevStackError(
                    f"destination {seed.destination_id} no longer has the keys in "
                    f"{self.paths.keys_dir}; remove the data directory {self.paths.data_dir} to "
                    "start afresh"
                )
            if info.encryption_kid != keys["encryption"]["kid"]:
                warnings.append(
                    f"destination {seed.destination_id} now encrypts with key "
                    f"{info.encryption_kid}, which is not in {self.paths.keys_dir}"
                )
            if info.status != "active":
                warnings.append(f"destination {seed.destination_id} is {info.status}")
            offered = {s.get("identifier") for s in info.services}
            if DEMO_SERVICE_IDENTIFIER not in offered:
                warnings.append(
                    f"destination {seed.destination_id} no longer offers the demo Leistung"
                )
        await link_client(
            database,
            client_id=seed.subscriber.client_id,
            destination_id=seed.destination_id,
            can_manage=True,
        )

    async def _ensure_callback(
        self, database: Database, config: ServerConfig, seed: DevSeed, warnings: list[str]
    ) -> DevSeed:
        """Point the destination's callback at the demo Fachverfahren (or take ours away).

        A callback somebody else configured (Destination API, ``fitconnect admin``) is left alone.
        """
        from fitconnect_kit.server.admin import check_callback_url
        from fitconnect_kit.server.storage.models import Destination

        wanted = self.callback_url if self.options.with_subscriber else None
        async with database.sessions() as session:
            destination = await session.get(Destination, seed.destination_id)
            assert destination is not None
            current = destination.callback_url
            ours = current is None or current == seed.managed_callback_url
            if not ours:
                if self.options.with_subscriber:
                    warnings.append(
                        f"the destination's callback points to {current} (set by someone "
                        "else); the demo Fachverfahren polls instead"
                    )
                return replace(seed, managed_callback_url=None)
            if current == wanted and (
                wanted is None or destination.callback_secret == seed.callback_secret
            ):
                return replace(seed, managed_callback_url=wanted)
            if wanted is not None:
                check_callback_url(
                    wanted, allow_insecure_loopback=config.allows_insecure_loopback_callbacks
                )
            destination.callback_url = wanted
            destination.callback_secret = seed.callback_secret if wanted else None
            destination.updated_at = datetime.now(UTC)
            await session.commit()
        return replace(seed, managed_callback_url=wanted)

    def profile(self, seed: DevSeed, *, absolute_keys: bool = False) -> Profile:
        """The ``local`` profile; ``absolute_keys`` for the registered copy (which also names
        the data directory as ``dataDir``, so another checkout's start can tell it apart)."""

        def key_path(name: str) -> Path:
            path = self.paths.key_file(name)
            return path if absolute_keys else path.relative_to(self.paths.data_dir)

        return Profile(
            environment_name="local",
            name=PROFILE_NAME,
            token_url=self.base_url + "/token",
            submission_api_url=self.base_url + "/v1",
            sender=seed.sender,
            subscriber=seed.subscriber,
            destination_id=seed.destination_id,
            service_identifier=DEMO_SERVICE_IDENTIFIER,
            service_name=DEMO_SERVICE_NAME,
            data_schema_uri=DEMO_JSON_SCHEMA_URI,
            data_mime_type="application/json",
            keys={
                "encryptionPrivate": key_path("encryption_private"),
                "signingPrivate": key_path("signing_private"),
            },
            extra={REGISTERED_DATA_DIR_MEMBER: str(self.paths.data_dir)} if absolute_keys else {},
        )

    def _write_profiles(
        self, seed: DevSeed, warnings: list[str] | None = None
    ) -> tuple[Path, Path | None]:
        """Write ``profile.json`` and register a copy in the config home.

        The registration follows the stack started last. When it pointed at the data directory
        of another stack that still exists (another checkout), a note naming both goes into
        ``warnings`` (shown in the welcome text): ``--env local`` outside a data directory's
        parent now reaches this stack.
        """
        path = self.profile(seed).save(self.paths.profile)
        registered: Path | None = None
        if self.options.register_profile:
            target = config_home() / "profiles" / f"{PROFILE_NAME}.json"
            other = registered_data_dir(target)
            try:
                registered = self.profile(seed, absolute_keys=True).save(target)
            except OSError as exc:
                logger.warning("could not register the profile as %s: %s", target, exc.strerror)
            else:
                if (
                    other is not None
                    and other.is_dir()
                    and other.resolve() != self.paths.data_dir.resolve()
                ):
                    notice = (
                        f"the registered local profile {target} pointed at the data directory "
                        f"{other}; it now points at {self.paths.data_dir} (this stack)"
                    )
                    logger.info("%s", notice)
                    if warnings is not None:
                        warnings.append(notice)
        return path, registered

    def _write_demo_files(self) -> None:
        invalid = demo_json_data()
        del invalid["anschrift"]  # required by the demo schema: the Fachverfahren rejects it
        files = {
            "json": _json_bytes(demo_json_data()),
            "xml": demo_xml_data(),
            "attachment": b"Nachweis (Beispielanlage der fitconnect-kit Demo)\n",
            "invalid": _json_bytes(invalid),
        }
        for kind, content in files.items():
            target = self.paths.demo_file(kind)
            if not target.exists():
                target.write_bytes(content)

    # --- running ---------------------------------------------------------------------------------

    def build_app(self, config: ServerConfig, fachverfahren: FachverfahrenRunner | None) -> Any:
        from starlette.routing import Route

        from fitconnect_kit.server.app import create_app

        app = create_app(config)
        if fachverfahren is not None:
            # A plain route (not in the OpenAPI document) that hands the request to the ASGI app.
            app.router.routes.append(Route(DEMO_CALLBACK_PATH, fachverfahren.callback_app))
        return app

    def request_stop(self) -> None:
        """Stop a running stack (thread-safe); same as SIGTERM."""
        self._stop_requested.set()
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop has just closed
                loop.call_soon_threadsafe(self._begin_stop)
                return
        if self._server is not None:
            self._server.should_exit = True

    def run(self) -> int:
        """Bind, prepare and serve until stopped; returns the exit status (0)."""
        try:
            if self._sock is None:
                self.bind()
            with asyncio.Runner(loop_factory=_event_loop_factory()) as runner:
                runner.run(self._main())
        finally:
            self.close()
        return 0

    async def _main(self) -> None:
        import uvicorn

        self._loop = asyncio.get_running_loop()
        if self.options.configure_logging:
            _configure_logging("warning" if self.options.quiet else "info")
        info = await self.prepare()
        config = self.server_config()
        fachverfahren: FachverfahrenRunner | None = None
        if self.options.with_subscriber:
            fachverfahren = self._make_fachverfahren(info)
        app = self.build_app(config, fachverfahren)
        started = asyncio.Event()
        server = _make_server_class()(
            uvicorn.Config(
                app,
                log_level="warning" if self.options.quiet else "info",
                access_log=not self.options.quiet,
                lifespan="on",
                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
                server_header=False,
                proxy_headers=False,
            ),
            on_exit=self._on_signal,
            on_started=started.set,
        )
        self._server = server
        if self._stop_requested.is_set():
            server.should_exit = True
        assert self._sock is not None
        self._fv_stop = asyncio.Event()
        serve_task = asyncio.create_task(server.serve(sockets=[self._sock]))
        try:
            started_task = asyncio.create_task(started.wait())
            await asyncio.wait({serve_task, started_task}, return_when=asyncio.FIRST_COMPLETED)
            started_task.cancel()
            if started.is_set() and not server.should_exit:
                if fachverfahren is not None:
                    self._fv_task = asyncio.create_task(fachverfahren.run(self._fv_stop))
                self._welcome(info, fachverfahren is not None)
                self.started.set()
            await serve_task
        finally:
            self._fv_stop.set()
            fv_task = self._fv_task
            if fv_task is not None:
                try:
                    await asyncio.wait_for(fv_task, timeout=GRACEFUL_SHUTDOWN_SECONDS)
                except TimeoutError:
                    logger.warning("the demo Fachverfahren did not stop in time")
                except Exception:
                    logger.exception("the demo Fachverfahren failed")
            if not serve_task.done():
                serve_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await serve_task
        if not started.is_set():
            raise DevStackError("the Zustelldienst did not start; see the log above")
        self._print("fitconnect dev stopped; all data stays in " + shown_path(self.paths.data_dir))

    def _on_signal(self) -> bool:
        """First SIGINT/SIGTERM: stop the Fachverfahren, then the server (see ``_stop``).

        Runs in the signal handler; returns whether the stop is taken care of (else uvicorn
        stops at once).
        """
        self._stop_requested.set()
        loop = self._loop
        if loop is None or self._fv_task is None or self._fv_task.done():
            return False
        loop.call_soon_threadsafe(self._begin_stop)
        return True

    def _begin_stop(self) -> None:
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop())

    async def _stop(self) -> None:
        """Let the Fachverfahren finish the submission in hand (it needs the server), then stop
        the server."""
        if self._fv_stop is not None:
            self._fv_stop.set()
        task = self._fv_task
        if task is not None and not task.done():
            logger.info("stopping the demo Fachverfahren …")
            with contextlib.suppress(TimeoutError, Exception):
                await asyncio.wait_for(asyncio.shield(task), timeout=GRACEFUL_SHUTDOWN_SECONDS)
        if self._server is not None:
            self._server.should_exit = True

    def _make_fachverfahren(self, info: DevInfo) -> FachverfahrenRunner | None:
        factory = self._fachverfahren_factory
        if factory is None:
            from fitconnect_kit.demo.fachverfahren import create_demo_fachverfahren

            factory = create_demo_fachverfahren
        return factory(info)

    # --- output ----------------------------------------------------------------------------------

    def _print(self, text: str) -> None:
        out = self._out or sys.stdout
        out.write(text + "\n")
        out.flush()

    def _welcome(self, info: DevInfo, fachverfahren: bool) -> None:
        self._print(welcome_text(info, fachverfahren_running=fachverfahren))


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode()


def demo_service() -> dict[str, Any]:
    """The demo Leistung as a destination service (both Fachdaten schemas, region DE)."""
    return {
        "identifier": DEMO_SERVICE_IDENTIFIER,
        "submissionSchemas": [
            {"schemaUri": DEMO_JSON_SCHEMA_URI, "mimeType": "application/json"},
            {"schemaUri": DEMO_XML_SCHEMA_URI, "mimeType": "application/xml"},
        ],
        "regions": [DEMO_REGION],
        "replyChannels": DEMO_REPLY_CHANNELS,
    }


async def _has_clients(database: Database) -> bool:
    from sqlalchemy import func, select

    from fitconnect_kit.server.storage.models import Client, Destination

    async with database.sessions() as session:
        clients = await session.scalar(select(func.count()).select_from(Client))
        destinations = await session.scalar(select(func.count()).select_from(Destination))
    return bool(clients) or bool(destinations)


def _make_server_class() -> type:
    import uvicorn

    class DevServer(uvicorn.Server):
        """uvicorn's server without re-raising the signal after a graceful shutdown (exit 0)."""

        def __init__(
            self,
            config: uvicorn.Config,
            *,
            on_exit: Callable[[], bool],
            on_started: Callable[[], None],
        ) -> None:
            super().__init__(config)
            self._on_exit = on_exit
            self._on_started = on_started
            self._exit_seen = False

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                self._on_started()

        def handle_exit(self, sig: int, frame: Any) -> None:
            # The first signal may be handled by the stack (Fachverfahren first); a second one
            # goes to uvicorn (stop now / force).
            if not self._exit_seen:
                self._exit_seen = True
                if self._on_exit():
                    return
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            original = {sig: signal.signal(sig, self.handle_exit) for sig in _HANDLED_SIGNALS}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return DevServer


def _event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it exists (a dependency except on Windows): a faster loop for
    the many small requests of the stack; else asyncio's own."""
    if os.environ.get("FITCONNECT_DEV_LOOP", "auto") == "asyncio":
        return None
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _configure_logging(level: str) -> None:
    root = logging.getLogger("fitconnect_kit")
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)-9s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level.upper())


# --- the welcome text ----------------------------------------------------------------------------


def registered_data_dir(path: Path) -> Path | None:
    """The data directory a registered ``local`` profile belongs to, if it tells.

    ``dataDir`` (written since it exists), else derived from the absolute key paths
    (``<dataDir>/keys/…``); ``None`` for a missing, unreadable or foreign profile.
    """
    try:
        registered = Profile.load(path)
    except (FitConnectError, OSError):
        return None
    named = registered.extra.get(REGISTERED_DATA_DIR_MEMBER)
    if isinstance(named, str) and named:
        return Path(named).expanduser().absolute()
    key = registered.keys.get("encryptionPrivate")
    if key is not None and key.is_absolute() and key.parent.name == "keys":
        return key.parent.parent
    return None


def shown_path(path: Path, cwd: Path | None = None) -> str:
    """``path`` relative to the working directory when it is inside it, else absolute."""
    here = (cwd or Path.cwd()).absolute()
    with contextlib.suppress(ValueError):
        relative = path.absolute().relative_to(here)
        text = str(relative)
        return text + "/" if path.is_dir() and not text.endswith("/") else text
    return str(path)


def cli_prefix(cwd: Path | None = None) -> str:
    """How to call ``fitconnect`` from ``cwd``: as it was started (``.venv/bin/fitconnect``)."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if argv0 is not None and argv0.name == "fitconnect":
        resolved = argv0.absolute()
        on_path = shutil.which("fitconnect")
        if on_path and Path(on_path).absolute() == resolved and os.sep not in sys.argv[0]:
            return "fitconnect"
        shown = shown_path(resolved, cwd)
        return shlex.quote(shown if os.sep in shown else "./" + shown)
    return f"{shlex.quote(sys.executable)} -m fitconnect_kit.cli.main"


def profile_option(info: DevInfo, cwd: Path | None = None) -> str:
    """``--env local`` if that finds this stack's profile from ``cwd``, else ``--profile FILE``."""
    try:
        found = find_profile(None, "local", cwd=cwd)
    except FitConnectError:
        found = None
    if found is not None and found.resolve() in (
        info.profile_path.resolve(),
        *((info.registered_profile_path.resolve(),) if info.registered_profile_path else ()),
    ):
        return "--env local"
    return "--profile " + shlex.quote(shown_path(info.profile_path, cwd))


def example_commands(info: DevInfo, cwd: Path | None = None) -> list[tuple[str, str]]:
    """The three commands of the welcome text: (what it does, command line)."""
    fc = cli_prefix(cwd)
    opt = profile_option(info, cwd)
    data = shlex.quote(shown_path(info.paths.demo_file("json"), cwd))
    here = (cwd or Path.cwd()).absolute()
    data_dir_option = (
        ""
        if info.paths.data_dir == here / DEFAULT_DATA_DIR
        else " --data-dir " + shlex.quote(shown_path(info.paths.data_dir, cwd))
    )
    return [
        (
            "Send a demo Antrag (encrypted, to the demo Zustellpunkt) and wait for the decision:",
            f"{fc} send {opt} --data {data} --wait",
        )
        if info.with_subscriber
        else (
            "Send a demo Antrag (encrypted, to the demo Zustellpunkt, where it waits for you):",
            f"{fc} send {opt} --data {data}",
        ),
        (
            "Show the verified event log and status of the submission you sent last:",
            f"{fc} status {opt} --last",
        ),
        (
            "See what the demo Fachverfahren received (decrypted, verified) and decided:",
            f"{fc} dev inbox{data_dir_option}",
        )
        if info.with_subscriber
        else (
            "List what waits for you as the Fachverfahren (then: fitconnect receive --auto …):",
            f"{fc} inbox {opt}",
        ),
    ]


def welcome_text(
    info: DevInfo, *, fachverfahren_running: bool = True, cwd: Path | None = None
) -> str:
    """The text ``fitconnect dev`` prints once it listens (no secrets)."""
    seed = info.seed
    fc = cli_prefix(cwd)
    registered = (
        f"\n                   (registered as {info.registered_profile_path})"
        if info.registered_profile_path
        else ""
    )
    lines = [
        "",
        "=" * 78,
        "fitconnect dev — a complete local FIT-Connect is running",
        "",
        f"  Submission API   {info.api_url}",
        f"  Token service    {info.token_url}",
        f"  API docs         {info.docs_url}",
        f"  ZD JWKS          {info.jwks_url}",
        f"  Data directory   {shown_path(info.paths.data_dir, cwd)}",
        *([f"  Database         {info.database}"] if info.database else []),
        f"  Profile          {shown_path(info.profile_path, cwd)}{registered}",
        "",
        f"  Zustellpunkt     {seed.destination_id}",
        f'                   Leistung {DEMO_LEISTUNGSSCHLUESSEL} "{DEMO_SERVICE_NAME}", '
        f"region {DEMO_REGION}",
        f"  Sender client    {seed.sender.client_id}",
        f"  Subscriber       {seed.subscriber.client_id}",
        f"                   (secrets: {fc} profile show {profile_option(info, cwd)} "
        "--show-secrets)",
    ]
    if fachverfahren_running:
        lines += [
            f"  Fachverfahren    demo, callback {info.callback_url or '(none: polling)'}",
            "                   accepts valid submissions, rejects invalid ones; stores them in "
            + shown_path(info.paths.fachverfahren_dir, cwd),
        ]
    else:
        lines.append("  Fachverfahren    off (--no-subscriber): receive with the CLI or the SDK")
    for warning in info.warnings:
        lines.append(f"  Note: {warning}")
    lines += ["", "Try it in a second terminal (in this directory):", ""]
    for number, (what, command) in enumerate(example_commands(info, cwd), start=1):
        lines += [f"  {number}. {what}", f"     {command}", ""]
    lines.append(
        "Stop with Ctrl-C. A restart keeps everything; delete the data directory to start afresh."
    )
    lines.append("=" * 78)
    return "\n".join(lines)


__all__ = [
    "DEFAULT_DATA_DIR",
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DEMO_CALLBACK_PATH",
    "LOCAL_PROFILE_PATH",
    "DevInfo",
    "DevOptions",
    "DevPaths",
    "DevSeed",
    "DevStack",
    "DevStackError",
    "FachverfahrenRunner",
    "base_url_for",
    "demo_service",
    "example_commands",
    "shown_path",
    "welcome_text",
]
