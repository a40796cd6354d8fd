"""Identifiers: UUIDs, Leistungsschlüssel and service URNs, ARS/AGS, regions and send scopes."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fitconnect_kit.protocol import ids
from fitconnect_kit.protocol.errors import FormatError

V4 = "0b799252-deb9-42b0-98d3-c50d24bbafe0"
V1 = "a8098c1a-f86e-11da-bd1a-00112444be1e"

# --- UUIDs --------------------------------------------------------------------------------------


def test_new_id_is_canonical_v4() -> None:
    seen = {ids.new_id() for _ in range(100)}
    assert len(seen) == 100
    for value in seen:
        parsed = uuid.UUID(value)
        assert parsed.version == 4
        assert str(parsed) == value
        assert ids.parse_uuid(value, require_v4=True) == value


@pytest.mark.parametrize(
    ("value", "canonical"),
    [
        (V4, V4),
        (V4.upper(), V4),
        (V4.replace("-", ""), V4),
        (V1, V1),
        ("00000000-0000-0000-0000-000000000000", "00000000-0000-0000-0000-000000000000"),
    ],
)
def test_parse_uuid_canonicalizes(value: str, canonical: str) -> None:
    assert ids.parse_uuid(value) == canonical
    assert ids.is_uuid(value)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "nope",
        V4[:-1],
        V4 + "0",
        V4 + "\n",
        " " + V4,
        "{" + V4 + "}",
        "urn:uuid:" + V4,
        V4.replace("0", "g", 1),
        V4.replace("0", "\u0660", 1),  # ARABIC-INDIC DIGIT ZERO
        V4.replace("-", "_"),
        None,
        42,
        uuid.UUID(V4),
    ],
)
def test_parse_uuid_rejects(value: object) -> None:
    with pytest.raises(FormatError) as info:
        ids.parse_uuid(value, field="attachmentId")
    assert str(info.value) == f"attachmentId must be a UUID, got {value!r}"
    assert info.value.field == "attachmentId"
    assert info.value.value == value
    assert not ids.is_uuid(value)


@pytest.mark.parametrize(
    "value",
    [
        V1,  # version 1
        "0b799252-deb9-32b0-98d3-c50d24bbafe0",  # version 3
        "0b799252-deb9-42b0-c8d3-c50d24bbafe0",  # version 4, Microsoft variant
        "00000000-0000-0000-0000-000000000000",  # nil
    ],
)
def test_require_v4(value: str) -> None:
    assert ids.parse_uuid(value) == value
    with pytest.raises(FormatError, match=f"attachment_id must be a random UUIDv4, got '{value}'"):
        ids.parse_uuid(value, field="attachment_id", require_v4=True)


def test_require_v4_accepts_other_spellings_of_a_v4() -> None:
    assert ids.parse_uuid(V4.upper().replace("-", ""), require_v4=True) == V4


@settings(max_examples=200, deadline=None)
@given(st.uuids(version=4))
def test_every_uuid4_round_trips(value: uuid.UUID) -> None:
    for text in (str(value), str(value).upper(), value.hex):
        assert ids.parse_uuid(text, require_v4=True) == str(value)


# --- Leistungsschlüssel and service identifiers -------------------------------------------------

KEY = "99123456760610"
URN = "urn:de:fim:leika:leistung:99123456760610"


def test_leistungsschluessel_forms() -> None:
    assert ids.parse_leistungsschluessel(KEY) == KEY
    assert ids.parse_leistungsschluessel(URN) == KEY
    assert ids.leika_urn(KEY) == URN
    assert ids.leika_urn(URN) == URN
    assert ids.is_leika_urn(URN)
    assert not ids.is_leika_urn(KEY)
    assert not ids.is_leika_urn("urn:de:fim:leika:leistung:123")
    assert ids.LEIKA_URN_PREFIX == "urn:de:fim:leika:leistung:"


@pytest.mark.parametrize(
    "value",
    [
        "9912345676061",  # 13 digits
        "991234567606100",  # 15 digits
        "98123456760610",  # not 99…
        "99 123456760610",
        KEY + "\n",
        "99" + "\u0661" * 12,  # Arabic-Indic digits
        "urn:de:fim:leika:leistung:",
        "urn:de:fim:leika:leistung:9912345676061x",
        "URN:DE:FIM:LEIKA:LEISTUNG:99123456760610",
        "",
    ],
)
def test_leistungsschluessel_rejects(value: str) -> None:
    with pytest.raises(FormatError, match="14 digits starting with 99") as info:
        ids.parse_leistungsschluessel(value)
    assert repr(value) in str(info.value)
    assert info.value.field == "leikaKey"
    with pytest.raises(FormatError):
        ids.leika_urn(value)


def test_leistungsschluessel_must_be_text() -> None:
    with pytest.raises(FormatError, match="must be text, got 99123456760610"):
        ids.parse_leistungsschluessel(99123456760610)


@pytest.mark.parametrize(
    ("value", "normalized"),
    [
        (KEY, URN),
        (URN, URN),
        ("urn:de:govos:parent:a3builder-7676-qs", "urn:de:govos:parent:a3builder-7676-qs"),
        ("urn:a:b", "urn:a:b"),  # exactly 7 characters
        ("urn:x-y:(a)+,.:=@;$_!*'%/?#-", "urn:x-y:(a)+,.:=@;$_!*'%/?#-"),
        ("urn:" + "a" * 32 + ":x", "urn:" + "a" * 32 + ":x"),
        ("urn:n:" + "x" * 249, "urn:n:" + "x" * 249),  # 255 characters
    ],
)
def test_service_identifier_accepts(value: str, normalized: str) -> None:
    assert ids.parse_service_identifier(value) == normalized
    assert ids.SERVICE_URN_RE.match(normalized)


@pytest.mark.parametrize(
    "value",
    [
        "urn:a:",
        "urn::b",
        "urn:-a:b",
        "urn:" + "a" * 33 + ":x",  # NID longer than 32
        "urn:n:" + "x" * 250,  # 256 characters
        "URN:de:x:y",
        "urn:de:Govos:x",
        "urn:de:x y",
        "urn:de:x:y\n",
        "urn:de:fim:leika:leistung:123",  # LeiKa URN with a bad key
        "9912345676061",
        "https://example.de/leistung",
        "",
        None,
        99123456760610,
    ],
)
def test_service_identifier_rejects(value: object) -> None:
    with pytest.raises(FormatError) as info:
        ids.parse_service_identifier(value)
    assert repr(value) in str(info.value)


# --- ARS / AGS ----------------------------------------------------------------------------------


@pytest.mark.parametrize("digits", [2, 3, 5, 9, 12])
def test_ars_lengths(digits: int) -> None:
    value = "064350014014"[:digits]
    assert ids.parse_ars(value) == value


@pytest.mark.parametrize(
    "value",
    [
        *("0", "0643", "064350", "0643500", "06435001", "0643500140", "06435001401"),
        *("0643500140140", "06435001401x", "06 435", "", "06\n", "\u0660\u0666", None, 64),
    ],
)
def test_ars_rejects(value: object) -> None:
    with pytest.raises(FormatError, match=r"ARS must have 2, 3, 5, 9 or 12 digits") as info:
        ids.parse_ars(value)
    assert repr(value) in str(info.value)
    assert info.value.field == "ars"


@pytest.mark.parametrize("digits", [2, 3, 5, 8])
def test_ags_lengths(digits: int) -> None:
    value = "06435014"[:digits]
    assert ids.parse_ags(value) == value


@pytest.mark.parametrize(
    "value", ["0", "0643", "064350", "0643501", "064350140", "064350140140", "06x", "06\n", None]
)
def test_ags_rejects(value: object) -> None:
    with pytest.raises(FormatError, match=r"AGS must have 2, 3, 5 or 8 digits") as info:
        ids.parse_ags(value)
    assert repr(value) in str(info.value)


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from([2, 3, 5, 9, 12]).flatmap(
        lambda n: st.text("0123456789", min_size=n, max_size=n)
    )
)
def test_every_ars_of_a_valid_length(value: str) -> None:
    assert ids.parse_ars(value) == value


# --- regions and send scopes --------------------------------------------------------------------


@pytest.mark.parametrize("value", ["DE", "DE0", "DE06", "DE064350014014"])
def test_regions(value: str) -> None:
    assert ids.parse_region(value) == value
    assert ids.send_region_scope(value) == "send:region:" + value
    assert ids.region_of_scope(ids.send_region_scope(value)) == value


@pytest.mark.parametrize(
    "value",
    ["", "D", "de06", "AT06", "DE0643500140140", "DE06a", "DE 06", "DE06\n", "DE\u0660", None],
)
def test_region_rejects(value: object) -> None:
    with pytest.raises(FormatError, match="region must be 'DE' followed by up to 12") as info:
        ids.parse_region(value)
    assert repr(value) in str(info.value)


def test_region_of_scope() -> None:
    assert ids.SEND_REGION_SCOPE_PREFIX == "send:region:"
    assert ids.region_of_scope("send:region:DE09") == "DE09"
    assert ids.region_of_scope("manage:destinations") is None
    assert ids.region_of_scope("send:regions:DE") is None
    with pytest.raises(FormatError, match="'XX'"):
        ids.region_of_scope("send:region:XX")
    with pytest.raises(FormatError):
        ids.send_region_scope("Bayern")


@pytest.mark.parametrize(
    ("scope_region", "destination_region", "allowed"),
    [
        ("DE", "DE", True),
        ("DE", "DE064350014014", True),
        ("DE06", "DE06", True),
        ("DE06", "DE064350014014", True),
        ("DE0643", "DE064350014014", True),
        ("DE064350014014", "DE064350014014", True),
        ("DE06", "DE07", False),
        ("DE06", "DE0", False),  # destination wider than the scope
        ("DE064", "DE06", False),
        ("DE06", "DE", False),
        ("DE064350014014", "DE064350014015", False),
    ],
)
def test_region_prefix_matching(scope_region: str, destination_region: str, allowed: bool) -> None:
    assert ids.region_allows(scope_region, destination_region) is allowed


@settings(max_examples=100, deadline=None)
@given(st.text("0123456789", max_size=12), st.text("0123456789", max_size=12))
def test_region_allows_is_prefix_order(a: str, b: str) -> None:
    scope, destination = "DE" + a, "DE" + b
    assert ids.region_allows(scope, destination) == destination.startswith(scope)
    assert ids.region_allows(scope, scope + b[: 12 - len(a)])
