"""Shared pieces of the Submission API routers: problem documentation, specific validation
problems, paging parameters, the ``application/jose`` request bodies.

* :class:`ProblemRoute` — the route class of the API routers: request-body validation errors
  whose pydantic error type has a specific problem (``duplicate_attachment_ids`` →
  ``duplicate-attachment-ids``, ``callback_url`` → ``invalid-callback``, ``status_not_allowed``
  → ``destination-state-invalid``) are answered with that problem; everything else keeps the
  generic handling (``server/problems.py``).
* :func:`problems` — OpenAPI ``responses`` entries for problem JSON (``application/problem+json``
  with the problem schema and the problem type names per status), so the document tells the
  truth about every error a route answers with.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable
from typing import Annotated, Any

from fastapi import Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from fitconnect_kit.protocol.api import (
    ERROR_CALLBACK_URL,
    ERROR_DUPLICATE_ATTACHMENT_IDS,
    ERROR_STATUS_NOT_ALLOWED,
)
from fitconnect_kit.protocol.problems import PROBLEM_JSON_MEDIA_TYPE, ApiProblems, ProblemType
from fitconnect_kit.server.problems import ApiError

JOSE_MEDIA_TYPE = "application/jose"

#: Pydantic error types (``protocol.api``) answered with a specific problem type.
SPECIFIC_VALIDATION_PROBLEMS: dict[str, ProblemType] = {
    ERROR_DUPLICATE_ATTACHMENT_IDS: ApiProblems.DUPLICATE_ATTACHMENT_IDS,
    ERROR_CALLBACK_URL: ApiProblems.INVALID_CALLBACK,
    ERROR_STATUS_NOT_ALLOWED: ApiProblems.DESTINATION_STATE_INVALID,
}


def _path(loc: Iterable[Any]) -> str:
    parts = list(loc)[1:]  # drop "body"
    path = "$"
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def specific_problem(exc: RequestValidationError) -> ApiError | None:
    """An :class:`ApiError` when every body error of ``exc`` maps to the same specific problem."""
    errors = exc.errors()
    if not errors or any(tuple(e.get("loc", ()))[:1] != ("body",) for e in errors):
        return None
    types = {SPECIFIC_VALIDATION_PROBLEMS.get(str(e.get("type"))) for e in errors}
    if len(types) != 1:
        return None
    (ptype,) = types
    if ptype is None:
        return None
    violations = [{"path": _path(e.get("loc", ())), "message": str(e.get("msg"))} for e in errors]
    first = violations[0]
    return ApiError(ptype, f"{first['path']}: {first['message']}", violations=violations)


class ProblemRoute(APIRoute):
    """Answers request-body validation errors with their specific problem type where one exists."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                mapped = specific_problem(exc)
                if mapped is not None:
                    raise mapped from None
                raise

        return route_handler


# --- OpenAPI documentation of problems ----------------------------------------------------------

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 7807 problem details",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "violations": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["path", "message"],
                "properties": {"path": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
    "additionalProperties": True,
}

#: Problems that any route may answer with (authentication and rate limiting).
_COMMON: dict[int, list[str]] = {
    429: [ApiProblems.TOO_MANY_REQUESTS.name],
}


def problems(*ptypes: ProblemType, auth: bool = True, params: bool = True) -> dict[int | str, Any]:
    """``responses=`` entries documenting the problem JSON a route answers with.

    ``auth`` adds 401 ``unauthorized``; ``params`` adds 400 ``malformed-request`` (bad path or
    query parameters, unparseable JSON). 422 is always documented explicitly, so FastAPI does not
    add its own (untruthful) validation-error schema.
    """
    by_status: dict[int, list[str]] = {k: list(v) for k, v in _COMMON.items()}
    if auth:
        by_status.setdefault(401, []).append(ApiProblems.UNAUTHORIZED.name)
    if params:
        by_status.setdefault(400, []).append(ApiProblems.MALFORMED_REQUEST.name)
    for ptype in ptypes:
        names = by_status.setdefault(ptype.status, [])
        if ptype.name not in names:
            names.append(ptype.name)
    responses: dict[int | str, Any] = {}
    for status in sorted(by_status):
        names = by_status[status]
        responses[status] = {
            "description": "Problem: " + ", ".join(names),
            "content": {PROBLEM_JSON_MEDIA_TYPE: {"schema": PROBLEM_SCHEMA}},
        }
    if 422 not in responses:
        responses[422] = {
            "description": f"Problem: {ApiProblems.INVALID_REQUEST_BODY.name}",
            "content": {PROBLEM_JSON_MEDIA_TYPE: {"schema": PROBLEM_SCHEMA}},
        }
    return responses


def jose_request_body(description: str) -> dict[str, Any]:
    """``openapi_extra`` for a route whose body is a compact JWE/JWS (read by the handler)."""
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {JOSE_MEDIA_TYPE: {"schema": {"type": "string"}}},
        }
    }


def location_header(description: str) -> dict[str, Any]:
    return {"Location": {"description": description, "schema": {"type": "string"}}}


# --- paging ---------------------------------------------------------------------------------------

Offset = Annotated[int, Query(ge=0, description="Number of items to skip.")]


def limit_query(default: int, maximum: int) -> Any:
    return Query(ge=1, le=maximum, description=f"Page size (default {default}, at most {maximum}).")
