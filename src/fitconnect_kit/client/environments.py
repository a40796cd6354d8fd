"""FIT-Connect environments: where the token service and the Zustelldienst live, whom to trust.

An :class:`Environment` is all the SDK needs to know about an installation: the OAuth token URL,
the Submission API base (v1), the Zustelldienst root (for ``/.well-known/jwks.json``), the
Routing API and Self-Service-Portal URLs (informational), and the trust policy for destination
keys. Presets:

* ``local`` — our own Zustelldienst on loopback (``fitconnect dev``), test trust policy;
* ``test`` — FITKO's Testumgebung (self-signed x5c chains allowed);
* ``stage`` — FITKO's Referenzumgebung ("refz"), chains must end in configured trust anchors;
* ``prod`` — FITKO's production, chains must end in configured trust anchors (V-PKI).

The preset URLs are exactly those of the reference's environment table (API generation v1);
``None`` marks a URL the reference has no confirmed value for.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from cryptography import x509

from fitconnect_kit.client.errors import ConfigurationError

if TYPE_CHECKING:
    from fitconnect_kit.protocol.keys import TrustPolicy

TrustMode = Literal["test", "strict"]

LOCAL_DEFAULT_BASE_URL = "http://127.0.0.1:8080"
PRESET_NAMES = ("local", "test", "stage", "prod")
_ALIASES = {
    "testing": "test",
    "refz": "stage",
    "staging": "stage",
    "reference": "stage",
    "production": "prod",
}

TrustAnchorInput = x509.Certificate | bytes | str | Path


@dataclass(frozen=True)
class Environment:
    """One FIT-Connect installation (token service + Zustelldienst) and its trust rules.

    ``submission_api_url`` is the v1 base including ``/v1`` (e.g.
    ``https://submission-api-testing.fit-connect.fitko.dev/v1``); request paths like
    ``/submissions`` are appended to it. ``trust`` is ``"test"`` (self-signed x5c chains of
    destination keys are accepted) or ``"strict"`` (chains must end in ``trust_anchors``).
    """

    name: str
    token_url: str
    submission_api_url: str
    routing_api_url: str | None = None
    portal_url: str | None = None
    trust: TrustMode = "strict"
    trust_anchors: tuple[x509.Certificate, ...] = field(default=(), repr=False)
    zustelldienst_url: str | None = None

    def __post_init__(self) -> None:
        for name in ("token_url", "submission_api_url"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.startswith(("https://", "http://")):
                raise ConfigurationError(
                    f"environment {self.name!r}: {name} must be an http(s) URL, got {value!r}"
                )
        if self.trust not in ("test", "strict"):
            raise ConfigurationError(
                f"environment {self.name!r}: trust must be 'test' or 'strict', got {self.trust!r}"
            )

    # --- derived URLs --------------------------------------------------------------------------

    @property
    def zd_root_url(self) -> str:
        """Root URL of the Zustelldienst (the Submission API base without ``/v1``)."""
        if self.zustelldienst_url:
            return self.zustelldienst_url.rstrip("/")
        base = self.submission_api_url.rstrip("/")
        return base[: -len("/v1")] if base.endswith("/v1") else base

    @property
    def jwks_url(self) -> str:
        """Where the Zustelldienst publishes the keys its own SETs are signed with."""
        return self.zd_root_url + "/.well-known/jwks.json"

    def api_url(self, path: str) -> str:
        """Absolute URL of a Submission API path such as ``/submissions/{id}``."""
        if path.startswith(("https://", "http://")):
            return path
        return self.submission_api_url.rstrip("/") + "/" + path.lstrip("/")

    @property
    def is_production(self) -> bool:
        return self.name == "prod"

    # --- trust -----------------------------------------------------------------------------------

    def trust_policy(self) -> TrustPolicy:
        """The trust policy for x5c chains of destination keys in this environment.

        ``test`` environments accept self-signed chains; ``strict`` ones need trust anchors
        (the Verwaltungs-PKI roots) and refuse to work without them.
        """
        from fitconnect_kit.protocol.keys import TrustPolicy

        if self.trust == "test":
            return TrustPolicy.test_environment()
        if not self.trust_anchors:
            raise ConfigurationError(
                f"environment {self.name!r} validates destination keys against the "
                "Verwaltungs-PKI but no trust anchors are configured; pass the root "
                "certificates with Environment.with_trust_anchors(...), the profile member "
                "'trustAnchors' or FITCONNECT_TRUST_ANCHORS=<PEM file>"
            )
        return TrustPolicy.strict(list(self.trust_anchors))

    def with_trust_anchors(self, *anchors: TrustAnchorInput) -> Environment:
        """A copy that trusts these root certificates (objects, PEM/DER bytes, PEM files)."""
        loaded = list(self.trust_anchors)
        for anchor in anchors:
            loaded.extend(load_certificates(anchor))
        return dataclasses.replace(self, trust_anchors=tuple(loaded))

    def replace(self, **changes: object) -> Environment:
        """A copy with some fields changed (e.g. a proxying ``submission_api_url``)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    # --- presets ---------------------------------------------------------------------------------

    @classmethod
    def test(cls) -> Environment:
        """FITKO's Testumgebung: free to use, self-signed destination certificates allowed."""
        return cls(
            name="test",
            token_url="https://auth-testing.fit-connect.fitko.dev/token",  # noqa: S106
            submission_api_url="https://submission-api-testing.fit-connect.fitko.dev/v1",
            routing_api_url="https://routing-api-testing.fit-connect.fitko.dev/v1/",
            portal_url="https://portal.auth-testing.fit-connect.fitko.dev/",
            trust="test",
        )

    @classmethod
    def stage(cls, *anchors: TrustAnchorInput) -> Environment:
        """FITKO's Referenzumgebung ("refz"); destination keys must chain to ``anchors``."""
        env = cls(
            name="stage",
            token_url="https://auth-refz.fit-connect.fitko.net/token",  # noqa: S106
            submission_api_url="https://submission-api-refz.fit-connect.niedersachsen.de/v1",
            routing_api_url=None,
            portal_url=None,
            trust="strict",
        )
        return env.with_trust_anchors(*anchors) if anchors else env

    @classmethod
    def prod(cls, *anchors: TrustAnchorInput) -> Environment:
        """FITKO's production; destination keys must chain to ``anchors`` (Verwaltungs-PKI)."""
        env = cls(
            name="prod",
            token_url="https://auth-prod.fit-connect.fitko.net/token",  # noqa: S106
            submission_api_url="https://submission-api-prod.fit-connect.niedersachsen.de/v1",
            routing_api_url="https://routing-api-prod.fit-connect.fitko.net/v1/",
            portal_url=None,
            trust="strict",
        )
        return env.with_trust_anchors(*anchors) if anchors else env

    @classmethod
    def local(
        cls,
        base_url: str = LOCAL_DEFAULT_BASE_URL,
        *,
        token_url: str | None = None,
        submission_api_url: str | None = None,
    ) -> Environment:
        """Our own Zustelldienst (``fitconnect dev``) at ``base_url``; test trust policy.

        Normally built from the profile that ``fitconnect dev`` writes (see
        :func:`fitconnect_kit.client.config.load_profile`).
        """
        base = base_url.rstrip("/")
        return cls(
            name="local",
            token_url=token_url or base + "/token",
            submission_api_url=submission_api_url or base + "/v1",
            trust="test",
        )

    @classmethod
    def custom(
        cls,
        name: str,
        *,
        token_url: str,
        submission_api_url: str,
        routing_api_url: str | None = None,
        portal_url: str | None = None,
        trust: TrustMode = "strict",
        trust_anchors: Iterable[TrustAnchorInput] = (),
        zustelldienst_url: str | None = None,
    ) -> Environment:
        """Any other installation (e.g. FITKO's internal dev environment, a proxy, a test ZD)."""
        env = cls(
            name=name,
            token_url=token_url,
            submission_api_url=submission_api_url,
            routing_api_url=routing_api_url,
            portal_url=portal_url,
            trust=trust,
            zustelldienst_url=zustelldienst_url,
        )
        anchors = list(trust_anchors)
        return env.with_trust_anchors(*anchors) if anchors else env

    @classmethod
    def preset(cls, name: str) -> Environment:
        """The preset called ``name`` (``local``, ``test``, ``stage``, ``prod`` or an alias)."""
        key = canonical_name(name)
        if key == "local":
            return cls.local()
        if key == "test":
            return cls.test()
        if key == "stage":
            return cls.stage()
        if key == "prod":
            return cls.prod()
        raise ConfigurationError(
            f"unknown environment {name!r}; use one of {', '.join(PRESET_NAMES)} or a profile "
            "that sets 'tokenUrl' and 'submissionApiUrl'"
        )


def canonical_name(name: str) -> str:
    """Lower-cased environment name with aliases (``testing``, ``refz``, …) resolved."""
    key = name.strip().lower()
    return _ALIASES.get(key, key)


def load_certificates(anchor: TrustAnchorInput) -> list[x509.Certificate]:
    """Certificates from an object, PEM bundle / DER bytes, or a PEM/DER file path."""
    if isinstance(anchor, x509.Certificate):
        return [anchor]
    if isinstance(anchor, str | Path):
        path = Path(anchor)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigurationError(f"cannot read trust anchor file {path}: {exc}") from exc
    else:
        data = bytes(anchor)
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError as exc:
        raise ConfigurationError(
            "trust anchors must be X.509 certificates in PEM or DER form"
        ) from exc


__all__ = ["LOCAL_DEFAULT_BASE_URL", "PRESET_NAMES", "Environment", "TrustMode", "canonical_name"]
