"""Constant-memory streaming JWE (``RSA-OAEP-256`` + ``A256GCM``) for large attachments.

The output of the streaming encryptor is byte-identical to :func:`.jwe.encrypt` for the same
CEK, IV and wrapped key: both take header, key wrapping and IV from the same
:func:`.jwe._prepare`, and the decryptor runs the same incremental parser as
:class:`.jwe.JweSyntaxChecker`, so the same rules and errors apply.

The pipeline per chunk (default 1 MiB): read into a reused buffer, SHA-512 of the plaintext in a
worker thread (hashlib releases the GIL; SHA-512 is the slowest step, so it overlaps with
everything else), AES-GCM, base64url cut at multiples of 3 bytes (encoding) or 4 characters
(decoding), write. Memory stays at a few chunks whatever the size.

Import these names from :mod:`fitconnect_kit.protocol.jose.jwe`, which re-exports them.
"""

from __future__ import annotations

import hashlib
import os
import queue
import tempfile
import threading
import zlib
from collections import deque
from collections.abc import Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Final, TypeAlias

import pybase64
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import (
    AEADDecryptionContext,
    Cipher,
    algorithms,
    modes,
)

from fitconnect_kit.protocol.b64 import b64url_encode
from fitconnect_kit.protocol.errors import DecryptionError
from fitconnect_kit.protocol.jose.jwe import (
    _DECRYPTION_FAILED,
    MIN_RSA_BITS,
    ZIP_DEF,
    PlaintextLengthError,
    PlaintextTooLargeError,
    PrivateKeySource,
    PublicKeySource,
    _CompactParser,
    _Encryption,
    _prepare,
    _select_private_key,
    _unwrap_cek,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_MAX_INFLATED_SIZE",
    "EncryptingIterator",
    "StreamDecryptResult",
    "StreamResult",
    "StreamSource",
    "decrypt_stream",
    "decrypt_to_path",
    "encrypt_stream",
    "iter_encrypt",
]

StreamSource: TypeAlias = BinaryIO | Iterable[bytes] | bytes | bytearray | memoryview
"""A binary file object (``readinto``/``read``), an iterable of byte chunks, or bytes."""

DEFAULT_CHUNK_SIZE: Final = 1 << 20
DEFAULT_MAX_INFLATED_SIZE: Final = 2 * 1024 * 1024 * 1024
"""Bound on ``zip: DEF`` output when :func:`decrypt_stream` gets ``max_plaintext_size=None``
(FIT-Connect's limit on all attachments of a submission together)."""

_GCM_MAX_PLAINTEXT: Final = (1 << 36) - 32  # NIST SP 800-38D: at most 2^39 - 256 bits per IV
_PIPELINE_DEPTH: Final = 4  # chunks in flight between reader, hash worker and writer
_PARALLEL_THRESHOLD: Final = 1 << 20  # hash inline until this much; threads cost more for less
_BAD_DEFLATE: Final = "JWE content (zip DEF) is not valid raw DEFLATE data"


# --- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamResult:
    """What a streaming encryption produced (besides the token bytes themselves)."""

    authentication_tag: str
    plaintext_sha512: str  # lowercase hex
    plaintext_length: int
    token_length: int


@dataclass(frozen=True)
class StreamDecryptResult:
    """What a streaming decryption learned; the plaintext went to the sink."""

    header: dict[str, Any]
    authentication_tag: str
    plaintext_sha512: str  # lowercase hex of the (decompressed) plaintext
    plaintext_length: int


# --- plumbing -----------------------------------------------------------------------------------


