"""`fitconnect set …` — verify and inspect Security Event Tokens (SETs).

* ``set verify --jwks FILE [TOKEN]`` verifies a SET (PS512, key by ``kid``) and prints its claims;
* ``set decode [TOKEN]`` prints header and claims WITHOUT verification (debugging aid).

The token is read from the argument or, when absent or ``-``, from stdin.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from fitconnect_kit.cli._common import (
    EXIT_CHECK_FAILED,
    EXIT_ERROR,
    EXIT_USAGE,
    fail,
    one_line,
    read_text_file,
    stderr,
)
from fitconnect_kit.protocol.b64 import b64url_decode
from fitconnect_kit.protocol.errors import FitConnectError, FormatError, ProtocolError
from fitconnect_kit.protocol.events import parse_set, submission_subject, verify_set_with_jwks
from fitconnect_kit.protocol.ids import parse_uuid
from fitconnect_kit.protocol.jose.jwk import jwks_keys
from fitconnect_kit.protocol.jsonutil import loads_object, loads_strict

group = typer.Typer(
    name="set",
    help="Verify and inspect Security Event Tokens (SETs) of the event log.",
    no_args_is_help=True,
)

TokenArg = Annotated[
    str | None,
    typer.Argument(
        help="The SET in compact serialization; read from stdin when omitted or '-'.",
        show_default=False,
    ),
]


def _read_token(token: str | None) -> str:
    if token is None or token == "-":  # noqa: S105 ("-" means stdin)
        raw = sys.stdin.buffer.read()
        try:
            token = raw.decode("ascii")
        except UnicodeDecodeError:
            fail("the token on stdin is not ASCII text", EXIT_CHECK_FAILED)
    token = token.strip()
    if not token:
        fail("no token given (pass it as an argument or on stdin)", EXIT_USAGE)
    return token


def _load_jwks(path: Path) -> dict[str, Any]:
    text = read_text_file(path, "JWKS file")
    try:
        obj = loads_object(text, what="JWKS file")
        if "keys" not in obj and "kty" in obj:
            obj = {"keys": [obj]}  # a single JWK is accepted as a JWKS of one key
        jwks_keys(obj)
    except FitConnectError as exc:
        fail(f"{path} is not a usable JWK Set: {one_line(str(exc))}", EXIT_ERROR)
    return obj


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False)


@group.command("verify")
def verify_command(
    jwks: Annotated[
        Path,
        typer.Option(
            "--jwks",
            help="JWK Set (JSON file) with the issuer's PS512 verification keys; "
            "the key is picked by the SET's kid.",
            dir_okay=False,
        ),
    ],
    token: TokenArg = None,
    expect_case: Annotated[
        str | None, typer.Option("--expect-case", help="Require txn = case:<ID>.")
    ] = None,
    expect_submission: Annotated[
        str | None, typer.Option("--expect-submission", help="Require sub = submission:<ID>.")
    ] = None,
    expect_issuer: Annotated[
        str | None,
        typer.Option("--expect-issuer", help="Require iss (ZD base URL or destination id)."),
    ] = None,
) -> None:
    """Verify a SET (header, claims, PS512 signature) and print its verified claims as JSON.

    Exit 0 when valid, 3 when verification fails (one-line reason on stderr), 4 when the JWKS file
    does not exist.
    """
    key_set = _load_jwks(jwks)
    text = _read_token(token)
    try:
        subject = submission_subject(expect_submission) if expect_submission else None
        case_id = parse_uuid(expect_case, field="--expect-case") if expect_case else None
    except FormatError as exc:
        fail(one_line(str(exc)), EXIT_USAGE)
    try:
        st = verify_set_with_jwks(
            text,
            key_set,
            expected_subject=subject,
            expected_case_id=case_id,
            expected_issuer=expect_issuer,
        )
    except ProtocolError as exc:
        fail(f"SET verification failed: {one_line(str(exc))}", EXIT_CHECK_FAILED)
    typer.echo(_dump(st.claims))


@group.command("decode")
def decode_command(token: TokenArg = None) -> None:
    """Print a SET's header and claims WITHOUT verifying anything (debugging aid).

    The output is labelled "verified": false; never trust it. Use `set verify` for decisions.
    """
    text = _read_token(token)
    parts = text.split(".")
    if len(parts) != 3:
        fail(f"not a compact JWS: expected 3 segments, got {len(parts)}", EXIT_CHECK_FAILED)
    try:
        header = loads_object(b64url_decode(parts[0], what="JWS header"), what="JWS header")
        payload = loads_strict(b64url_decode(parts[1], what="JWS payload"), what="JWS payload")
    except ProtocolError as exc:
        fail(one_line(str(exc)), EXIT_CHECK_FAILED)
    stderr.print("UNVERIFIED: the signature and claims were NOT checked.", markup=False)
    try:
        parse_set(text)
    except ProtocolError as exc:
        stderr.print(f"note: not a valid FIT-Connect SET: {one_line(str(exc))}", markup=False)
    typer.echo(_dump({"verified": False, "header": header, "payload": payload}))


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.add_typer(group, name="set")
