"""The destination's private keys on the subscriber side: decryption keys and the signing key.

* :class:`DecryptionKeys` — every private encryption key the destination may still receive
  parts for (key rotation: the old key stays until no submission encrypted for it is pending).
  Each JWE part is decrypted with the key whose ``kid`` its header names. Keys are converted
  once (converting an RSA-4096 JWK checks the key, ~0.25 s) and kept as ``kid → key``.
* :class:`SigningKey` — the private ``PS512`` key whose public half is registered on the
  destination; it signs ``accept-submission`` / ``reject-submission`` / ``forward-submission``.

Sources: JWK files (one JWK or a JWK Set per file), directories of such files, JWK mappings,
or ``cryptography`` key objects with their kid. Nothing here ever prints key material: messages
name files and kids only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from fitconnect_kit.client.errors import EXIT_NOT_FOUND, ConfigurationError
from fitconnect_kit.protocol.errors import FitConnectError, FormatError
from fitconnect_kit.protocol.jose.jwe import MIN_RSA_BITS, load_private_keys
from fitconnect_kit.protocol.jose.jwk import private_key_from_jwk
from fitconnect_kit.protocol.jsonutil import loads_strict

_MAX_KEY_FILE_BYTES = 1 << 20


class KeyFileNotFoundError(ConfigurationError):
    """A key file or directory that was named does not exist."""

    cli_exit_code = EXIT_NOT_FOUND


KeyInput = str | Path | Mapping[str, Any]
"""A JWK file / directory path, or a private JWK / JWK Set as a mapping."""


def _read_jwk_file(path: Path) -> list[Mapping[str, Any]]:
    """The private JWKs in a file holding one JWK or a JWK Set."""
    try:
        with path.open("rb") as handle:
            data = handle.read(_MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError:
        raise KeyFileNotFoundError(f"key file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigurationError(f"expected a key file but got a directory: {path}") from None
    except OSError as exc:
        raise ConfigurationError(f"cannot read key file {path}: {exc.strerror}") from None
    if len(data) > _MAX_KEY_FILE_BYTES:
        raise ConfigurationError(f"key file {path} is larger than 1 MiB; not a JWK")
    try:
        value = loads_strict(data, what=f"key file {path}")
    except FormatError:
        # The message of the JSON parser may quote the file; ours does not.
        raise ConfigurationError(f"key file {path} is not valid JSON") from None
    return _jwks_of(value, str(path))


def _jwks_of(value: object, where: str) -> list[Mapping[str, Any]]:
    if isinstance(value, Mapping) and isinstance(value.get("keys"), list):
        items = value["keys"]
    elif isinstance(value, Mapping) and isinstance(value.get("kty"), str):
        items = [value]
    else:
        raise ConfigurationError(f"{where} holds no JWK (expected a JWK or a JWK Set)")
    result: list[Mapping[str, Any]] = []
    for item in items:
        if not isinstance(item, Mapping) or not isinstance(item.get("kty"), str):
            raise ConfigurationError(f"{where}: a JWK Set member is not a JWK")
        result.append(item)
    return result


def _expand(source: KeyInput) -> Iterator[tuple[str, list[Mapping[str, Any]]]]:
    if isinstance(source, Mapping):
        yield "the given JWK", _jwks_of(source, "the given JWK")
        return
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix == ".json")
        for file in files:
            jwks = _read_jwk_file(file)
            # A directory may also hold public keys and certificates: take private keys only.
            private = [j for j in jwks if "d" in j]
            if private:
                yield str(file), private
        return
    yield str(path), _read_jwk_file(path)


def _is_encryption_jwk(jwk: Mapping[str, Any]) -> bool:
    alg = jwk.get("alg")
    ops = jwk.get("key_ops")
    use = jwk.get("use")
    if alg is not None:
        return bool(alg == "RSA-OAEP-256")
    if isinstance(ops, list):
        return "unwrapKey" in ops or "decrypt" in ops
    return use in (None, "enc")


class DecryptionKeys(Mapping[str, rsa.RSAPrivateKey]):
    """The destination's private decryption keys by ``kid`` (a read-only mapping).

    Pass it wherever a :data:`~fitconnect_kit.protocol.jose.jwe.PrivateKeySource` is accepted;
    the JWE's ``kid`` selects the key, so several keys (rotation) work at once::

        keys = DecryptionKeys.load("keys/encryption.private.jwk.json", "keys/old.jwk.json")
    """

    def __init__(self, keys: Mapping[str, rsa.RSAPrivateKey] | None = None) -> None:
        self._keys: dict[str, rsa.RSAPrivateKey] = {}
        for kid, key in (keys or {}).items():
            self.add_key(kid, key)

    @classmethod
    def load(cls, *sources: KeyInput, min_bits: int = MIN_RSA_BITS) -> DecryptionKeys:
        """Keys from JWK files, directories (every ``*.json`` private key in them) or mappings.

        Keys for other purposes (``alg`` other than ``RSA-OAEP-256``, e.g. the signing key in
        the same directory) are skipped when read from a directory and refused otherwise.
        """
        store = cls()
        for source in sources:
            store.add(source, min_bits=min_bits)
        return store

    def add(self, source: KeyInput, *, min_bits: int = MIN_RSA_BITS) -> None:
        """Add the private encryption keys of a file, directory or JWK mapping."""
        from_directory = not isinstance(source, Mapping) and Path(source).expanduser().is_dir()
        for where, jwks in _expand(source):
            usable = [j for j in jwks if _is_encryption_jwk(j)] if from_directory else jwks
            if not usable:
                continue
            try:
                converted = load_private_keys(list(usable), min_bits=min_bits)
            except FitConnectError as exc:
                raise ConfigurationError(f"{where}: unusable decryption key: {exc}") from None
            for kid, key in converted.items():
                self.add_key(kid, key)

    def add_key(self, kid: str, key: rsa.RSAPrivateKey) -> None:
        """Add one key object under ``kid``."""
        if not isinstance(kid, str) or not kid:
            raise ConfigurationError("a decryption key needs a non-empty kid")
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ConfigurationError(f"decryption key {kid!r} is not an RSA private key")
        if key.key_size < MIN_RSA_BITS:
            raise ConfigurationError(
                f"decryption key {kid!r} has {key.key_size} bits; FIT-Connect requires "
                f"{MIN_RSA_BITS}"
            )
        self._keys[kid] = key

    def __getitem__(self, kid: str) -> rsa.RSAPrivateKey:
        return self._keys[kid]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def __repr__(self) -> str:
        return f"DecryptionKeys(kids={list(self._keys)!r})"


@dataclass(frozen=True, repr=False)
class SigningKey:
    """The destination's private SET signing key (``PS512``) and its ``kid``."""

    kid: str
    key: rsa.RSAPrivateKey = field(compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.kid, str) or not self.kid:
            raise ConfigurationError("the signing key needs a non-empty kid")
        if not isinstance(self.key, rsa.RSAPrivateKey):
            raise ConfigurationError(f"signing key {self.kid!r} is not an RSA private key")
        if self.key.key_size < MIN_RSA_BITS:
            raise ConfigurationError(
                f"signing key {self.kid!r} has {self.key.key_size} bits; FIT-Connect requires "
                f"{MIN_RSA_BITS}"
            )

    def __repr__(self) -> str:
        return f"SigningKey(kid={self.kid!r})"

    @classmethod
    def from_jwk(cls, jwk: Mapping[str, Any]) -> SigningKey:
        """From a private JWK (``alg`` ``PS512`` when given; ``kid`` required)."""
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not kid:
            raise ConfigurationError("the signing JWK has no kid")
        alg = jwk.get("alg")
        if alg is not None and alg != "PS512":
            raise ConfigurationError(f"signing key {kid!r} is for alg {alg!r}, not PS512")
        ops = jwk.get("key_ops")
        if isinstance(ops, list) and "sign" not in ops:
            raise ConfigurationError(f"signing key {kid!r} does not allow key_ops 'sign'")
        try:
            key = private_key_from_jwk(jwk)
        except FitConnectError as exc:
            raise ConfigurationError(f"signing key {kid!r} is unusable: {exc}") from None
        return cls(kid, key)

    @classmethod
    def load(cls, source: KeyInput) -> SigningKey:
        """From a JWK file (one private JWK, or a JWK Set with exactly one ``PS512`` key)."""
        if isinstance(source, Mapping):
            jwks = _jwks_of(source, "the given JWK")
            where = "the given JWK"
        else:
            path = Path(source).expanduser()
            jwks, where = _read_jwk_file(path), str(path)
        candidates = [j for j in jwks if j.get("alg") in (None, "PS512") and "d" in j]
        if len(candidates) != 1:
            raise ConfigurationError(
                f"{where}: expected exactly one private PS512 signing JWK, found {len(candidates)}"
            )
        return cls.from_jwk(candidates[0])


def as_decryption_keys(
    keys: DecryptionKeys | KeyInput | Iterable[KeyInput] | None,
) -> DecryptionKeys:
    """Coerce what a caller passed as ``decryption_keys`` to :class:`DecryptionKeys`."""
    if keys is None:
        return DecryptionKeys()
    if isinstance(keys, DecryptionKeys):
        return keys
    if (
        isinstance(keys, Mapping)
        and keys
        and all(isinstance(v, rsa.RSAPrivateKey) for v in keys.values())
    ):
        return DecryptionKeys(keys)  # a kid → key mapping
    if isinstance(keys, str | Path | Mapping):
        return DecryptionKeys.load(keys)
    return DecryptionKeys.load(*keys)


def as_signing_key(key: SigningKey | KeyInput | None) -> SigningKey | None:
    if key is None or isinstance(key, SigningKey):
        return key
    return SigningKey.load(key)


__all__ = [
    "DecryptionKeys",
    "KeyFileNotFoundError",
    "KeyInput",
    "SigningKey",
    "as_decryption_keys",
    "as_signing_key",
]