class _Sha512:
    """SHA-512 whose updates run, in order, on one worker thread once the input is large.

    hashlib releases the GIL for updates above 2 KiB, so on two cores hashing (the slowest step
    at ~800 MB/s) overlaps with AES-GCM, base64 and I/O. Small inputs are hashed inline.
    """

    def __init__(self, max_pending: int = _PIPELINE_DEPTH - 1) -> None:
        self._sha = hashlib.sha512()
        self._executor: ThreadPoolExecutor | None = None
        self._inline = 0
        self._pending: deque[Future[None]] = deque()
        self._max_pending = max_pending

    def update(self, data: bytes | memoryview) -> Future[None] | None:
        """Hash ``data``; the caller must not change it before the returned future is done."""
        if self._executor is None:
            if self._inline + len(data) <= _PARALLEL_THRESHOLD:
                self._inline += len(data)
                self._sha.update(data)
                return None
            self._executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="fitconnect-sha512"
            )
        future = self._executor.submit(self._sha.update, data)
        self._pending.append(future)
        while len(self._pending) > self._max_pending:  # bounds memory held by queued chunks
            self._pending.popleft().result()
        return future

    def hexdigest(self) -> str:
        """Wait for all updates and return the lowercase hex digest."""
        while self._pending:
            self._pending.popleft().result()
        self.close()
        return self._sha.hexdigest()

    def close(self) -> None:
        """Stop the worker thread (waits for queued updates)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._pending.clear()


class _Source:
    """Uniform reading from a binary file object, an iterable of chunks, or bytes."""

    def __init__(self, source: StreamSource) -> None:
        self._readinto: Any = None
        self._read: Any = None
        self._pieces: Iterator[Any] | None = None
        self._pending = memoryview(b"")
        untyped: object = source
        if isinstance(source, bytes | bytearray | memoryview):
            self._pieces = iter((source,))
        elif isinstance(untyped, str):
            raise TypeError("a JWE stream source must be binary, not str")
        elif callable(getattr(source, "readinto", None)):
            self._readinto = getattr(source, "readinto")  # noqa: B009 - duck-typed file
        elif callable(getattr(source, "read", None)):
            self._read = getattr(source, "read")  # noqa: B009 - duck-typed file
        else:
            self._pieces = iter(source)

    def _next_raw(self, wanted: int) -> bytes | bytearray | None:
        """The next non-empty piece, or ``None`` at the end."""
        while True:
            if self._read is not None:
                data = self._read(wanted)
                if data is None:
                    raise BlockingIOError("non-blocking JWE stream sources are not supported")
            else:
                assert self._pieces is not None
                data = next(self._pieces, None)
                if data is None:
                    return None
            if isinstance(data, memoryview):
                data = data.tobytes()
            if not isinstance(data, bytes | bytearray):
                raise TypeError(f"a JWE stream source must yield bytes, got {type(data).__name__}")
            if data or self._read is not None:
                return data or None  # empty read() = end of file; empty pieces are skipped

    def fill(self, view: memoryview) -> int:
        """Fill ``view`` completely unless the source ends first; return the byte count."""
        size = len(view)
        filled = 0
        while filled < size:
            if self._readinto is not None:
                count = self._readinto(view[filled:])
                if count is None:
                    raise BlockingIOError("non-blocking JWE stream sources are not supported")
                if not count:
                    break
                filled += count
                continue
            if not self._pending:
                raw = self._next_raw(size - filled)
                if raw is None:
                    break
                self._pending = memoryview(raw)
            take = min(len(self._pending), size - filled)
            view[filled : filled + take] = self._pending[:take]
            self._pending = self._pending[take:]
            filled += take
        return filled

    def pieces(self, chunk_size: int) -> Iterator[tuple[bytes | bytearray, int, int]]:
        """``(buffer, start, end)`` pieces of at most ``chunk_size`` bytes, valid until next."""
        if self._readinto is not None:
            buffer = bytearray(chunk_size)
            view = memoryview(buffer)
            while True:
                count = self._readinto(view)
                if count is None:
                    raise BlockingIOError("non-blocking JWE stream sources are not supported")
                if not count:
                    return
                yield buffer, 0, count
        while (raw := self._next_raw(chunk_size)) is not None:
            for start in range(0, len(raw), chunk_size):
                yield raw, start, min(len(raw), start + chunk_size)


def _source_length(source: StreamSource) -> int | None:
    """Remaining length of a bytes object or seekable file, else ``None``."""
    if isinstance(source, bytes | bytearray):
        return len(source)
    if isinstance(source, memoryview):
        return source.nbytes
    file: Any = source  # duck-typed: anything seekable
    try:
        if callable(getattr(file, "seekable", None)) and file.seekable():
            position = file.tell()
            end = file.seek(0, os.SEEK_END)
            file.seek(position)
            return max(0, int(end) - int(position))
    except (OSError, ValueError):
        return None
    return None


def _write_all(sink: BinaryIO, data: bytes | memoryview) -> None:
    """Write everything (raw, unbuffered files may accept only part of a write)."""
    written = sink.write(data)
    if written is None or written >= len(data):
        return
    view = memoryview(data)[written:]
    while view:
        count = sink.write(view)
        if not count:
            raise OSError("the output stream accepted no more data")
        view = view[count:]


class _Writer:
    """Writes to a sink from a worker thread once the output is large.

    Page-cache writes cost as much CPU as SHA-512 on some machines; ``write`` releases the GIL,
    so a writer thread lets them overlap with hashing and AES-GCM. The queue is bounded, so a
    slow sink slows the producer down instead of filling memory. Written objects must not be
    changed afterwards (we only pass fresh ``bytes``).
    """

    def __init__(self, sink: BinaryIO) -> None:
        self._sink = sink
        self._inline = 0
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=_PIPELINE_DEPTH)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def write(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        if self._thread is None:
            if self._inline + len(data) <= _PARALLEL_THRESHOLD:
                self._inline += len(data)
                _write_all(self._sink, data)
                return
            self._thread = threading.Thread(
                target=self._run, name="fitconnect-jwe-writer", daemon=True
            )
            self._thread.start()
        self._queue.put(data)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:  # after a failure keep draining, so producers never block
                try:
                    _write_all(self._sink, item)
                except BaseException as exc:
                    self._error = exc

    def _stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        """Wait until everything is written; raise the writer's error if there was one."""
        self._stop()
        if self._error is not None:
            raise self._error

    def abort(self) -> None:
        """Stop the thread after a failure elsewhere (queued data is still written)."""
        self._stop()


