"""Strict, fast base64url (RFC 4648 §5, no padding) as JOSE uses it, on top of ``pybase64``."""

from __future__ import annotations

import binascii
import re

import pybase64

from fitconnect_kit.protocol.errors import MalformedJoseError

_B64URL_RE = re.compile(rb"^[A-Za-z0-9_-]*$")


def b64url_encode(data: bytes) -> str:
    """Encode bytes as unpadded base64url text."""
    return pybase64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_encode_bytes(data: bytes) -> bytes:
    """Like :func:`b64url_encode` but returns ASCII bytes (for streaming writers)."""
    return pybase64.urlsafe_b64encode(data).rstrip(b"=")


def b64url_decode(text: str | bytes, *, what: str = "value") -> bytes:
    """Decode unpadded base64url; raise :class:`MalformedJoseError` naming ``what`` when invalid.

    Padding characters, standard-alphabet characters (``+``/``/``), whitespace and impossible
    lengths are all refused: JOSE compact serializations never contain them.
    """
    try:
        raw = text.encode("ascii") if isinstance(text, str) else bytes(text)
    except UnicodeEncodeError as exc:
        raise MalformedJoseError(f"{what} is not unpadded base64url") from exc
    if not _B64URL_RE.match(raw):
        raise MalformedJoseError(f"{what} is not unpadded base64url")
    if len(raw) % 4 == 1:
        raise MalformedJoseError(f"{what} has an impossible base64url length ({len(raw)})")
    padded = raw + b"=" * (-len(raw) % 4)
    try:
        return pybase64.urlsafe_b64decode(padded)
    except (binascii.Error, ValueError) as exc:
        raise MalformedJoseError(f"{what} is not valid base64url") from exc


def b64url_decoded_length(encoded_length: int) -> int:
    """Number of bytes that ``encoded_length`` unpadded base64url characters decode to."""
    full, rest = divmod(encoded_length, 4)
    return full * 3 + {0: 0, 2: 1, 3: 2}.get(rest, 0)


def b64url_encoded_length(byte_length: int) -> int:
    """Number of unpadded base64url characters that encode ``byte_length`` bytes."""
    full, rest = divmod(byte_length, 3)
    return full * 4 + {0: 0, 1: 2, 2: 3}[rest]
