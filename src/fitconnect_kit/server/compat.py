"""[U] choices of the Zustelldienst that are not in ``protocol/`` (see ``docs/server.md``).

Everything here is a best guess where the reference marks a fact unconfirmed; change it here.
"""

from __future__ import annotations

from typing import Final

#: Submission API version reported by ``GET /v1/info`` and the OpenAPI document. [U] We implement
#: the v1 resource model with per-service reply channels (a 1.3.0 feature), hence 1.3.0.
SUBMISSION_API_VERSION: Final = (1, 3, 0)

#: ``GET /v1/info`` shape: ``{"version": {major, minor, patch}}`` as the routing API's ``/info``;
#: we add ``implementation`` ({name, version}) — clients must tolerate extra members. [U]
INFO_IMPLEMENTATION_NAME: Final = "fitconnect-kit"

#: Path of the ZD's JWKS (SET verification keys), relative to the server root. [S]/[U] for v1.
JWKS_PATH: Final = "/.well-known/jwks.json"

#: Token endpoint path on our server; FITKO runs it on a separate host (``…/token``). [S]
TOKEN_PATH: Final = "/token"  # noqa: S105 - a path

#: How long clients may cache the JWKS (seconds). [U]
JWKS_MAX_AGE: Final = 300