def _normalize_chunk_size(chunk_size: int, multiple: int) -> int:
    if chunk_size < multiple:
        raise ValueError(f"chunk_size must be at least {multiple}")
    return chunk_size - chunk_size % multiple


# --- encryption ---------------------------------------------------------------------------------


class EncryptingIterator(Iterator[bytes]):
    """Iterates over the bytes of a compact JWE while encrypting a source, in constant memory.

    Use it as an upload body. :attr:`length` is the exact token length when the plaintext length
    was known up front (bytes, a seekable file, or ``plaintext_length=``); then the source must
    deliver exactly that many bytes (:class:`PlaintextLengthError` otherwise, raised before a
    wrong body completes). :attr:`result` is available once the iterator is exhausted.
    """

    def __init__(
        self,
        source: StreamSource,
        prepared: _Encryption,
        *,
        chunk_size: int,
        plaintext_length: int | None,
    ) -> None:
        self._result: StreamResult | None = None
        self._length = None if plaintext_length is None else prepared.token_length(plaintext_length)
        self._generator = self._run(
            _Source(source), prepared, _normalize_chunk_size(chunk_size, 3), plaintext_length
        )

    @property
    def length(self) -> int | None:
        """Exact length of the compact serialization, if known before encrypting."""
        return self._length

    @property
    def result(self) -> StreamResult:
        """Tag, plaintext hash and lengths; only after the iterator is exhausted."""
        if self._result is None:
            raise RuntimeError("the JWE is not complete yet; exhaust the iterator first")
        return self._result

    def __iter__(self) -> EncryptingIterator:
        return self

    def __next__(self) -> bytes:
        return next(self._generator)

    def close(self) -> None:
        """Stop early and release the worker thread."""
        self._generator.close()

    def __enter__(self) -> EncryptingIterator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _run(
        self, source: _Source, prepared: _Encryption, chunk_size: int, expected: int | None
    ) -> Generator[bytes, None, None]:
        yield prepared.prefix
        encryptor = prepared.cipher()
        sha = _Sha512()
        # A small ring of input buffers: a buffer is refilled only after its hash is done.
        slots: list[memoryview] = []
        hashing: list[Future[None] | None] = []
        output: memoryview | None = None
        total = 0
        index = 0
        try:
            while True:
                slot = index % _PIPELINE_DEPTH
                if slot == len(slots):
                    slots.append(memoryview(bytearray(chunk_size)))
                    hashing.append(None)
                pending = hashing[slot]
                if pending is not None:
                    pending.result()
                count = source.fill(slots[slot])
                total += count
                if expected is not None and total > expected:
                    raise PlaintextLengthError(
                        f"the plaintext source delivered more than the announced {expected} bytes"
                    )
                if total > _GCM_MAX_PLAINTEXT:
                    raise PlaintextLengthError("plaintext too large for A256GCM (max 64 GiB)")
                if count:
                    data = slots[slot][:count]
                    hashing[slot] = sha.update(data)
                    if output is None:  # the first chunk is the largest one
                        output = memoryview(bytearray(count))
                    encryptor.update_into(data, output)
                    encoded = pybase64.urlsafe_b64encode(output[:count])
                    # Full chunks are multiples of 3 bytes: only the last one can need padding.
                    yield encoded.rstrip(b"=") if count % 3 else encoded
                if count < chunk_size:
                    break
                index += 1
            if expected is not None and total != expected:
                raise PlaintextLengthError(
                    f"the plaintext source delivered {total} bytes, not the announced {expected}"
                )
            encryptor.finalize()
            tag_b64 = b64url_encode(encryptor.tag)
            digest = sha.hexdigest()
        finally:
            sha.close()
        yield b"." + tag_b64.encode("ascii")
        self._result = StreamResult(
            authentication_tag=tag_b64,
            plaintext_sha512=digest,
            plaintext_length=total,
            token_length=prepared.token_length(total),
        )


