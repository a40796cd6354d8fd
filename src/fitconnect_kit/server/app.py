"""The Zustelldienst ASGI application.

``create_app(config, clock=...)`` builds the FastAPI app; its lifespan opens the database, runs
the migrations, loads (or creates) the server keys, opens the blob store and starts the
background workers — and undoes all of it on shutdown. For uvicorn:
``uvicorn --factory fitconnect_kit.server.app:create_app_from_env`` (config file from
``FITCONNECT_CONFIG``, overrides from ``FITCONNECT_SERVER_*``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI

from fitconnect_kit import __version__
from fitconnect_kit.protocol.clock import SYSTEM_CLOCK, Clock
from fitconnect_kit.protocol.keys import TrustPolicy
from fitconnect_kit.protocol.problems import ApiProblems
from fitconnect_kit.server.api import routers
from fitconnect_kit.server.compat import SUBMISSION_API_VERSION
from fitconnect_kit.server.config import ConfigError, ServerConfig, load_config_from_env
from fitconnect_kit.server.middleware import (
    BodyLimitMiddleware,
    RateLimitMiddleware,
    RefusalDrainMiddleware,
)
from fitconnect_kit.server.problems import install_problem_handlers
from fitconnect_kit.server.server_keys import PresetServerKeys, ensure_server_keys
from fitconnect_kit.server.state import BodyLimitRule, ZdState
from fitconnect_kit.server.storage.blobs import BlobStore, FileBlobStore, PostgresBlobStore
from fitconnect_kit.server.storage.db import Database
from fitconnect_kit.server.storage.migrate import upgrade_database
from fitconnect_kit.server.workers import Worker, WorkerRegistry, default_workers

logger = logging.getLogger("fitconnect_kit.server")

OPENAPI_TAGS = [
    {"name": "Zustellpunktverwaltung", "description": "Destination management (subscribers)."},
    {"name": "Einreichungsübermittlung", "description": "Sending submissions (senders)."},
    {"name": "Einreichungsempfang", "description": "Receiving submissions (subscribers)."},
    {"name": "Technisch", "description": "Technical endpoints: info, keys, access tokens."},
]

_UUID_SEGMENT = "[^/]+"


def trust_policy_for(config: ServerConfig) -> TrustPolicy:
    """The x5c trust policy for destination keys under ``config.key_policy``."""
    if config.key_policy == "test":
        return TrustPolicy.test_environment()
    try:
        return TrustPolicy.from_pem(list(config.trust_anchors))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load trust_anchors: {exc}") from exc


def default_body_limits(config: ServerConfig) -> list[BodyLimitRule]:
    """Attachment uploads may be as large as one encrypted attachment."""
    attachment = re.compile(
        f"/v1/(submissions|replies)/{_UUID_SEGMENT}/attachments/{_UUID_SEGMENT}"
    )
    return [
        BodyLimitRule(
            "PUT", attachment, config.limits.max_attachment_size, ApiProblems.ATTACHMENT_TOO_LARGE
        )
    ]


def make_blob_store(config: ServerConfig, database: Database) -> BlobStore:
    if config.blob_store == "postgres":
        return PostgresBlobStore(database)
    return FileBlobStore(config.blob_dir)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    zd: ZdState = app.state.zd
    config = zd.config
    database = Database(config.database_url)
    try:
        await upgrade_database(database.engine)
        zd._database = database
        if zd._blobs is None:
            zd._blobs = make_blob_store(config, database)
        zd._keys = await ensure_server_keys(database, zd.clock, preset=zd.preset_keys)
        if config.workers.enabled:
            zd.workers.start(zd)
        logger.info(
            "Zustelldienst %s ready (database %s, blobs %s, key policy %s, workers %s)",
            config.base_url,
            config.redacted_database_url(),
            config.blob_store,
            config.key_policy,
            "on" if config.workers.enabled else "off",
        )
        yield
    finally:
        await zd.workers.stop(grace=config.workers.shutdown_grace)
        await database.dispose()
        zd._database = None
        zd._keys = None


def _truthful_openapi(app: FastAPI) -> None:
    """Operations without a request body cannot answer 422 ``invalid-request-body`` (bad path
    and query parameters are 400 ``malformed-request``): drop that entry from their responses.
    (``api._common.problems`` documents it everywhere so that FastAPI does not add its own.)"""
    generate = app.openapi
    invalid_body = f"Problem: {ApiProblems.INVALID_REQUEST_BODY.name}"

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    responses = operation.get("responses", {})
                    unprocessable = responses.get("422", {})
                    if "requestBody" not in operation and (
                        unprocessable.get("description") == invalid_body
                    ):
                        del responses["422"]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_routes(app: FastAPI, router: APIRouter) -> None:
    """Put the routes of ``router`` into the app's own route table.

    ``app.include_router`` keeps a router as a nested branch that FastAPI walks twice per request
    (matching, then handling) — about a quarter of the framework's CPU per request. Our routers
    have no prefix, dependencies or lifespan of their own (what they set is on each route
    already), so their routes work the same in the app's table, and the OpenAPI document is the
    same. Unlike included routes, they do not consult ``app.dependency_overrides``.
    """
    if router.prefix or router.dependencies or router.on_startup or router.on_shutdown:
        raise ValueError("_add_routes is for plain routers; use app.include_router")
    app.router.routes.extend(router.routes)


def create_app(
    config: ServerConfig | None = None,
    *,
    clock: Clock = SYSTEM_CLOCK,
    workers: Iterable[Worker] | None = None,
    server_keys: PresetServerKeys | None = None,
    blob_store: BlobStore | None = None,
) -> FastAPI:
    """Build the Zustelldienst app.

    ``workers`` replaces :func:`default_workers` (tests pass their own or ``[]``);
    ``server_keys`` are used instead of generating keys when the database has none yet;
    ``blob_store`` replaces the configured one.
    """
    config = config or ServerConfig()
    major, minor, patch = SUBMISSION_API_VERSION
    app = FastAPI(
        title="FIT-Connect Submission API (fitconnect-kit Zustelldienst)",
        version=f"{major}.{minor}.{patch}",
        description=(
            f"Zustelldienst of fitconnect-kit {__version__}: FIT-Connect Submission API v1 "
            "and an OAuth 2.0 client-credentials token endpoint."
        ),
        openapi_tags=OPENAPI_TAGS,
        servers=[{"url": config.base_url}],
        docs_url="/docs",
        redoc_url=None,
        lifespan=_lifespan,
    )
    app.state.zd = ZdState(
        config=config,
        clock=clock,
        trust_policy=trust_policy_for(config),
        workers=WorkerRegistry(default_workers() if workers is None else workers),
        body_limits=default_body_limits(config),
        preset_keys=server_keys,
        _blobs=blob_store,
    )
    install_problem_handlers(app)
    # Added last = outermost: the rate limit applies (and adds headers) before body checks;
    # refusals of every layer inside reach clients that are still sending their body.
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(RateLimitMiddleware, config=config.rate_limit)
    app.add_middleware(RefusalDrainMiddleware)
    for router in routers():
        _add_routes(app, router)
    _truthful_openapi(app)
    return app


def create_app_from_env() -> FastAPI:
    """uvicorn factory: configuration from ``FITCONNECT_CONFIG`` and ``FITCONNECT_SERVER_*``."""
    return create_app(load_config_from_env())
