"""JOSE for FIT-Connect, written on ``cryptography`` and ``pybase64``.

Only what FIT-Connect allows is implemented, and everything else is refused:

* JWE compact with ``RSA-OAEP-256`` + ``A256GCM`` (one-shot and streaming, see :mod:`.jwe`);
* JWS compact with ``PS512`` (see :mod:`.jws`);
* RSA JWKs (see :mod:`.jwk`).
"""
