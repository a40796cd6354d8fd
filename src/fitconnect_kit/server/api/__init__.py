"""HTTP routers of the Zustelldienst, one module per area, each with a module-level ``router``.

Add a module name to :data:`ROUTER_MODULES` to include its router in the app.
"""

from __future__ import annotations

import importlib

from fastapi import APIRouter

#: Router modules in the order their paths appear in the OpenAPI document.
ROUTER_MODULES: tuple[str, ...] = (
    "destinations",
    "submissions",
    "events",
    "token",
    "info",
)


def routers() -> list[APIRouter]:
    result = []
    for name in ROUTER_MODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        router = module.router
        assert isinstance(router, APIRouter)
        result.append(router)
    return result
