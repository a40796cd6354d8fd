"""Reading and verifying event logs (shared by the sender and the subscriber SDK).

Every SET of a log is verified before anything is derived from it (reference §8.5):

* SETs of the Zustelldienst (``iss`` is an http(s) URL) with the Zustelldienst's JWKS from
  ``<ZD root>/.well-known/jwks.json`` — cached, and fetched again once when a ``kid`` is unknown
  (key rotation);
* SETs of the receiving system (``iss`` is a destination id) with the destination's signature key
  ``GET /v1/destinations/{iss}/keys/{kid}``, which must pass the FIT-Connect key rules for
  ``PS512``/``verify`` and the environment's x5c trust policy; ``iss`` must be the submission's
  destination.

Any failure raises :class:`~fitconnect_kit.client.errors.EventLogVerificationError`; a log is
never half-trusted.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from pydantic import ValidationError

from fitconnect_kit.client._http import HttpCore
from fitconnect_kit.client.errors import (
    ApiError,
    ConfigurationError,
    EventLogVerificationError,
    InvalidResponseError,
    NotFoundError,
    TransportError,
)
from fitconnect_kit.protocol.api import EVENT_LOG_PAGE_MAX, EventLog
from fitconnect_kit.protocol.clock import SYSTEM_CLOCK, Clock
from fitconnect_kit.protocol.errors import FitConnectError
from fitconnect_kit.protocol.events import (
    AuthenticationTags,
    Event,
    ParsedSet,
    SecurityEventToken,
    SetKeyNotFoundError,
    check_verification_jwk,
    parse_set_token,
    verify_parsed_set,
)
from fitconnect_kit.protocol.ids import parse_uuid
from fitconnect_kit.protocol.jose.jwk import find_key, jwks_keys, public_key_from_jwk
from fitconnect_kit.protocol.keys import KeyPurpose, validate_destination_key

if TYPE_CHECKING:
    from fitconnect_kit.protocol.keys import TrustPolicy
    from fitconnect_kit.protocol.problems import Problem

log = logging.getLogger("fitconnect_kit.client.eventlog")

JWKS_TTL_SECONDS = 3600.0
_JWKS_MIN_REFETCH_SECONDS = 30.0
#: Verified SETs remembered (a status poll re-reads the whole log; only new SETs need work).
VERIFIED_CACHE_SIZE = 4096
#: Parsed SETs remembered: a log is parsed to pick a submission's SETs, then verified.
PARSED_CACHE_SIZE = 256


@dataclass(frozen=True)
class VerifiedEvent:
    """A SET whose signature and claims were verified, and who signed it."""

    set: SecurityEventToken
    signer: str  # "zustelldienst" or "destination"

    @property
    def event(self) -> Event:
        return self.set.event

    @property
    def name(self) -> str:
        """Short event name, e.g. ``accept-submission``."""
        return self.set.event.short_name

    @property
    def issued_at(self) -> datetime:
        return datetime.fromtimestamp(self.set.issued_at, tz=UTC)

    @property
    def issuer(self) -> str:
        return self.set.issuer

    @property
    def submission_id(self) -> str | None:
        return self.set.submission_id

    @property
    def case_id(self) -> str:
        return self.set.case_id

    @property
    def problems(self) -> list[Problem]:
        return self.set.problems

    @property
    def authentication_tags(self) -> AuthenticationTags | None:
        return self.set.authentication_tags

    def to_json(self) -> dict[str, Any]:
        """A JSON-friendly summary (no token)."""
        data: dict[str, Any] = {
            "event": self.name,
            "issuedAt": self.issued_at.isoformat().replace("+00:00", "Z"),
            "issuer": self.issuer,
            "signer": self.signer,
            "jti": self.set.jti,
            "subject": self.set.subject,
            "caseId": self.case_id,
        }
        tags = self.authentication_tags
        if tags is not None:
            data["authenticationTags"] = tags.to_json()
        if self.set.event in (Event.REJECT_SUBMISSION, Event.REJECT_REPLY):
            data["problems"] = [p.to_json() for p in self.problems]
        notify = self.set.payload.get("notifyType")
        if notify is not None:
            data["notifyType"] = notify
        return data


class EventLogReader:
    """Fetches and verifies event logs through an :class:`HttpCore`."""

    def __init__(
        self,
        core: HttpCore,
        *,
        trust_policy: Callable[[], TrustPolicy],
        clock: Clock = SYSTEM_CLOCK,
        jwks_ttl: float = JWKS_TTL_SECONDS,
    ) -> None:
        self.core = core
        self._trust_policy = trust_policy
        self.clock = clock
        self.jwks_ttl = jwks_ttl
        self._jwks: Mapping[str, Any] | None = None
        self._jwks_fetched_at = 0.0
        # kid → checked public key of the JWKS fetched last (emptied when it is fetched again).
        self._zd_keys: dict[str, RSAPublicKey] = {}
        self._parsed: OrderedDict[str, ParsedSet] = OrderedDict()
        self._dest_keys: dict[tuple[str, str], RSAPublicKey] = {}
        # (token, expected case, expected destination) → (verified at, event, receiver issuer):
        # a token verifies the same way every time; entries expire with the JWKS TTL.
        self._verified: OrderedDict[
            tuple[str, str | None, str | None], tuple[float, VerifiedEvent, str | None]
        ] = OrderedDict()

    # --- fetching ----------------------------------------------------------------------------

    async def fetch(
        self, *, case_id: str | None = None, submission_id: str | None = None
    ) -> list[str]:
        """All SETs of a case log (``case_id``) or of one submission's log, all pages."""
        if case_id is not None:
            path = f"/cases/{parse_uuid(case_id, field='case id')}/events"
            what = f"event log of case {case_id}"
        elif submission_id is not None:
            path = f"/submissions/{parse_uuid(submission_id, field='submission id')}/events"
            what = f"event log of submission {submission_id}"
        else:
            raise ValueError("case_id or submission_id is required")
        tokens: list[str] = []
        offset = 0
        while True:
            data = await self.core.get_json(
                path, params={"offset": offset, "limit": EVENT_LOG_PAGE_MAX}, what=what
            )
            try:
                page = EventLog.model_validate(data)
            except ValidationError as exc:
                raise InvalidResponseError(
                    f"{what}: the answer is not an event log ({{'eventLog': [...]}})",
                    status=200,
                    url=self.core.environment.api_url(path),
                ) from exc
            tokens.extend(page.event_log)
            offset += len(page.event_log)
            if not page.event_log:
                break
            if page.total_count is not None:
                if offset >= page.total_count:
                    break
            elif len(page.event_log) < EVENT_LOG_PAGE_MAX:
                break
        log.debug("%s: %d SETs", what, len(tokens))
        return tokens

    # --- keys ----------------------------------------------------------------------------------

    async def zustelldienst_jwks(self, *, refresh: bool = False) -> Mapping[str, Any]:
        """The Zustelldienst's JWKS (cached for ``jwks_ttl`` seconds)."""
        age = time.monotonic() - self._jwks_fetched_at
        if self._jwks is None or refresh or age > self.jwks_ttl:
            url = self.core.environment.jwks_url
            data = await self.core.get_json(url, auth=False, what="Zustelldienst JWKS")
            try:
                jwks_keys(data)
            except FitConnectError as exc:
                raise InvalidResponseError(
                    f"{url} is not a JWK Set: {exc}", status=200, method="GET", url=url
                ) from exc
            self._jwks = data
            self._jwks_fetched_at = time.monotonic()
            self._zd_keys = {}
        return self._jwks

    async def zustelldienst_key(self, kid: str) -> RSAPublicKey:
        """The Zustelldienst's SET verification key ``kid`` (checked with the JWK rules for
        SETs), converted once per fetched JWKS. Raises
        :class:`~fitconnect_kit.protocol.events.SetKeyNotFoundError` for an unknown ``kid``."""
        await self._jwks_for(kid)  # fetches the JWKS (again) when needed
        # No await from here on: the cached keys always belong to the current JWKS.
        jwks = self._jwks
        assert jwks is not None
        key = self._zd_keys.get(kid)
        if key is None:
            jwk = find_key(jwks_keys(jwks), kid)
            if jwk is None:
                raise SetKeyNotFoundError(f"no key with kid {kid!r} in the JWKS")
            check_verification_jwk(jwk, kid)
            key = public_key_from_jwk(jwk)
            self._zd_keys[kid] = key
        return key

    async def _jwks_for(self, kid: str) -> Mapping[str, Any]:
        jwks = await self.zustelldienst_jwks()
        stale = time.monotonic() - self._jwks_fetched_at >= _JWKS_MIN_REFETCH_SECONDS
        if find_key(jwks_keys(jwks), kid) is None and stale:
            log.info("unknown Zustelldienst key %r, fetching the JWKS again", kid)
            jwks = await self.zustelldienst_jwks(refresh=True)
        return jwks

    async def destination_signing_key(self, destination_id: str, kid: str) -> RSAPublicKey:
        """The destination's SET verification key, checked with key rules and trust policy."""
        cache_key = (destination_id, kid)
        cached = self._dest_keys.get(cache_key)
        if cached is not None:
            return cached
        jwk = await self.core.get_json(
            f"/destinations/{destination_id}/keys/{kid}",
            what=f"signature key {kid!r} of destination {destination_id}",
        )
        if not isinstance(jwk, dict):
            raise EventLogVerificationError(
                f"destination {destination_id} returned no JWK for signature key {kid!r}"
            )
        if jwk.get("kid") != kid:
            raise EventLogVerificationError(
                f"destination {destination_id} returned key {jwk.get('kid')!r} when asked for "
                f"signature key {kid!r}"
            )
        policy = self._trust_policy()
        key = validate_destination_key(
            jwk, purpose=KeyPurpose.SIGNATURE, policy=policy, clock=self.clock
        )
        self._dest_keys[cache_key] = key
        return key

    # --- verification --------------------------------------------------------------------------

    def parse(self, token: str) -> ParsedSet:
        """:func:`~fitconnect_kit.protocol.events.parse_set_token`, remembered for the last
        few tokens (picking a submission's SETs out of a log parses them before
        :meth:`verify` does). Raises what parsing raises."""
        parsed = self._parsed.get(token)
        if parsed is not None:
            self._parsed.move_to_end(token)
            return parsed
        parsed = parse_set_token(token)
        self._parsed[token] = parsed
        while len(self._parsed) > PARSED_CACHE_SIZE:
            self._parsed.popitem(last=False)
        return parsed

    def _remember(
        self,
        key: tuple[str, str | None, str | None],
        event: VerifiedEvent,
        receiver_issuer: str | None,
    ) -> None:
        self._verified[key] = (time.monotonic(), event, receiver_issuer)
        while len(self._verified) > VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)

    async def verify(
        self,
        tokens: Sequence[str],
        *,
        case_id: str | None = None,
        destination_id: str | None = None,
    ) -> list[VerifiedEvent]:
        """Verify every SET; raise :class:`EventLogVerificationError` listing all failures.

        ``destination_id``: the destination that must have issued every receiver SET. Without
        it, all receiver SETs must at least come from one and the same destination. A token
        verified before (same expected case and destination, within the JWKS TTL) is not
        verified again — status polls re-read the whole log.
        """
        verified: list[VerifiedEvent] = []
        problems: list[str] = []
        receiver_issuers: set[str] = set()
        expected_dest = parse_uuid(destination_id) if destination_id else None
        now = time.monotonic()
        for index, token in enumerate(tokens):
            cache_key = (token, case_id, expected_dest)
            hit = self._verified.get(cache_key)
            if hit is not None and now - hit[0] < self.jwks_ttl:
                self._verified.move_to_end(cache_key)
                if hit[2] is not None:
                    receiver_issuers.add(hit[2])
                verified.append(hit[1])
                continue
            where = f"event #{index + 1}"
            try:
                parsed_set = self.parse(token)
            except FitConnectError as exc:
                problems.append(f"{where}: not a valid SET: {exc}")
                continue
            parsed = parsed_set.set
            where = f"event #{index + 1} ({parsed.event.short_name}, jti {parsed.jti})"
            try:
                if parsed.issued_by_zustelldienst:
                    zd_key = await self.zustelldienst_key(parsed.kid)
                    st = verify_parsed_set(parsed_set, zd_key, expected_case_id=case_id)
                    verified.append(VerifiedEvent(st, "zustelldienst"))
                    self._remember(cache_key, verified[-1], None)
                else:
                    issuer = parse_uuid(parsed.issuer)
                    if expected_dest is not None and issuer != expected_dest:
                        problems.append(
                            f"{where}: issued by destination {issuer}, but the submission was "
                            f"sent to destination {expected_dest}"
                        )
                        continue
                    receiver_issuers.add(issuer)
                    key = await self.destination_signing_key(issuer, parsed.kid)
                    st = verify_parsed_set(
                        parsed_set, key, expected_case_id=case_id, expected_issuer=issuer
                    )
                    verified.append(VerifiedEvent(st, "destination"))
                    self._remember(cache_key, verified[-1], issuer)
            except NotFoundError as exc:
                problems.append(f"{where}: verification key not found: {exc}")
            except (ConfigurationError, ApiError, TransportError):
                raise
            except FitConnectError as exc:
                problems.append(f"{where}: {exc}")
        if expected_dest is None and len(receiver_issuers) > 1:
            problems.append(
                "receiver events were issued by several destinations: "
                + ", ".join(sorted(receiver_issuers))
            )
        if problems:
            raise EventLogVerificationError(
                f"the event log cannot be trusted ({len(problems)} problem(s)): {problems[0]}",
                problems=problems,
            )
        return verified


__all__ = ["EventLogReader", "VerifiedEvent"]
