"""Destinations (Zustellpunkte): public and owner views, management, keys (reference §4).

* Views: :func:`public_view` (what senders need: status, services with schemas, regions and
  reply channels, ``encryptionKid``, metadata versions; top-level ``replyChannels`` = channels
  common to all services) and :func:`owner_view` (plus ``callback {url}``, never the secret,
  ``contactInformation``, ``name``).
* Management by subscribers with the manage scope: :func:`create_destination` (the creator is
  linked with ``can_manage``), :func:`replace_destination` (PUT), :func:`patch_destination`,
  :func:`add_key`, :func:`delete_destination`. Status rules (§4.3): never back to ``created``;
  ``decommissioned`` only from ``inactive`` after 30 days and final; ``active`` needs an
  encryption key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import ConfigDict, Field
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from fitconnect_kit.protocol.api import (
    SUBMISSION_SCHEMA_MIME_TYPES,
    ApiModel,
    CallbackConfig,
    CallbackInfo,
    ContactInformation,
    DestinationCreate,
    DestinationPatch,
    DestinationService,
    DestinationStatus,
    DestinationUpdate,
    NonEmptyStr,
    PublicDestination,
    ReplyChannels,
    Uuid,
)
from fitconnect_kit.protocol.errors import CertificateError, FitConnectError
from fitconnect_kit.protocol.ids import new_id, parse_region
from fitconnect_kit.protocol.jose.jwk import PRIVATE_MEMBERS
from fitconnect_kit.protocol.keys import (
    KeyPurpose,
    KeyRuleViolationError,
    infer_purpose,
    validate_destination_key,
)
from fitconnect_kit.protocol.problems import ApiProblems
from fitconnect_kit.server.admin import AdminInputError, check_callback_target
from fitconnect_kit.server.compat import (
    DECOMMISSION_WAIT_DAYS,
    DELETABLE_DESTINATION_STATUSES,
    NEW_DESTINATION_STATUS,
    PATCH_NULL_REMOVES,
)
from fitconnect_kit.server.problems import ApiError
from fitconnect_kit.server.storage.models import (
    NAME_MAX_LENGTH,
    ClientDestination,
    Destination,
    DestinationKey,
)

if TYPE_CHECKING:
    from fitconnect_kit.server.auth import Principal
    from fitconnect_kit.server.state import ZdState

DECOMMISSION_WAIT = timedelta(days=DECOMMISSION_WAIT_DAYS)
_METADATA_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+\Z", re.ASCII)


# --- wire models the protocol package does not have -------------------------------------------


class OwnerDestination(ApiModel):
    """Owner view (management API): the public view plus ``callback`` (URL only),
    ``contactInformation`` and ``name``; ``encryptionKid`` is absent until a key is chosen."""

    destination_id: Uuid = Field(alias="destinationId")
    status: DestinationStatus
    services: list[DestinationService] = Field(default_factory=list)
    encryption_kid: str | None = Field(default=None, alias="encryptionKid")
    metadata_versions: list[str] = Field(default_factory=list, alias="metadataVersions")
    reply_channels: ReplyChannels | None = Field(default=None, alias="replyChannels")
    callback: CallbackInfo | None = None
    contact_information: ContactInformation | None = Field(default=None, alias="contactInformation")
    name: str | None = None


class DestinationList(ApiModel):
    """Response of ``GET /v1/destinations`` (the client's own destinations)."""

    count: int = Field(ge=0)
    offset: int = Field(ge=0)
    total_count: int = Field(ge=0, alias="totalCount")
    destinations: list[OwnerDestination] = Field(default_factory=list)


class PublicJwk(ApiModel):
    """A public RSA JWK of a destination as registered (further members are kept)."""

    model_config = ConfigDict(extra="allow")

    kty: NonEmptyStr
    kid: NonEmptyStr
    alg: str | None = None
    key_ops: list[str] | None = None
    use: str | None = None
    n: NonEmptyStr
    e: NonEmptyStr
    x5c: list[str] | None = None


# --- views -------------------------------------------------------------------------------------


def _service_channels(destination: Destination) -> list[dict[str, Any]]:
    """Each service's reply channels; the destination-wide ones where a service has none."""
    fallback = destination.reply_channels or {}
    return [dict(s.get("replyChannels") or fallback) for s in destination.services]


def _public_fields(destination: Destination) -> dict[str, Any]:
    channels = _service_channels(destination)
    services = []
    for service, own in zip(destination.services, channels, strict=True):
        entry = {k: v for k, v in service.items() if k != "replyChannels"}
        if own:
            entry["replyChannels"] = own
        services.append(entry)
    common: dict[str, Any] = {}
    if channels:
        first, *rest = channels
        common = {name: value for name, value in first.items() if all(name in c for c in rest)}
    result: dict[str, Any] = {
        "destinationId": destination.destination_id,
        "status": destination.status,
        "services": services,
        "encryptionKid": destination.encryption_kid,
        "metadataVersions": list(destination.metadata_versions),
    }
    if common:
        result["replyChannels"] = common
    return result


def public_view(destination: Destination) -> PublicDestination:
    return PublicDestination.model_validate(_public_fields(destination))


def owner_view(destination: Destination) -> OwnerDestination:
    fields = _public_fields(destination)
    if destination.callback_url:
        fields["callback"] = {"url": destination.callback_url}
    if destination.contact_information is not None:
        fields["contactInformation"] = destination.contact_information
    if destination.name is not None:
        fields["name"] = destination.name
    return OwnerDestination.model_validate(fields)


def is_manager(principal: Principal, destination_id: str) -> bool:
    return principal.can_manage and destination_id in principal.managed_destination_ids


def not_found(destination_id: str) -> ApiError:
    return ApiError(ApiProblems.DESTINATION_NOT_FOUND, f"destination {destination_id} not found")


async def destination_view(
    session: AsyncSession, principal: Principal, destination_id: str
) -> PublicDestination | OwnerDestination:
    """``GET /v1/destinations/{id}``: the owner view for managers, else the public view."""
    try:
        destination = await session.get(Destination, destination_id)
        if destination is None:
            raise not_found(destination_id)
        if is_manager(principal, destination_id):
            return owner_view(destination)
        if not destination.encryption_kid:
            raise ApiError(
                ApiProblems.DESTINATION_NOT_FOUND,
                f"destination {destination_id} is not available yet (no encryption key)",
            )
        return public_view(destination)
    finally:
        await session.rollback()


async def destination_key(session: AsyncSession, destination_id: str, kid: str) -> PublicJwk:
    """``GET /v1/destinations/{id}/keys/{kid}``: a registered public JWK."""
    try:
        if await session.get(Destination, destination_id) is None:
            raise not_found(destination_id)
        key = await session.get(DestinationKey, (destination_id, kid))
        if key is None:
            raise ApiError(
                ApiProblems.KEY_NOT_FOUND,
                f"destination {destination_id} has no key with kid {kid!r}",
            )
        return PublicJwk.model_validate(key.jwk)
    finally:
        await session.rollback()


async def own_destinations(
    session: AsyncSession, principal: Principal, *, offset: int, limit: int
) -> DestinationList:
    """``GET /v1/destinations``: the destinations this client may manage."""
    ids = sorted(principal.managed_destination_ids)
    try:
        condition = Destination.destination_id.in_(ids)
        total = await session.scalar(select(func.count()).select_from(Destination).where(condition))
        rows = list(
            await session.scalars(
                select(Destination)
                .where(condition)
                .order_by(Destination.created_at, Destination.destination_id)
                .offset(offset)
                .limit(limit)
            )
        )
        return DestinationList(
            count=len(rows),
            offset=offset,
            total_count=int(total or 0),
            destinations=[owner_view(d) for d in rows],
        )
    finally:
        await session.rollback()


# --- validation of management bodies -------------------------------------------------------------


class _Violations:
    def __init__(self) -> None:
        self.items: list[dict[str, str]] = []

    def add(self, path: str, message: str) -> None:
        self.items.append({"path": path, "message": message})

    def raise_if_any(self, ptype: Any = ApiProblems.INVALID_REQUEST_BODY) -> None:
        if self.items:
            first = self.items[0]
            more = f" (and {len(self.items) - 1} more)" if len(self.items) > 1 else ""
            raise ApiError(
                ptype, f"{first['path']}: {first['message']}{more}", violations=self.items
            )


def _checked_services(
    services: Sequence[DestinationService], violations: _Violations
) -> list[dict[str, Any]]:
    result = []
    seen: set[str] = set()
    for index, service in enumerate(services):
        where = f"$.services[{index}]"
        if service.identifier in seen:
            violations.add(f"{where}.identifier", f"service {service.identifier} is listed twice")
        seen.add(service.identifier)
        if not service.submission_schemas:
            violations.add(f"{where}.submissionSchemas", "at least one submission schema needed")
        for position, schema in enumerate(service.submission_schemas):
            if schema.mime_type not in SUBMISSION_SCHEMA_MIME_TYPES:
                allowed = " or ".join(SUBMISSION_SCHEMA_MIME_TYPES)
                violations.add(
                    f"{where}.submissionSchemas[{position}].mimeType", f"must be {allowed}"
                )
        for position, region in enumerate(service.regions):
            try:
                parse_region(region)
            except FitConnectError:
                violations.add(
                    f"{where}.regions[{position}]",
                    "must be 'DE' followed by up to 12 digits of an ARS",
                )
        result.append(service.to_json())
    return result


def _check_name(name: str | None, violations: _Violations) -> None:
    if name is not None and len(name) > NAME_MAX_LENGTH:
        violations.add("$.name", f"must have at most {NAME_MAX_LENGTH} characters")


def _checked_versions(versions: Sequence[str], violations: _Violations) -> list[str]:
    for index, version in enumerate(versions):
        if not _METADATA_VERSION_RE.match(version):
            violations.add(f"$.metadataVersions[{index}]", "must be a version like 1.0.0")
    return list(dict.fromkeys(versions))


async def _checked_callback(zd: ZdState, callback: CallbackConfig) -> tuple[str, str]:
    try:
        url = await check_callback_target(callback.url, zd.config)
    except AdminInputError as exc:
        raise ApiError(ApiProblems.INVALID_CALLBACK, f"callback.url: {exc}") from None
    return url, callback.secret.get_secret_value()


def _checked_key(zd: ZdState, jwk: Mapping[str, Any], where: str) -> KeyPurpose:
    """Validate a public destination JWK (key rules and x5c under the trust policy)."""
    untrusted: object = jwk
    if not isinstance(untrusted, Mapping):
        raise ApiError(ApiProblems.INVALID_KEY, f"{where}: a JWK must be a JSON object")
    private = [member for member in PRIVATE_MEMBERS if member in jwk]
    if private:
        raise ApiError(
            ApiProblems.INVALID_KEY,
            f"{where}: the JWK contains private key members ({', '.join(private)}); only "
            "public keys are registered — treat the private key as compromised",
            violations=[{"path": f"{where}.{private[0]}", "message": "private key member"}],
        )
    try:
        validate_destination_key(jwk, policy=zd.trust_policy, clock=zd.clock)
    except KeyRuleViolationError as exc:
        violations = [
            {"path": where + v.path.removeprefix("$"), "message": v.message} for v in exc.violations
        ]
        raise ApiError(ApiProblems.INVALID_KEY, f"{where}: {exc}", violations=violations) from None
    except CertificateError as exc:
        raise ApiError(
            ApiProblems.INVALID_KEY,
            f"{where}.x5c: {exc}",
            violations=[{"path": f"{where}.x5c", "message": str(exc)}],
        ) from None
    except FitConnectError as exc:
        raise ApiError(ApiProblems.INVALID_KEY, f"{where}: {exc}") from None
    purpose = infer_purpose(jwk)
    assert purpose is not None  # validated keys declare their purpose
    return purpose


def _checked_public_keys(
    zd: ZdState, public_keys: Mapping[str, Any] | None
) -> list[tuple[dict[str, Any], KeyPurpose]]:
    if public_keys is None:
        return []
    keys = public_keys.get("keys")
    if not isinstance(keys, list):
        raise ApiError(
            ApiProblems.INVALID_REQUEST_BODY,
            '$.publicKeys: must be a JWK Set {"keys": [...]}',
            violations=[{"path": "$.publicKeys.keys", "message": "must be an array of JWKs"}],
        )
    result: list[tuple[dict[str, Any], KeyPurpose]] = []
    kids: set[str] = set()
    for index, jwk in enumerate(keys):
        where = f"$.publicKeys.keys[{index}]"
        purpose = _checked_key(zd, jwk, where)
        kid = str(jwk["kid"])
        if kid in kids:
            raise ApiError(ApiProblems.INVALID_KEY, f"{where}.kid: kid {kid!r} is used twice")
        kids.add(kid)
        result.append((dict(jwk), purpose))
    return result


def _unknown_encryption_kid(kid: str) -> ApiError:
    return ApiError(
        ApiProblems.INVALID_REQUEST_BODY,
        f"$.encryptionKid: {kid!r} names no registered encryption key of this destination",
        violations=[{"path": "$.encryptionKid", "message": "no such encryption key"}],
    )


def _destination_state_invalid(detail: str) -> ApiError:
    return ApiError(ApiProblems.DESTINATION_STATE_INVALID, detail)


def _apply_status(destination: Destination, new: DestinationStatus, now: datetime) -> None:
    old = DestinationStatus(destination.status)
    if new is old:
        return
    if new is DestinationStatus.CREATED:
        raise _destination_state_invalid("a destination's status cannot be set back to created")
    if new is DestinationStatus.DECOMMISSIONED:
        if old is not DestinationStatus.INACTIVE:
            raise _destination_state_invalid(
                f"only an inactive destination can be decommissioned; this one is {old.value}"
            )
        ready = destination.status_changed_at + DECOMMISSION_WAIT
        if now < ready:
            raise _destination_state_invalid(
                f"the destination is inactive since {destination.status_changed_at:%Y-%m-%d}; "
                f"it can be decommissioned {DECOMMISSION_WAIT_DAYS} days later, from "
                f"{ready:%Y-%m-%d %H:%M} UTC"
            )
    destination.status = new.value
    destination.status_changed_at = now


def _require_changeable(destination: Destination) -> None:
    if destination.status == DestinationStatus.DECOMMISSIONED.value:
        raise _destination_state_invalid(
            f"destination {destination.destination_id} is decommissioned; it cannot be changed"
        )


def _require_encryption_key_if_active(destination: Destination) -> None:
    if destination.status == DestinationStatus.ACTIVE.value and not destination.encryption_kid:
        raise _destination_state_invalid(
            "an active destination needs an encryptionKid (register an encryption key first)"
        )


async def _encryption_kids(session: AsyncSession, destination_id: str) -> set[str]:
    return set(
        await session.scalars(
            select(DestinationKey.kid).where(
                DestinationKey.destination_id == destination_id,
                DestinationKey.purpose == KeyPurpose.ENCRYPTION.value,
            )
        )
    )


# --- create, replace, patch, delete ---------------------------------------------------------


async def create_destination(
    session: AsyncSession, zd: ZdState, principal: Principal, body: DestinationCreate
) -> OwnerDestination:
    """``POST /v1/destinations``: a new destination managed by the calling client."""
    violations = _Violations()
    services = _checked_services(body.services, violations)
    versions = _checked_versions(body.metadata_versions, violations)
    _check_name(body.name, violations)
    violations.raise_if_any()
    keys = _checked_public_keys(zd, body.public_keys)
    encryption_kids = [jwk["kid"] for jwk, purpose in keys if purpose is KeyPurpose.ENCRYPTION]
    encryption_kid = body.encryption_kid
    if encryption_kid is None and len(encryption_kids) == 1:
        encryption_kid = encryption_kids[0]
    if encryption_kid is not None and encryption_kid not in encryption_kids:
        raise _unknown_encryption_kid(encryption_kid)
    callback_url = callback_secret = None
    if body.callback is not None:
        callback_url, callback_secret = await _checked_callback(zd, body.callback)

    now = zd.clock.now()
    destination = Destination(
        destination_id=new_id(),
        status=NEW_DESTINATION_STATUS,
        name=body.name,
        services=services,
        metadata_versions=versions,
        reply_channels=body.reply_channels.to_json() if body.reply_channels else None,
        encryption_kid=encryption_kid,
        callback_url=callback_url,
        callback_secret=callback_secret,
        contact_information=(
            body.contact_information.to_json() if body.contact_information else None
        ),
        created_at=now,
        updated_at=now,
        status_changed_at=now,
    )
    session.add(destination)
    await session.flush()
    for jwk, purpose in keys:
        session.add(
            DestinationKey(
                destination_id=destination.destination_id,
                kid=jwk["kid"],
                purpose=purpose.value,
                jwk=jwk,
                created_at=now,
            )
        )
    session.add(
        ClientDestination(
            client_id=principal.client_id,
            destination_id=destination.destination_id,
            can_manage=True,
            created_at=now,
        )
    )
    await session.commit()
    return owner_view(destination)


async def locked_destination(session: AsyncSession, destination_id: str) -> Destination:
    destination = await session.scalar(
        select(Destination)
        .where(Destination.destination_id == destination_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if destination is None:
        raise not_found(destination_id)
    return destination


async def destination_exists(session: AsyncSession, destination_id: str) -> bool:
    found = await session.scalar(
        select(Destination.destination_id).where(Destination.destination_id == destination_id)
    )
    return found is not None


async def replace_destination(
    session: AsyncSession, zd: ZdState, destination_id: str, body: DestinationUpdate
) -> OwnerDestination:
    """``PUT /v1/destinations/{id}``: replace every changeable member."""
    destination = await locked_destination(session, destination_id)
    _require_changeable(destination)
    violations = _Violations()
    services = _checked_services(body.services, violations)
    versions = _checked_versions(body.metadata_versions, violations)
    _check_name(body.name, violations)
    violations.raise_if_any()
    if body.encryption_kid not in await _encryption_kids(session, destination_id):
        raise _unknown_encryption_kid(body.encryption_kid)
    callback: tuple[str, str] | tuple[None, None] = (None, None)
    if body.callback is not None:
        callback = await _checked_callback(zd, body.callback)
    now = zd.clock.now()
    destination.encryption_kid = body.encryption_kid
    _apply_status(destination, body.status, now)
    destination.services = services
    destination.metadata_versions = versions
    destination.reply_channels = body.reply_channels.to_json() if body.reply_channels else None
    destination.callback_url, destination.callback_secret = callback
    destination.contact_information = (
        body.contact_information.to_json() if body.contact_information else None
    )
    destination.name = body.name
    destination.updated_at = now
    _require_encryption_key_if_active(destination)
    await session.commit()
    return owner_view(destination)


#: PATCH members that an explicit ``null`` may not remove (python names of DestinationPatch).
_REQUIRED_PATCH_MEMBERS = frozenset({"status", "services", "encryption_kid", "metadata_versions"})


async def patch_destination(
    session: AsyncSession, zd: ZdState, destination_id: str, body: DestinationPatch
) -> OwnerDestination:
    """``PATCH /v1/destinations/{id}``: change only the members that were sent.

    Merge-patch semantics (RFC 7396) for ``null``: an explicit ``null`` removes an optional
    member (``callback``, ``contactInformation``, ``name``, ``replyChannels``); members every
    destination must have (``status``, ``services``, ``encryptionKid``, ``metadataVersions``)
    cannot be removed (422 ``invalid-request-body``). An absent member stays as it is.
    """
    destination = await locked_destination(session, destination_id)
    _require_changeable(destination)
    changed = body.changed_fields()
    removed = {name for name in body.model_fields_set if getattr(body, name) is None}
    if not PATCH_NULL_REMOVES:
        removed = set()
    violations = _Violations()
    for name in sorted(removed & _REQUIRED_PATCH_MEMBERS):
        alias = DestinationPatch.model_fields[name].alias or name
        violations.add(f"$.{alias}", "cannot be removed (null); send a value or leave it out")
    services = _checked_services(body.services or [], violations)
    versions = _checked_versions(body.metadata_versions or [], violations)
    _check_name(body.name, violations)
    violations.raise_if_any()
    if body.encryption_kid is not None and body.encryption_kid not in await _encryption_kids(
        session, destination_id
    ):
        raise _unknown_encryption_kid(body.encryption_kid)
    callback = await _checked_callback(zd, body.callback) if body.callback is not None else None
    now = zd.clock.now()
    if body.encryption_kid is not None:
        destination.encryption_kid = body.encryption_kid
    if body.status is not None:
        _apply_status(destination, body.status, now)
    if "services" in changed:
        destination.services = services
    if "metadata_versions" in changed:
        destination.metadata_versions = versions
    if body.reply_channels is not None:
        destination.reply_channels = body.reply_channels.to_json()
    elif "reply_channels" in removed:
        destination.reply_channels = None
    if callback is not None:
        destination.callback_url, destination.callback_secret = callback
    elif "callback" in removed:
        # Pending deliveries keep their target URL but find no secret any more: they fail at
        # once instead of being signed with nothing (workers/callbacks.py).
        destination.callback_url = destination.callback_secret = None
    if body.contact_information is not None:
        destination.contact_information = body.contact_information.to_json()
    elif "contact_information" in removed:
        destination.contact_information = None
    if body.name is not None:
        destination.name = body.name
    elif "name" in removed:
        destination.name = None
    destination.updated_at = now
    _require_encryption_key_if_active(destination)
    await session.commit()
    return owner_view(destination)


async def delete_destination(session: AsyncSession, destination_id: str) -> None:
    """``DELETE /v1/destinations/{id}``: only while still ``created`` (never had submissions)."""
    destination = await locked_destination(session, destination_id)
    if destination.status not in DELETABLE_DESTINATION_STATUSES:
        raise _destination_state_invalid(
            f"destination {destination_id} is {destination.status}; only destinations in "
            f"status {' or '.join(DELETABLE_DESTINATION_STATUSES)} can be deleted "
            "(set it inactive and later decommissioned instead)"
        )
    await session.execute(delete(Destination).where(Destination.destination_id == destination_id))
    await session.commit()


async def add_key(
    session: AsyncSession, zd: ZdState, destination_id: str, jwk: Mapping[str, Any]
) -> PublicJwk:
    """``POST /v1/destinations/{id}/keys``: register a public encryption or signature key."""
    destination = await locked_destination(session, destination_id)
    _require_changeable(destination)
    purpose = _checked_key(zd, jwk, "$")
    kid = str(jwk["kid"])
    conflict = ApiError(
        ApiProblems.KEY_ALREADY_EXISTS,
        f"destination {destination_id} already has a key with kid {kid!r}",
    )
    if await session.get(DestinationKey, (destination_id, kid)) is not None:
        raise conflict
    now = zd.clock.now()
    session.add(
        DestinationKey(
            destination_id=destination_id,
            kid=kid,
            purpose=purpose.value,
            jwk=dict(jwk),
            created_at=now,
        )
    )
    destination.updated_at = now
    try:
        await session.flush()
    except IntegrityError:
        await session.rollback()
        raise conflict from None
    await session.commit()
    return PublicJwk.model_validate(dict(jwk))
