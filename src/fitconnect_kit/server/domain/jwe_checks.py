"""Syntax checks of the JWEs a sender hands to the Zustelldienst (it never decrypts them).

Attachments arrive as streamed request bodies and are checked chunk by chunk with
:class:`~fitconnect_kit.protocol.jose.jwe.JweSyntaxChecker` (constant memory); metadata and data
arrive inside the JSON body of the submit request and are checked in one go. Both apply the
same rules: 5 segments, strict base64url, an acceptable protected header (``RSA-OAEP-256`` /
``A256GCM``, ``kid``, nothing that names keys), a 12-byte IV, a 16-byte tag — and a wrapped key
of a 4096-bit recipient key (:data:`~fitconnect_kit.server.compat.MIN_JWE_ENCRYPTED_KEY_BYTES`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fitconnect_kit.protocol.errors import FormatError, JoseError, MalformedJoseError
from fitconnect_kit.protocol.jose.jwe import JweSyntaxChecker, JweSyntaxInfo
from fitconnect_kit.server.compat import MIN_JWE_ENCRYPTED_KEY_BYTES


class InvalidJweError(Exception):
    """A JWE is syntactically unacceptable; the message says why (never the content)."""


class StreamedJwe:
    """Passes a streamed body through while checking it as a compact JWE.

    ``async for chunk in StreamedJwe(body).chunks()`` yields the body unchanged and raises
    :class:`InvalidJweError` as soon as the data is wrong — the final checks run before the
    iterator ends, so a blob store consuming it never completes a blob for an invalid JWE.
    :attr:`info` is set once the stream ended successfully.
    """

    def __init__(self, body: AsyncIterator[bytes]) -> None:
        self._body = body
        self._checker = JweSyntaxChecker()
        self.info: JweSyntaxInfo | None = None

    async def chunks(self) -> AsyncIterator[bytes]:
        async for chunk in self._body:
            if chunk:
                _feed(self._checker, chunk)
                yield chunk
        self.info = _finish(self._checker)


def check_jwe(token: str, what: str) -> JweSyntaxInfo:
    """Check a JWE given as text (``what`` names it in the error, e.g. ``encryptedMetadata``)."""
    checker = JweSyntaxChecker()
    try:
        data = token.encode("ascii")
    except UnicodeEncodeError:
        raise InvalidJweError(f"{what} is not a JWE compact serialization (non-ASCII)") from None
    try:
        _feed(checker, data)
        return _finish(checker)
    except InvalidJweError as exc:
        raise InvalidJweError(f"{what}: {exc}") from None


def _feed(checker: JweSyntaxChecker, chunk: bytes) -> None:
    try:
        checker.feed(chunk)
    except (JoseError, FormatError) as exc:
        raise InvalidJweError(str(exc)) from None


def _finish(checker: JweSyntaxChecker) -> JweSyntaxInfo:
    try:
        info = checker.finish()
        if len(checker.encrypted_key) < MIN_JWE_ENCRYPTED_KEY_BYTES:
            raise MalformedJoseError(
                f"JWE encrypted key has {len(checker.encrypted_key)} bytes; a 4096-bit "
                f"recipient key gives {MIN_JWE_ENCRYPTED_KEY_BYTES}"
            )
    except (JoseError, FormatError) as exc:
        raise InvalidJweError(str(exc)) from None
    return info
