"""`fitconnect keys`: generate test keys, check destination JWKs, compute RFC 7638 thumbprints."""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from fitconnect_kit.cli._common import EXIT_CHECK_FAILED, EXIT_ERROR, EXIT_USAGE, fail, stdout
from fitconnect_kit.protocol.errors import CertificateError, FormatError, Violation
from fitconnect_kit.protocol.jose.jwk import public_key_from_jwk, thumbprint
from fitconnect_kit.protocol.keygen import (
    KEY_FILE_NAMES,
    PRIVATE_KEY_FILES,
    generate_key_set,
    load_jwk_file,
    write_key_set,
)
from fitconnect_kit.protocol.keys import (
    KeyPurpose,
    TrustPolicy,
    ValidatedChain,
    infer_purpose,
    key_rule_violations,
    validate_x5c_chain,
)

keys_app = typer.Typer(
    name="keys",
    help="Destination keys: generate test keys, check JWKs against the FIT-Connect key rules.",
    no_args_is_help=True,
)

# Source of the RSA keys for `keys generate` (None = fresh RSA-4096 keys). Deliberately not a CLI
# option: tests replace it in-process to use cached keys instead of generating new ones.
_key_factory: Callable[[], RSAPrivateKey] | None = None

_FILE_LABELS = {
    "encryption_private": "encryption private key",
    "encryption_public": "encryption public key",
    "signing_private": "signing private key",
    "signing_public": "signing public key",
    "ca_certificate": "CA certificate",
}


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.add_typer(keys_app, name="keys")


@keys_app.command("generate")
def generate(
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Directory to write the five key files into."),
    ],
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite existing key files in the directory.")
    ] = False,
    common_name: Annotated[
        str,
        typer.Option("--common-name", help="Common name of the certificates (CA and leaves)."),
    ] = "fitconnect-kit Test-Zustellpunkt",
    valid_days: Annotated[
        int, typer.Option("--valid-days", min=1, help="Validity of the certificates in days.")
    ] = 730,
) -> None:
    """Generate test keys for a destination: encryption + signing key pairs and their CA.

    For the test environment and the local Zustelldienst only (self-signed CA).

    Private keys are written with mode 0600; kids are RFC 7638 thumbprints.
    """
    try:
        keys = generate_key_set(
            common_name=common_name, valid_days=valid_days, key_factory=_key_factory
        )
    except FormatError as exc:
        fail(str(exc), EXIT_USAGE)
    try:
        paths = write_key_set(keys, out, overwrite=force)
    except FileExistsError as exc:
        fail(f"{exc}; use --force to overwrite", EXIT_ERROR)
    except NotADirectoryError as exc:
        fail(str(exc), EXIT_USAGE)
    stdout.print(f"wrote {len(paths)} files to {out}:", markup=False)
    width = max(len(label) for label in _FILE_LABELS.values())
    for name in KEY_FILE_NAMES:
        path = paths[name]
        mode = stat.S_IMODE(path.stat().st_mode)
        note = "  (keep secret)" if name in PRIVATE_KEY_FILES else ""
        stdout.print(
            f"  {_FILE_LABELS[name]:<{width}}  {path}  mode {mode:04o}{note}", markup=False
        )
    stdout.print(f"encryption kid: {keys.encryption_kid}", markup=False)
    stdout.print(f"signing kid:    {keys.signing_kid}", markup=False)
    stdout.print(
        "register the two public keys on the destination; the self-signed chain is accepted in "
        "the test environment only",
        markup=False,
    )


def _policy(trust_anchors: list[Path], allow_self_signed: bool) -> TrustPolicy:
    if trust_anchors:
        return TrustPolicy.from_pem(trust_anchors, allow_self_signed=allow_self_signed)
    if allow_self_signed:
        return TrustPolicy.test_environment()
    return TrustPolicy.strict(())


def _describe_ok(
    purpose: KeyPurpose, kid: str, bits: int, alg: str, chain: ValidatedChain | None
) -> str:
    text = f"OK: {purpose.value} key {kid!r} (RSA {bits} bit, {alg})"
    if chain is None:
        return text + ", no x5c"
    count = len(chain.certificates)
    if chain.self_signed:
        anchor = "ends in a self-signed root (accepted: test environment only)"
    else:
        assert chain.trust_anchor is not None
        anchor = f"ends in trust anchor {chain.trust_anchor.subject.rfc4514_string()!r}"
    return (
        f"{text}, x5c chain of {count} certificate(s) {anchor}, valid until "
        f"{chain.not_after:%Y-%m-%d}; revocation not checked (offline)"
    )


@keys_app.command("check")
def check(
    jwk_file: Annotated[Path, typer.Argument(help="JWK file (JSON) to check.")],
    purpose: Annotated[
        KeyPurpose | None,
        typer.Option("--purpose", help="What the key is for (default: inferred from its alg)."),
    ] = None,
    trust_anchor: Annotated[
        list[Path] | None,
        typer.Option(
            "--trust-anchor",
            help="PEM file with trusted root/intermediate certificate(s); repeatable.",
        ),
    ] = None,
    allow_self_signed: Annotated[
        bool,
        typer.Option(
            "--allow-self-signed",
            help="Accept chains ending in a self-signed certificate (test environment only).",
        ),
    ] = False,
) -> None:
    """Check a public destination JWK: FIT-Connect key rules and its x5c certificate chain.

    Prints "OK: …" (exit 0) or every violation found (exit 3).

    Revocation (OCSP/CRL) is not checked: this command works offline.
    """
    jwk = load_jwk_file(jwk_file)
    policy = _policy(trust_anchor or [], allow_self_signed)
    violations = key_rule_violations(jwk, purpose, require_x5c=policy.require_x5c)
    resolved = purpose or infer_purpose(jwk)
    chain: ValidatedChain | None = None
    chain_failed = False
    x5c_syntax_ok = not any(v.path.startswith("$.x5c") for v in violations)
    if resolved is not None and "x5c" in jwk and x5c_syntax_ok:
        try:
            chain = validate_x5c_chain(jwk, policy, purpose=resolved)
        except CertificateError as exc:
            violations.append(Violation("$.x5c", str(exc)))
            chain_failed = True
    kid = jwk.get("kid")
    kid_text = repr(kid) if isinstance(kid, str) and len(kid) <= 64 else "without a valid kid"
    if violations:
        for violation in violations:
            stdout.print(f"FAIL {violation}", markup=False)
        hint = ""
        if chain_failed and not policy.trust_anchors and not policy.allow_self_signed:
            hint = " (pass --trust-anchor PEM, or --allow-self-signed for the test environment)"
        plural = "check" if len(violations) == 1 else "checks"
        fail(f"key {kid_text} fails {len(violations)} {plural}{hint}", EXIT_CHECK_FAILED)
    assert resolved is not None
    assert isinstance(kid, str)
    bits = public_key_from_jwk(jwk).key_size
    stdout.print(_describe_ok(resolved, kid, bits, str(jwk.get("alg")), chain), markup=False)


@keys_app.command("thumbprint")
def thumbprint_command(
    jwk_file: Annotated[Path, typer.Argument(help="JWK file (JSON), public or private.")],
) -> None:
    """Print the RFC 7638 SHA-256 thumbprint of an RSA JWK (base64url)."""
    stdout.print(thumbprint(load_jwk_file(jwk_file)), markup=False)
