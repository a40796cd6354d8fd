"""Identifiers and formats of FIT-Connect: UUIDs, Leistungsschlüssel, ARS/AGS, region scopes.

Every parser returns the canonical form and raises :class:`FormatError` naming the bad value.
"""

from __future__ import annotations

import re
import uuid

from fitconnect_kit.protocol.errors import FormatError

# --- UUIDs ---------------------------------------------------------------------------------------

# Patterns end in \Z (not $, which also matches before a final newline) and use re.ASCII (\d is
# [0-9], not every Unicode digit).
_UUID_RE = re.compile(
    r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}\Z"
)


def new_id() -> str:
    """A fresh random UUIDv4 in canonical lowercase hyphenated form."""
    return str(uuid.uuid4())


def parse_uuid(value: object, *, field: str = "id", require_v4: bool = False) -> str:
    """Return ``value`` as canonical UUID text, or raise :class:`FormatError`.

    FIT-Connect ids are UUIDs of 32–36 characters (hyphens optional on input). With
    ``require_v4`` the version and variant bits must be those of a random UUIDv4, which the spec
    demands for ids chosen by a sender (attachment ids).
    """
    if not isinstance(value, str) or not _UUID_RE.match(value):
        raise FormatError(f"{field} must be a UUID, got {value!r}", field=field, value=value)
    parsed = uuid.UUID(value)
    if require_v4 and (parsed.version != 4 or parsed.variant != uuid.RFC_4122):
        raise FormatError(
            f"{field} must be a random UUIDv4, got {value!r}", field=field, value=value
        )
    return str(parsed)


def is_uuid(value: object) -> bool:
    return isinstance(value, str) and bool(_UUID_RE.match(value))


# --- Leistungsschlüssel (service keys) ------------------------------------------------------------

LEIKA_URN_PREFIX = "urn:de:fim:leika:leistung:"
_LEIKA_KEY_RE = re.compile(r"^99\d{12}\Z", re.ASCII)
# Generic URN rule of the metadata schema (publicServiceType.identifier), 7–255 characters.
SERVICE_URN_RE = re.compile(r"^urn:[a-z0-9][a-z0-9-]{0,31}:[a-z0-9()+,.:=@;$_!*'%/?#-]+\Z")


def parse_leistungsschluessel(value: object) -> str:
    """Return the 14-digit Leistungsschlüssel of ``value`` (plain key or its LeiKa URN)."""
    if not isinstance(value, str):
        raise FormatError(f"Leistungsschlüssel must be text, got {value!r}", field="leikaKey")
    key = value[len(LEIKA_URN_PREFIX) :] if value.startswith(LEIKA_URN_PREFIX) else value
    if not _LEIKA_KEY_RE.match(key):
        raise FormatError(
            f"Leistungsschlüssel must be 14 digits starting with 99, got {value!r}",
            field="leikaKey",
            value=value,
        )
    return key


def leika_urn(key: str) -> str:
    """The URN ``urn:de:fim:leika:leistung:<key>`` for a Leistungsschlüssel."""
    return LEIKA_URN_PREFIX + parse_leistungsschluessel(key)


def parse_service_identifier(value: object) -> str:
    """Normalize a service identifier: a bare Leistungsschlüssel becomes its LeiKa URN.

    Other URNs are accepted when they match the metadata schema's URN rule (the spec allows a
    different unique URN while no Leistungsschlüssel exists); LeiKa URNs must carry a valid key.
    """
    if isinstance(value, str) and _LEIKA_KEY_RE.match(value):
        return LEIKA_URN_PREFIX + value
    if (
        not isinstance(value, str)
        or not (7 <= len(value) <= 255)
        or not SERVICE_URN_RE.match(value)
    ):
        raise FormatError(
            "service identifier must be a Leistungsschlüssel (99 + 12 digits) or a URN like "
            f"'urn:de:fim:leika:leistung:99…', got {value!r}",
            field="identifier",
            value=value,
        )
    if value.startswith(LEIKA_URN_PREFIX):
        parse_leistungsschluessel(value)
    return value


def is_leika_urn(value: str) -> bool:
    return value.startswith(LEIKA_URN_PREFIX) and bool(
        _LEIKA_KEY_RE.match(value[len(LEIKA_URN_PREFIX) :])
    )


# --- Regional keys -------------------------------------------------------------------------------

_ARS_RE = re.compile(r"^(\d{2}|\d{3}|\d{5}|\d{9}|\d{12})\Z", re.ASCII)
_AGS_RE = re.compile(r"^(\d{2}|\d{3}|\d{5}|\d{8})\Z", re.ASCII)
ARS_URN_PREFIX = "urn:de:bund:destatis:bevoelkerungsstatistik:schluessel:rs:"


def parse_ars(value: object) -> str:
    """Amtlicher Regionalschlüssel: 2 (Land), 3, 5 (Kreis), 9 (Verband) or 12 (Gemeinde) digits."""
    if not isinstance(value, str) or not _ARS_RE.match(value):
        raise FormatError(
            f"ARS must have 2, 3, 5, 9 or 12 digits, got {value!r}", field="ars", value=value
        )
    return value


def parse_ags(value: object) -> str:
    """Amtlicher Gemeindeschlüssel: 2, 3, 5 or 8 digits."""
    if not isinstance(value, str) or not _AGS_RE.match(value):
        raise FormatError(
            f"AGS must have 2, 3, 5 or 8 digits, got {value!r}", field="ags", value=value
        )
    return value


# --- Regions and send scopes ---------------------------------------------------------------------

SEND_REGION_SCOPE_PREFIX = "send:region:"
# A region is "DE" followed by a (possibly partial) ARS: 0–12 digits.
_REGION_RE = re.compile(r"^DE\d{0,12}\Z", re.ASCII)


def parse_region(value: object) -> str:
    """A region as used in destination services and send scopes: ``DE`` + up to 12 ARS digits."""
    if not isinstance(value, str) or not _REGION_RE.match(value):
        raise FormatError(
            f"region must be 'DE' followed by up to 12 ARS digits, got {value!r}",
            field="region",
            value=value,
        )
    return value


def region_of_scope(scope: str) -> str | None:
    """The region of a ``send:region:DE…`` scope, or ``None`` for any other scope."""
    if not scope.startswith(SEND_REGION_SCOPE_PREFIX):
        return None
    return parse_region(scope[len(SEND_REGION_SCOPE_PREFIX) :])


def send_region_scope(region: str) -> str:
    return SEND_REGION_SCOPE_PREFIX + parse_region(region)


def region_allows(scope_region: str, destination_region: str) -> bool:
    """Whether a send scope for ``scope_region`` covers ``destination_region`` (prefix match).

    ``send:region:DE`` covers everything; ``send:region:DE0101`` covers ``DE010101…`` but not
    ``DE02``. A destination region that is *wider* than the scope is not covered.
    """
    return destination_region.startswith(scope_region)
