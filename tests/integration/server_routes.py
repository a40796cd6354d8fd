"""A router of test-only endpoints exercising the server foundation (auth, errors, bodies)."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from fitconnect_kit.server.auth import CurrentPrincipal, SenderPrincipal, SubscriberPrincipal
from fitconnect_kit.server.problems import media_type_dependency

router = APIRouter(prefix="/test")


class Body(BaseModel):
    destinationId: uuid.UUID
    count: int


@router.get("/whoami")
async def whoami(principal: CurrentPrincipal) -> dict[str, Any]:
    return {
        "clientId": principal.client_id,
        "kind": principal.kind.value,
        "scopes": sorted(principal.scopes),
        "regions": list(principal.region_scopes),
        "linked": sorted(principal.linked_destination_ids),
        "managed": sorted(principal.managed_destination_ids),
    }


@router.get("/sender-only")
async def sender_only(principal: SenderPrincipal) -> dict[str, str]:
    return {"clientId": principal.client_id}


@router.get("/subscriber-only")
async def subscriber_only(principal: SubscriberPrincipal) -> dict[str, str]:
    return {"clientId": principal.client_id}


@router.get("/items/{item_id}")
async def item(item_id: uuid.UUID) -> dict[str, str]:
    return {"id": str(item_id)}


@router.post("/body")
async def body(payload: Body) -> dict[str, Any]:
    return {"count": payload.count}


@router.put("/jose", dependencies=[Depends(media_type_dependency("application/jose"))])
async def jose(request: Request) -> dict[str, int]:
    return {"size": len(await request.body())}


@router.put("/stream")
async def stream(request: Request) -> dict[str, int]:
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
    return {"size": size}


@router.get("/boom")
async def boom() -> None:
    raise RuntimeError("secret internal detail")
