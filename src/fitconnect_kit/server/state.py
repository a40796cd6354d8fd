"""``app.state.zd``: everything a handler or worker of the Zustelldienst needs.

Handlers get it with the :data:`ZD` dependency (``zd: ZD``), workers receive it as their argument.
The database, blob store and keys exist once the app's lifespan has started; touching them before
raises a clear :class:`RuntimeError`.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fitconnect_kit.protocol.clock import Clock
from fitconnect_kit.protocol.keys import TrustPolicy
from fitconnect_kit.protocol.problems import ApiProblems, ProblemType
from fitconnect_kit.server.config import ServerConfig
from fitconnect_kit.server.server_keys import PresetServerKeys, ServerKeys
from fitconnect_kit.server.storage.blobs import BlobStore
from fitconnect_kit.server.storage.db import Database
from fitconnect_kit.server.workers import WorkerRegistry


@dataclass(frozen=True)
class BodyLimitRule:
    """Requests whose method and path match get ``limit`` instead of the default body limit."""

    method: str
    path_pattern: re.Pattern[str]
    limit: int
    #: The 413 problem for bodies over this limit (e.g. ``attachment-too-large``).
    problem: ProblemType = ApiProblems.PAYLOAD_TOO_LARGE

    def matches(self, method: str, path: str) -> bool:
        return method == self.method and self.path_pattern.fullmatch(path) is not None


def _node_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


@dataclass
class ZdState:
    config: ServerConfig
    clock: Clock
    trust_policy: TrustPolicy
    workers: WorkerRegistry
    #: Per-route body limits (attachment uploads); others get ``limits.max_json_body_size``.
    body_limits: list[BodyLimitRule] = field(default_factory=list)
    preset_keys: PresetServerKeys | None = None
    #: Identifies this process, e.g. in ``callback_deliveries.locked_by``.
    node_id: str = field(default_factory=_node_id)
    _database: Database | None = None
    _blobs: BlobStore | None = None
    _keys: ServerKeys | None = None

    @property
    def database(self) -> Database:
        if self._database is None:
            raise RuntimeError("the database is opened when the app starts (lifespan)")
        return self._database

    @property
    def sessions(self) -> async_sessionmaker[AsyncSession]:
        """``async with zd.sessions() as session, session.begin(): ...``"""
        return self.database.sessions

    @property
    def blobs(self) -> BlobStore:
        if self._blobs is None:
            raise RuntimeError("the blob store is opened when the app starts (lifespan)")
        return self._blobs

    @property
    def keys(self) -> ServerKeys:
        if self._keys is None:
            raise RuntimeError("server keys are loaded when the app starts (lifespan)")
        return self._keys

    def body_limit_for(self, method: str, path: str) -> int:
        return self.body_limit_rule_for(method, path)[0]

    def body_limit_rule_for(self, method: str, path: str) -> tuple[int, ProblemType]:
        """The body limit of a request and the 413 problem type for bodies over it."""
        for rule in self.body_limits:
            if rule.matches(method, path):
                return rule.limit, rule.problem
        return self.config.limits.max_json_body_size, ApiProblems.PAYLOAD_TOO_LARGE


def get_zd(request: Request) -> ZdState:
    state: ZdState = request.app.state.zd
    return state


async def zd_dependency(request: Request) -> ZdState:
    """:func:`get_zd` as a FastAPI dependency — ``async`` because FastAPI runs a plain ``def``
    dependency in a worker thread, a thread hand-off on every request."""
    return get_zd(request)


async def db_session(request: Request) -> AsyncIterator[AsyncSession]:
    """A session per request; handlers commit explicitly (``await session.commit()``)."""
    async with get_zd(request).sessions() as session:
        yield session


ZD = Annotated[ZdState, Depends(zd_dependency)]
DbSession = Annotated[AsyncSession, Depends(db_session)]
