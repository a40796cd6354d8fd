"""RFC 7807 problem responses for every error of the Zustelldienst.

Raise :class:`ApiError` with a problem type from :class:`~fitconnect_kit.protocol.problems.
ApiProblems` anywhere in a handler or dependency; :func:`install_problem_handlers` turns it — and
FastAPI's own errors (validation, unknown route, wrong method) and unexpected exceptions — into
``application/problem+json`` with ``type``, ``title``, ``status``, ``detail`` and ``instance``
(the request path). 500 responses never contain exception details.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from fitconnect_kit.protocol.problems import (
    PROBLEM_JSON_MEDIA_TYPE,
    ApiProblems,
    ProblemType,
    api_problem,
)

_BY_STATUS: dict[int, ProblemType] = {
    400: ApiProblems.MALFORMED_REQUEST,
    401: ApiProblems.UNAUTHORIZED,
    403: ApiProblems.FORBIDDEN,
    404: ApiProblems.NOT_FOUND,
    405: ApiProblems.METHOD_NOT_ALLOWED,
    413: ApiProblems.PAYLOAD_TOO_LARGE,
    415: ApiProblems.UNSUPPORTED_MEDIA_TYPE,
    422: ApiProblems.INVALID_REQUEST_BODY,
    429: ApiProblems.TOO_MANY_REQUESTS,
    500: ApiProblems.INTERNAL_SERVER_ERROR,
    503: ApiProblems.SERVICE_UNAVAILABLE,
}


class PayloadTooLarge(HTTPException):
    """Raised from the request body stream when a body exceeds its limit (→ 413 problem).

    An :class:`fastapi.HTTPException` on purpose: FastAPI turns any other exception raised while
    reading a body into a generic 400.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body exceeds the limit of {limit} bytes")
        self.limit = limit


class ApiError(Exception):
    """An error answered with a problem JSON response.

    ``extra`` members are added to the problem object (RFC 7807 extensions); ``headers`` are sent
    with the response (e.g. ``WWW-Authenticate``, ``Retry-After``, ``Allow``).
    """

    def __init__(
        self,
        ptype: ProblemType,
        detail: str | None = None,
        *,
        instance: str | None = None,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or ptype.title)
        self.ptype = ptype
        self.detail = detail
        self.instance = instance
        self.headers = dict(headers or {})
        self.extra = extra

    @property
    def status(self) -> int:
        return self.ptype.status


def problem_type_for_status(status: int) -> ProblemType:
    """The technical problem type of an HTTP status (500's for unknown 5xx, 400's for 4xx)."""
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if status >= 500:
        return ProblemType("internal-server-error", status, "Internal Server Error", "U")
    return ProblemType("malformed-request", status, "Malformed request", "U")


def problem_body(
    ptype: ProblemType, detail: str | None, instance: str | None, **extra: Any
) -> bytes:
    return api_problem(ptype, detail, instance, **extra).to_bytes()


def problem_response(
    ptype: ProblemType,
    detail: str | None = None,
    *,
    instance: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> Response:
    return Response(
        content=problem_body(ptype, detail, instance, **extra),
        status_code=ptype.status,
        media_type=PROBLEM_JSON_MEDIA_TYPE,
        headers=dict(headers or {}),
    )


def _location(loc: Sequence[Any]) -> str:
    """``("body", "destinationId")`` → ``$.destinationId``; ``("path", "x")`` → ``path.x``."""
    if not loc:
        return "$"
    where, *rest = loc
    if where == "body":
        path = "$"
        for part in rest:
            path += f"[{part}]" if isinstance(part, int) else f".{part}"
        return path
    return ".".join(str(p) for p in loc)


def _violations(exc: RequestValidationError) -> list[dict[str, str]]:
    # Only location and message: inputs are never echoed (they may hold secrets).
    return [
        {"path": _location(e.get("loc", ())), "message": str(e.get("msg", ""))}
        for e in exc.errors()
    ]


def _is_malformed(exc: RequestValidationError) -> bool:
    """Unparseable JSON, bad path ids and bad query parameters are 400, not 422."""
    for error in exc.errors():
        loc = error.get("loc", ())
        if error.get("type") == "json_invalid":
            return True
        if loc and loc[0] in ("path", "query", "header", "cookie"):
            return True
    return False


async def _api_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return problem_response(
        exc.ptype,
        exc.detail,
        instance=exc.instance or request.url.path,
        headers=exc.headers,
        **exc.extra,
    )


def _declares_json(request: Request) -> bool:
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return not media_type or media_type == "application/json" or media_type.endswith("+json")


async def _validation_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    body_errors = [e for e in exc.errors() if e.get("loc", ())[:1] == ("body",)]
    if body_errors and not _declares_json(request):
        # FastAPI validates a non-JSON body as raw bytes; the real problem is the media type.
        return problem_response(
            ApiProblems.UNSUPPORTED_MEDIA_TYPE,
            "content type must be application/json",
            instance=request.url.path,
        )
    violations = _violations(exc)
    first = violations[0] if violations else {"path": "$", "message": "invalid"}
    if _is_malformed(exc):
        ptype = ApiProblems.MALFORMED_REQUEST
    else:
        ptype = ApiProblems.INVALID_REQUEST_BODY
    more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
    return problem_response(
        ptype,
        f"{first['path']}: {first['message']}{more}",
        instance=request.url.path,
        violations=violations,
    )


async def _http_exception_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    ptype = problem_type_for_status(exc.status_code)
    detail: str | None = exc.detail if isinstance(exc.detail, str) else None
    if detail in ("Not Found", "Method Not Allowed"):
        detail = None  # Starlette's defaults add nothing to the title
    if ptype is ApiProblems.NOT_FOUND and detail is None:
        detail = f"no resource at {request.url.path}"
    if ptype is ApiProblems.METHOD_NOT_ALLOWED and detail is None:
        detail = f"{request.method} is not allowed on {request.url.path}"
    return problem_response(
        ptype, detail, instance=request.url.path, headers=dict(exc.headers or {})
    )


async def _unexpected_handler(request: Request, exc: Exception) -> Response:
    # Starlette re-raises the exception after this response, so the server logs the traceback;
    # logging it here as well would duplicate it.
    return problem_response(
        ApiProblems.INTERNAL_SERVER_ERROR,
        "an unexpected error occurred; it has been logged",
        instance=request.url.path,
    )


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_exception_handler)
    app.add_exception_handler(Exception, _unexpected_handler)


def require_media_type(request: Request, *allowed: str) -> str:
    """The request's media type if it is one of ``allowed``; 415 problem otherwise.

    Parameters such as ``charset`` are ignored for the comparison.
    """
    raw = request.headers.get("content-type", "")
    media_type = raw.split(";", 1)[0].strip().lower()
    if media_type not in allowed:
        expected = " or ".join(allowed)
        shown = media_type or "none"
        raise ApiError(
            ApiProblems.UNSUPPORTED_MEDIA_TYPE,
            f"content type must be {expected}, got {shown}",
        )
    return media_type


def media_type_dependency(*allowed: str) -> Any:
    """A FastAPI dependency enforcing the request content type (415 otherwise).

    ``@router.put(..., dependencies=[Depends(media_type_dependency("application/jose"))])``
    """

    async def check(request: Request) -> str:
        return require_media_type(request, *allowed)

    return check
