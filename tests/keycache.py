"""RSA-4096 keys for tests, generated once and cached on disk.

Generating a 4096-bit key takes ~0.5–2 s; the suite needs dozens. Keys are cached (PEM, by
index) under ``.pytest_cache/fitconnect-test-keys`` so later runs start instantly. They are test
keys only and never leave the machine.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

_CACHE_DIR = Path(__file__).resolve().parent.parent / ".pytest_cache" / "fitconnect-test-keys"


@functools.cache
def rsa_key(index: int = 0, bits: int = 4096) -> rsa.RSAPrivateKey:
    """The ``index``-th cached RSA test key of ``bits`` bits (distinct indexes, distinct keys)."""
    path = _CACHE_DIR / f"rsa{bits}-{index}.pem"
    if path.is_file():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        return key
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    _CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.replace(tmp, path)
    return key