def iter_encrypt(
    source: StreamSource,
    key: PublicKeySource,
    *,
    kid: str | None = None,
    cty: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    plaintext_length: int | None = None,
    min_bits: int = MIN_RSA_BITS,
    _cek: bytes | None = None,
    _iv: bytes | None = None,
    _encrypted_key: bytes | None = None,
) -> EncryptingIterator:
    """Encrypt ``source`` lazily: an iterator over the bytes of the compact JWE.

    Key, ``kid`` and ``cty`` rules are those of :func:`.jwe.encrypt`; key problems raise here,
    before any byte is produced. ``plaintext_length`` announces the source's length when it
    cannot be determined (it is for bytes and seekable files), making :attr:`length` known.
    """
    prepared = _prepare(
        key, kid=kid, cty=cty, min_bits=min_bits, cek=_cek, iv=_iv, encrypted_key=_encrypted_key
    )
    if plaintext_length is None:
        plaintext_length = _source_length(source)
    elif plaintext_length < 0:
        raise ValueError("plaintext_length must be >= 0")
    return EncryptingIterator(
        source, prepared, chunk_size=chunk_size, plaintext_length=plaintext_length
    )


def encrypt_stream(
    source: StreamSource,
    sink: BinaryIO,
    key: PublicKeySource,
    *,
    kid: str | None = None,
    cty: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    min_bits: int = MIN_RSA_BITS,
    _cek: bytes | None = None,
    _iv: bytes | None = None,
    _encrypted_key: bytes | None = None,
) -> StreamResult:
    """Encrypt ``source`` into ``sink`` as a compact JWE, in constant memory.

    Rules as for :func:`.jwe.encrypt`; the result carries the authentication tag, the SHA-512
    of the plaintext (computed in the same pass) and both lengths.
    """
    prepared = _prepare(
        key, kid=kid, cty=cty, min_bits=min_bits, cek=_cek, iv=_iv, encrypted_key=_encrypted_key
    )
    writer = _Writer(sink)
    try:
        with EncryptingIterator(
            source, prepared, chunk_size=chunk_size, plaintext_length=None
        ) as iterator:
            for piece in iterator:
                writer.write(piece)
        writer.close()
    finally:
        writer.abort()
    return iterator.result


# --- decryption ---------------------------------------------------------------------------------


