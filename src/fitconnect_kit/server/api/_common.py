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

import json
import re
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
from fitconnect_kit.server.compat import PAGE_OFFSET_MAX
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


#: ``\u0000`` as a JSON escape, i.e. preceded by an even number of backslashes.
_JSON_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def _nul_path(value: Any, path: str = "$") -> str | None:
    """The JSON path of the first string (or member name) containing U+0000, if any."""
    if isinstance(value, str):
        return path if "\x00" in value else None
    if isinstance(value, list):
        for index, item in enumerate(value):
            found = _nul_path(item, f"{path}[{index}]")
            if found is not None:
                return found
    if isinstance(value, dict):
        for name, item in value.items():
            found = _nul_path(name, path) or _nul_path(item, f"{path}.{name}")
            if found is not None:
                return found
    return None


async def refuse_nul_characters(request: Request) -> None:
    """U+0000 is never part of a valid id, name, URL or text of this API — and PostgreSQL
    cannot store it. Path and query values with it are 400 ``malformed-request``, JSON bodies
    with it 422 ``invalid-request-body`` (with the JSON path), before anything reaches the
    database. (Form bodies: ``api/token.py``; JOSE bodies fail their own syntax checks.)"""
    for where, values in (
        ("path", request.path_params.items()),
        ("query", request.query_params.multi_items()),
    ):
        for name, value in values:
            if "\x00" in str(value):
                raise ApiError(
                    ApiProblems.MALFORMED_REQUEST,
                    f"{where}.{name}: must not contain NUL characters (U+0000)",
                    violations=[{"path": f"{where}.{name}", "message": "contains U+0000"}],
                )
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        return
    body = await request.body()  # cached: the handler reads the same bytes
    if not _JSON_NUL_ESCAPE.search(body):
        return
    try:
        path = _nul_path(json.loads(body)) or "$"
    except ValueError:
        return  # not JSON at all: the regular validation answers
    raise ApiError(
        ApiProblems.INVALID_REQUEST_BODY,
        f"{path}: must not contain NUL characters (U+0000)",
        violations=[{"path": path, "message": "contains U+0000"}],
    )


class ProblemRoute(APIRoute):
    """Answers request-body validation errors with their specific problem type where one exists,
    and refuses NUL characters in path, query and JSON body (:func:`refuse_nul_characters`)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            await refuse_nul_characters(request)
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


def problems(
    *ptypes: ProblemType, auth: bool = True, params: bool = True, validation: bool = True
) -> dict[int | str, Any]:
    """``responses=`` entries documenting the problem JSON a route answers with.

    ``auth`` adds 401 ``unauthorized``; ``params`` adds 400 ``malformed-request`` (bad path or
    query parameters, unparseable JSON). 422 is documented explicitly (unless ``validation`` is
    false, for routes without parameters or body), so FastAPI does not add its own (untruthful)
    validation-error schema. 429 (rate limit) is always documented: every route is limited.
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
    if 422 not in responses and validation:
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

Offset = Annotated[
    int,
    Query(
        ge=0,
        le=PAGE_OFFSET_MAX,
        description=f"Number of items to skip (at most {PAGE_OFFSET_MAX}).",
    ),
]


def limit_query(default: int, maximum: int) -> Any:
    return Query(ge=1, le=maximum, description=f"Page size (default {default}, at most {maximum}).")
