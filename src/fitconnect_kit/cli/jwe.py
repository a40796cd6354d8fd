"""`fitconnect jwe`: encrypt and decrypt FIT-Connect JWEs (RSA-OAEP-256 + A256GCM), streaming.

Both commands work in constant memory whatever the size. Decrypted plaintext only ever appears
after the authentication tag verified: a file output is written to a temporary file and renamed,
stdout output is staged in an anonymous temporary file and copied out afterwards.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import typer

from fitconnect_kit.cli._common import (
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    fail,
    open_input,
    read_text_file,
    stderr,
)
from fitconnect_kit.protocol.jose import jwe
from fitconnect_kit.protocol.jose.jwk import find_key, jwks_keys
from fitconnect_kit.protocol.jsonutil import loads_object

jwe_app = typer.Typer(
    name="jwe",
    help="Encrypt and decrypt FIT-Connect JWEs (compact, RSA-OAEP-256 + A256GCM), streaming.",
    no_args_is_help=True,
)

_STDIO = "-"


def _is_stdio(path: Path | None) -> bool:
    return path is None or str(path) == _STDIO


def _load_jwks(path: Path) -> list[dict[str, Any]]:
    """The JWKs in a key file: a single JWK or a JWK Set."""
    document = loads_object(read_text_file(path, "key file"), what=f"key file {path}")
    if "keys" in document:
        return jwks_keys(document)
    return [document]


def _encryption_key(path: Path, kid: str | None) -> dict[str, Any]:
    keys = _load_jwks(path)
    if len(keys) == 1:
        return keys[0]
    if kid is None:
        fail(f"key file {path} holds {len(keys)} keys; choose one with --kid", EXIT_USAGE)
    found = find_key(keys, kid)
    if found is None:
        fail(f"no key with kid {kid!r} in {path}", EXIT_NOT_FOUND)
    return found


def _decryption_keys(paths: list[Path]) -> jwe.PrivateKeySource:
    keys = [jwk for path in paths for jwk in _load_jwks(path)]
    # One JWK is used when the JWE's kid matches or the JWK has none; several are chosen by kid.
    return keys[0] if len(keys) == 1 else keys


@contextmanager
def _input(path: Path | None) -> Iterator[BinaryIO]:
    stream = open_input(None if _is_stdio(path) else path)
    try:
        yield stream
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def _default_file_mode() -> int:
    umask = os.umask(0o022)  # reading the umask means setting it; restore right away
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def _atomic_output(path: Path) -> Iterator[BinaryIO]:
    """A temporary file next to ``path`` that replaces it only if the block succeeds."""
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        # A JWE is not secret: give it the usual permissions, not mkstemp's 0600.
        os.fchmod(fd, _default_file_mode())
        with os.fdopen(fd, "wb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(temporary)
        raise


@jwe_app.command("encrypt")
def encrypt_command(
    key: Annotated[
        Path,
        typer.Option(
            "--key",
            "-k",
            metavar="PUBLIC_JWK",
            help="Recipient's public encryption JWK (a JWK Set needs --kid).",
        ),
    ],
    input_path: Annotated[
        Path | None,
        typer.Argument(metavar="[IN]", help="Plaintext file; stdin when omitted or '-'."),
    ] = None,
    output_path: Annotated[
        Path | None,
        typer.Argument(metavar="[OUT]", help="JWE output file; stdout when omitted or '-'."),
    ] = None,
    cty: Annotated[
        str | None,
        typer.Option("--cty", metavar="TYPE", help="MIME type of the plaintext (header cty)."),
    ] = None,
    kid: Annotated[
        str | None,
        typer.Option("--kid", help="Key id for the header; defaults to the JWK's kid."),
    ] = None,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            help="Print the authentication tag and the plaintext's SHA-512 to stderr.",
        ),
    ] = False,
) -> None:
    """Encrypt IN for the holder of PUBLIC_JWK as a compact JWE (RSA-OAEP-256 + A256GCM)."""
    jwk = _encryption_key(key, kid)
    with _input(input_path) as source:
        if _is_stdio(output_path):
            sink = sys.stdout.buffer
            result = jwe.encrypt_stream(source, sink, jwk, kid=kid, cty=cty)
            sink.flush()
        else:
            assert output_path is not None
            with _atomic_output(output_path) as sink:
                result = jwe.encrypt_stream(source, sink, jwk, kid=kid, cty=cty)
    if verbose:
        stderr.print(f"authentication tag: {result.authentication_tag}", markup=False)
        stderr.print(f"plaintext sha512:   {result.plaintext_sha512}", markup=False)
        stderr.print(f"plaintext length:   {result.plaintext_length}", markup=False)


@jwe_app.command("decrypt")
def decrypt_command(
    keys: Annotated[
        list[Path],
        typer.Option(
            "--key",
            "-k",
            metavar="PRIVATE_JWK",
            help="Private JWK or JWK Set; repeat for several keys (chosen by the JWE's kid).",
        ),
    ],
    input_path: Annotated[
        Path | None,
        typer.Argument(metavar="[IN]", help="JWE file; stdin when omitted or '-'."),
    ] = None,
    output_path: Annotated[
        Path | None,
        typer.Argument(
            metavar="[OUT]",
            help="Plaintext output file (created only after the tag verified); stdout when "
            "omitted or '-'.",
        ),
    ] = None,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            help="Print kid, cty, authentication tag and the plaintext's SHA-512 to stderr.",
        ),
    ] = False,
) -> None:
    """Decrypt a compact JWE; nothing is output unless the authentication tag verifies."""
    key_source = _decryption_keys(keys)
    with _input(input_path) as source:
        if _is_stdio(output_path):
            # Stage in an anonymous temporary file: unauthenticated plaintext never reaches
            # stdout, and memory stays constant.
            with tempfile.TemporaryFile() as staging:
                result = jwe.decrypt_stream(source, staging, key_source)
                staging.seek(0)
                shutil.copyfileobj(staging, sys.stdout.buffer, 1 << 20)
                sys.stdout.buffer.flush()
        else:
            assert output_path is not None
            result = jwe.decrypt_to_path(source, output_path, key_source)
    if verbose:
        header = result.header
        stderr.print(f"kid:                {header.get('kid')}", markup=False)
        stderr.print(f"cty:                {header.get('cty', '-')}", markup=False)
        stderr.print(f"authentication tag: {result.authentication_tag}", markup=False)
        stderr.print(f"plaintext sha512:   {result.plaintext_sha512}", markup=False)
        stderr.print(f"plaintext length:   {result.plaintext_length}", markup=False)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.add_typer(jwe_app, name="jwe")