class _StreamDecryptor(_CompactParser):
    """The syntax parser plus unwrap, AES-GCM, optional inflate, SHA-512 and writing."""

    def __init__(
        self,
        keys: PrivateKeySource,
        sink: BinaryIO,
        *,
        chunk_size: int,
        max_plaintext_size: int | None,
        min_bits: int,
    ) -> None:
        super().__init__()
        self._keys = keys
        self._chunk_size = chunk_size
        self._limit = max_plaintext_size
        self._min_bits = min_bits
        self._key: rsa.RSAPrivateKey | None = None
        self._decryptor: AEADDecryptionContext | None = None
        self._inflater: Any = None
        # A DEFLATE problem is only reported after the tag verified: otherwise error messages
        # would tell an attacker whether modified (unauthenticated) plaintext inflates.
        self._deferred: DecryptionError | None = None
        self._sha = _Sha512()
        self._writer = _Writer(sink)
        self.length = 0
        self.digest = ""

    def _on_header(self) -> None:
        self._key = _select_private_key(self._keys, str(self.header["kid"]), self._min_bits)
        if self.header.get("zip") == ZIP_DEF:
            self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            if self._limit is None:
                self._limit = DEFAULT_MAX_INFLATED_SIZE

    def _on_iv(self) -> None:
        assert self._key is not None
        cek = _unwrap_cek(self._key, self.encrypted_key)
        decryptor = Cipher(algorithms.AES(cek), modes.GCM(self.iv)).decryptor()
        decryptor.authenticate_additional_data(self.protected)
        self._decryptor = decryptor

    def _on_ciphertext(self, data: bytes) -> None:
        assert self._decryptor is not None
        plaintext = self._decryptor.update(data)
        if self._inflater is None:
            self._emit(plaintext)
        elif self._deferred is None:
            self._inflate(plaintext)
        # else: keep decrypting so that the tag check decides which error the caller sees

    def _emit(self, data: bytes) -> None:
        if not data:
            return
        self.length += len(data)
        if self._limit is not None and self.length > self._limit:
            # Without zip this depends only on the (public) ciphertext length.
            raise PlaintextTooLargeError(f"JWE plaintext exceeds the limit of {self._limit} bytes")
        self._sha.update(data)
        self._writer.write(data)

    def _inflate(self, data: bytes) -> None:
        inflater = self._inflater
        assert self._limit is not None
        try:
            while data:
                if inflater.eof:
                    raise DecryptionError(_BAD_DEFLATE)  # data after the end of the stream
                room = self._limit - self.length
                # Bounded output per call: one small chunk can inflate to gigabytes.
                out = inflater.decompress(data, min(self._chunk_size, room + 1))
                data = inflater.unconsumed_tail
                if inflater.unused_data:
                    raise DecryptionError(_BAD_DEFLATE)
                if len(out) > room:
                    raise PlaintextTooLargeError(
                        f"decompressed JWE content exceeds the limit of {self._limit} bytes"
                    )
                self._emit(out)
        except zlib.error:
            self._deferred = DecryptionError(_BAD_DEFLATE)
        except DecryptionError as exc:
            self._deferred = exc

    def _on_tag(self) -> None:
        assert self._decryptor is not None
        try:
            self._decryptor.finalize_with_tag(self.tag)
        except InvalidTag:
            raise DecryptionError(_DECRYPTION_FAILED) from None
        if self._deferred is not None:
            raise self._deferred
        if self._inflater is not None and not self._inflater.eof:
            raise DecryptionError(_BAD_DEFLATE)  # truncated DEFLATE stream
        self.digest = self._sha.hexdigest()
        self._writer.close()

    def close(self) -> None:
        self._sha.close()
        self._writer.abort()


def decrypt_stream(
    source: StreamSource,
    sink: BinaryIO,
    keys: PrivateKeySource,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    max_plaintext_size: int | None = None,
    min_bits: int = MIN_RSA_BITS,
) -> StreamDecryptResult:
    """Decrypt a compact JWE from ``source`` into ``sink``, in constant memory.

    .. warning::
       Plaintext is written to ``sink`` *before* the authentication tag at the very end can be
       checked. If this function raises, everything written so far is unauthenticated and must
       be discarded. :func:`decrypt_to_path` does that for you.

    Same rules, key selection and errors as :func:`.jwe.decrypt`. ``max_plaintext_size`` bounds
    the plaintext written; ``None`` means no bound for uncompressed content (its size is the
    ciphertext's) and :data:`DEFAULT_MAX_INFLATED_SIZE` for ``zip: DEF`` content. The SHA-512
    of the (decompressed) plaintext is computed in the same pass.
    """
    decryptor = _StreamDecryptor(
        keys,
        sink,
        chunk_size=chunk_size,
        max_plaintext_size=max_plaintext_size,
        min_bits=min_bits,
    )
    try:
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        # Any read size works: the base64 decoder carries up to 3 characters between pieces.
        for buffer, start, end in _Source(source).pieces(chunk_size):
            decryptor._feed(buffer, start, end)
        decryptor._finish()
    finally:
        decryptor.close()
    return StreamDecryptResult(
        header=decryptor.header,
        authentication_tag=decryptor.tag_b64,
        plaintext_sha512=decryptor.digest,
        plaintext_length=decryptor.length,
    )


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable (not possible on every platform, hence best effort)."""
    with suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def decrypt_to_path(
    source: StreamSource,
    path: Path | str,
    keys: PrivateKeySource,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    max_plaintext_size: int | None = None,
    min_bits: int = MIN_RSA_BITS,
) -> StreamDecryptResult:
    """Decrypt into the file ``path`` atomically: it appears only once the tag verified.

    Writes to a temporary file (mode 0600) in the same directory, fsyncs it and renames it over
    ``path``; on any failure the temporary file is removed and ``path`` is left untouched.
    """
    target = Path(path)
    directory = target.parent
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=directory)
    try:
        with os.fdopen(fd, "wb") as file:
            result = decrypt_stream(
                source,
                file,
                keys,
                chunk_size=chunk_size,
                max_plaintext_size=max_plaintext_size,
                min_bits=min_bits,
            )
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException:
        with suppress(OSError):
            os.unlink(temporary)
        raise
    _fsync_directory(directory)
    return result
