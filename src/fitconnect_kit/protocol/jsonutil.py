"""Compact, exact JSON: what we hash and sign is exactly what we send."""

from __future__ import annotations

import json
from typing import Any

from fitconnect_kit.protocol.errors import FormatError


def dumps_compact(obj: Any) -> bytes:
    """Serialize as compact UTF-8 JSON (no spaces), the form FIT-Connect bodies are sent in."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise FormatError(f"duplicate JSON member {key!r}", field=key)
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise FormatError(f"JSON constant {name} is not allowed")


def loads_strict(data: bytes | str, *, what: str = "JSON") -> Any:
    """Parse JSON strictly: UTF-8 only, no duplicate members, no NaN/Infinity.

    Raises :class:`FormatError` with ``what`` in the message on any problem.
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes | bytearray) else data
        return json.loads(
            text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant
        )
    except FormatError as exc:
        raise FormatError(f"{what} is not acceptable JSON: {exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise FormatError(f"{what} is not valid UTF-8 JSON: {exc}") from exc


def loads_object(data: bytes | str, *, what: str = "JSON") -> dict[str, Any]:
    """Like :func:`loads_strict` but the document must be a JSON object."""
    value = loads_strict(data, what=what)
    if not isinstance(value, dict):
        raise FormatError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value
