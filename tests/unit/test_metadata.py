"""Metadata: builder, validator (every violation with its JSON path), versions and models."""

from __future__ import annotations

import copy
import json
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fitconnect_kit.protocol import ids
from fitconnect_kit.protocol.errors import FormatError, MetadataError, Violation
from fitconnect_kit.protocol.jsonutil import dumps_compact
from fitconnect_kit.protocol.metadata import (
    DEFAULT_METADATA_VERSION,
    FIT_CONNECT_REPLY_CHANNEL_SINCE,
    KNOWN_METADATA_VERSIONS,
    UNCONFIRMED_ASSUMPTIONS,
    AttachmentPurpose,
    Metadata,
    MetadataBuilder,
    MimeType,
    PaymentMethod,
    PaymentStatus,
    ReplyChannelKind,
    Signature,
    check_metadata,
    is_supported_version,
    metadata_version,
    parse_metadata,
    schema_uri,
    sha512_hex,
    supports_fitconnect_reply_channel,
    validate_metadata,
    version_from_schema_uri,
)

ATTACHMENT_ID = "0b799252-deb9-42b0-98d3-c50d24bbafe0"
DATA_HASH = sha512_hex(b'{"antrag":1}')
PDF_HASH = sha512_hex(b"%PDF-1.7")
SCHEMA = "https://schema.fitko.de/fim/s00000096_1.0.schema.json"
PGP = "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmQINBGZ...\n-----END PGP PUBLIC KEY BLOCK-----\n"
RSA_JWK = {"kty": "RSA", "n": "sXch", "e": "AQAB", "alg": "RSA-OAEP-256", "kid": "k1"}
XBAU = "urn:xoev-de:bmk:standard:xbau_2.4"


def uri(version: str) -> str:
    return f"https://schema.fitko.de/fit-connect/metadata/{version}/metadata.schema.json"


def paths(violations: list[Violation]) -> list[str]:
    return [v.path for v in violations]


def full_builder(version: str = DEFAULT_METADATA_VERSION) -> MetadataBuilder:
    return (
        MetadataBuilder(version)
        .service("99123456760610", name="Meldebescheinigung", description="einfach")
        .data(
            DATA_HASH,
            SCHEMA,
            MimeType.JSON,
            signature=Signature(signature_format="json", detached_signature=False),
        )
        .attachment(
            ATTACHMENT_ID,
            PDF_HASH,
            AttachmentPurpose.FORM,
            "application/pdf",
            filename="antrag.pdf",
            description="Antragsformular",
            signature={"signatureFormat": "pdf", "detachedSignature": False},
        )
        .attachment(ids.new_id(), sha512_hex(b"jpg"), "attachment", "image/jpeg")
        .reply_channel_email("max.mustermann@example.de", pgp_public_key=PGP)
        .payment(
            "KZ-0001",
            "tx-0001",
            PaymentMethod.GIROPAY,
            PaymentStatus.BOOKED,
            transaction_url="https://pay.example.de/tx/1",
            transaction_timestamp=datetime(2024, 5, 4, 12, 30, tzinfo=timezone(timedelta(hours=2))),
            payment_method_detail="Sparkasse",
            gross_amount=Decimal("12.30"),
        )
        .authentication("1.0.0", "eyJhbGciOiJQUzUxMiJ9.e30.c2ln")
        .authentication("1.2.0", "second-report")
        .reference(sender_reference="AZ 4711", application_date=date(2024, 5, 4))
        .extra("x-sender", {"product": "Onlinedienst", "version": "1.0"})
    )


# --- builder ------------------------------------------------------------------------------------


def test_minimal_document() -> None:
    doc = MetadataBuilder().build()
    assert doc == {"$schema": uri("1.0.0"), "contentStructure": {"attachments": []}}
    assert validate_metadata(doc) == []


def test_every_optional_part() -> None:
    builder = full_builder()
    doc = builder.build()
    assert validate_metadata(doc) == []
    assert list(doc) == [
        "$schema",
        "contentStructure",
        "publicServiceType",
        "authenticationInformation",
        "paymentInformation",
        "replyChannel",
        "additionalReferenceInfo",
        "x-sender",
    ]
    assert doc["publicServiceType"] == {
        "identifier": "urn:de:fim:leika:leistung:99123456760610",
        "name": "Meldebescheinigung",
        "description": "einfach",
    }
    data = doc["contentStructure"]["data"]
    assert data == {
        "hash": {"type": "sha512", "content": DATA_HASH},
        "submissionSchema": {"schemaUri": SCHEMA, "mimeType": "application/json"},
        "signature": {"signatureFormat": "json", "detachedSignature": False},
    }
    first = doc["contentStructure"]["attachments"][0]
    assert first == {
        "attachmentId": ATTACHMENT_ID,
        "hash": {"type": "sha512", "content": PDF_HASH},
        "purpose": "form",
        "mimeType": "application/pdf",
        "filename": "antrag.pdf",
        "description": "Antragsformular",
        "signature": {"signatureFormat": "pdf", "detachedSignature": False},
    }
    assert doc["paymentInformation"] == {
        "transactionReference": "KZ-0001",
        "transactionId": "tx-0001",
        "paymentMethod": "GIROPAY",
        "status": "BOOKED",
        "transactionUrl": "https://pay.example.de/tx/1",
        "transactionTimestamp": "2024-05-04T10:30:00Z",
        "paymentMethodDetail": "Sparkasse",
        "grossAmount": 12.3,
    }
    assert doc["authenticationInformation"][1] == {
        "type": "identificationReport",
        "version": "1.2.0",
        "content": "second-report",
    }
    assert doc["additionalReferenceInfo"] == {
        "senderReference": "AZ 4711",
        "applicationDate": "2024-05-04",
    }
    assert builder.build_bytes() == dumps_compact(doc)


def test_build_returns_independent_copies() -> None:
    builder = full_builder()
    first = builder.build()
    first["contentStructure"]["attachments"].clear()
    first["x-sender"]["product"] = "changed"
    second = builder.build()
    assert len(second["contentStructure"]["attachments"]) == 2
    assert second["x-sender"]["product"] == "Onlinedienst"


def test_built_document_parses_back() -> None:
    raw = full_builder().build_bytes()
    meta = parse_metadata(raw)
    assert meta.version == "1.0.0"
    assert meta.public_service_type is not None
    assert meta.public_service_type.identifier.endswith("99123456760610")
    data = meta.content_structure.data
    assert data is not None
    assert data.hash.content == DATA_HASH
    assert data.submission_schema.mime_type == MimeType.JSON
    assert meta.content_structure.attachments[0].purpose is AttachmentPurpose.FORM
    assert meta.attachment_ids[0] == ATTACHMENT_ID
    payment = meta.payment_information
    assert payment is not None
    assert payment.gross_amount == Decimal("12.3")
    assert payment.payment_method is PaymentMethod.GIROPAY
    assert payment.transaction_time == datetime(2024, 5, 4, 10, 30, tzinfo=UTC)
    assert meta.reply_channel is not None
    assert meta.reply_channel.kind is ReplyChannelKind.EMAIL
    assert meta.reply_channel.e_mail is not None
    assert meta.reply_channel.e_mail.pgp_public_key == PGP
    assert meta.additional_reference_info is not None
    assert meta.additional_reference_info.application_day == date(2024, 5, 4)
    assert meta.model_extra == {"x-sender": {"product": "Onlinedienst", "version": "1.0"}}
    assert meta.to_wire() == json.loads(raw)


@pytest.mark.parametrize(
    ("configure", "kind", "channel"),
    [
        (lambda b: b.reply_channel_email("a@example.de"), "eMail", {"address": "a@example.de"}),
        (
            lambda b: b.reply_channel_demail("a@example.de-mail.de"),
            "deMail",
            {"address": "a@example.de-mail.de"},
        ),
        (
            lambda b: b.reply_channel_fink("hh/by/12345", host="https://sk.example.com/"),
            "fink",
            {"finkPostfachRef": "hh/by/12345", "host": "https://sk.example.com/"},
        ),
        (lambda b: b.reply_channel_fink("hh/by/1"), "fink", {"finkPostfachRef": "hh/by/1"}),
        (
            lambda b: b.reply_channel_elster("1234567890", "LT-1", "AZ-12"),
            "elster",
            {"accountId": "1234567890", "lieferTicket": "LT-1", "geschaeftszeichen": "AZ-12"},
        ),
        (lambda b: b.reply_channel_elster("1234567890"), "elster", {"accountId": "1234567890"}),
    ],
)
def test_each_reply_channel(configure: Any, kind: str, channel: dict[str, Any]) -> None:
    doc = configure(MetadataBuilder()).build()
    assert doc["replyChannel"] == {kind: channel}
    meta = parse_metadata(doc)
    assert meta.reply_channel is not None
    assert meta.reply_channel.kind == kind


@pytest.mark.parametrize("version", [v for v in KNOWN_METADATA_VERSIONS if v >= "1.1.0"])
def test_fitconnect_reply_channel_for_later_versions(version: str) -> None:
    doc = (
        MetadataBuilder(version)
        .reply_channel_fitconnect([XBAU, "urn:xoev-de:xinneres:standard:x"], RSA_JWK)
        .build()
    )
    assert doc["$schema"] == uri(version)
    assert doc["replyChannel"] == {
        "fitConnect": {
            "processStandards": [XBAU, "urn:xoev-de:xinneres:standard:x"],
            "encryptionPublicKey": RSA_JWK,
        }
    }
    meta = parse_metadata(doc)
    assert meta.version == version
    assert meta.reply_channel is not None
    assert meta.reply_channel.kind is ReplyChannelKind.FIT_CONNECT
    assert meta.reply_channel.fit_connect is not None
    assert meta.reply_channel.fit_connect.process_standards[0] == XBAU
    # the key is optional
    MetadataBuilder(version).reply_channel_fitconnect([XBAU]).build()


def test_fitconnect_reply_channel_rejected_by_1_0_0_builder() -> None:
    with pytest.raises(FormatError, match=r"needs metadata 1\.1\.0 or later.*writes 1\.0\.0"):
        MetadataBuilder().reply_channel_fitconnect([XBAU])
    assert FIT_CONNECT_REPLY_CHANNEL_SINCE == "1.1.0"
    assert not supports_fitconnect_reply_channel("1.0.0")
    assert all(supports_fitconnect_reply_channel(v) for v in KNOWN_METADATA_VERSIONS[1:])


@pytest.mark.parametrize(
    ("standards", "key", "match"),
    [
        ([], None, "process_standards must have at least 1 item"),
        (XBAU, None, "not a single string"),
        (["not a uri"], None, "absolute URI"),
        ([XBAU], {**RSA_JWK, "d": "secret"}, "private members d"),
        ([XBAU], {"kty": "EC", "crv": "P-256", "x": "a", "y": "b"}, "RSA JWK"),
        ([XBAU], {"kty": "RSA", "n": "x"}, r"RSA JWK: \$\.e: is required"),
    ],
)
def test_fitconnect_reply_channel_bad_inputs(standards: Any, key: Any, match: str) -> None:
    with pytest.raises(FormatError, match=match):
        MetadataBuilder("1.2.0").reply_channel_fitconnect(standards, key)


def test_only_one_reply_channel() -> None:
    builder = MetadataBuilder().reply_channel_email("a@example.de")
    with pytest.raises(FormatError, match=r"reply channel \(eMail\) is already set"):
        builder.reply_channel_demail("a@example.de")


def test_authentication_is_appendable_and_reference_merges() -> None:
    doc = (
        MetadataBuilder()
        .authentication("1.0.0", "a")
        .authentication("1.0.1", "b", type_="identificationReport")
        .reference(sender_reference="r1")
        .reference(application_date="2024-01-31")
        .build()
    )
    assert [a["content"] for a in doc["authenticationInformation"]] == ["a", "b"]
    assert doc["additionalReferenceInfo"] == {
        "senderReference": "r1",
        "applicationDate": "2024-01-31",
    }


@pytest.mark.parametrize(
    ("amount", "wire"),
    [
        (Decimal("0.07"), 0.07),
        ("12.34", 12.34),
        (5, 5),
        (12.34, 12.34),
        (Decimal("1000000.10"), 1000000.1),
    ],
)
def test_gross_amount(amount: Any, wire: Any) -> None:
    doc = MetadataBuilder().payment("r", "t", "OTHER", "INITIAL", gross_amount=amount).build()
    assert doc["paymentInformation"]["grossAmount"] == wire
    assert type(doc["paymentInformation"]["grossAmount"]) is type(wire)


def _bad(call: Any, *needles: str) -> None:
    with pytest.raises(FormatError) as info:
        call(MetadataBuilder())
    for needle in needles:
        assert needle in str(info.value), str(info.value)


UUID1 = str(uuid.UUID("a8098c1a-f86e-11da-bd1a-00112444be1e"))


@pytest.mark.parametrize(
    ("call", "needles"),
    [
        (lambda b: b.data(DATA_HASH.upper(), SCHEMA, "application/json"), ["128 lowercase hex"]),
        (lambda b: b.data("abc", SCHEMA, "application/json"), ["'abc'"]),
        (lambda b: b.data(DATA_HASH, "no uri", "application/json"), ["schema_uri", "'no uri'"]),
        (lambda b: b.data(DATA_HASH, SCHEMA, "text/plain"), ["mime_type", "'text/plain'"]),
        (
            lambda b: b.attachment(UUID1, PDF_HASH, "form", "application/pdf"),
            ["UUIDv4", UUID1],
        ),
        (lambda b: b.attachment("nope", PDF_HASH, "form", "application/pdf"), ["'nope'"]),
        (
            lambda b: b.attachment(ATTACHMENT_ID, PDF_HASH, "scan", "application/pdf"),
            ["purpose must be one of form, attachment, report", "'scan'"],
        ),
        (
            lambda b: b.attachment(ATTACHMENT_ID, PDF_HASH, "form", "pdf"),
            ["mime_type must match the pattern", "'pdf'"],
        ),
        (
            lambda b: b.attachment(ATTACHMENT_ID, PDF_HASH, "form", "application/pdf").attachment(
                ATTACHMENT_ID.upper(), PDF_HASH, "form", "application/pdf"
            ),
            ["already used", ATTACHMENT_ID],
        ),
        (
            lambda b: b.attachment(
                ATTACHMENT_ID, PDF_HASH, "form", "application/pdf", signature={"x": 1}
            ),
            ["signature", "is required"],
        ),
        (lambda b: b.service("12345"), ["Leistungsschlüssel", "'12345'"]),
        (lambda b: b.service("urn:de:fim:leika:leistung:123"), ["urn:de:fim:leika:leistung:123"]),
        (lambda b: b.reply_channel_email("not-an-address"), ["e-mail address", "not-an-address"]),
        (
            lambda b: b.reply_channel_email("a@example.de", pgp_public_key="ssh-rsa AAAA"),
            ["BEGIN PGP PUBLIC KEY BLOCK"],
        ),
        (lambda b: b.reply_channel_demail("a@@b"), ["De-Mail address", "'a@@b'"]),
        (lambda b: b.reply_channel_fink("HH/BY/1"), ["FINK postfach_ref", "'HH/BY/1'"]),
        (lambda b: b.reply_channel_fink("hh/1", host="nohost"), ["FINK host", "'nohost'"]),
        (lambda b: b.reply_channel_elster("123456789"), ["10 digits", "'123456789'"]),
        (
            lambda b: b.reply_channel_elster("1234567890", geschaeftszeichen="12345678901"),
            ["geschaeftszeichen must have at most 10"],
        ),
        (lambda b: b.payment("r", "t 1", "OTHER", "INITIAL"), ["transaction_id", "'t 1'"]),
        (lambda b: b.payment("r", "t", "CASH", "INITIAL"), ["payment_method", "'CASH'"]),
        (lambda b: b.payment("r", "t", "OTHER", "DONE"), ["status", "'DONE'"]),
        (
            lambda b: b.payment("r", "t", "OTHER", "INITIAL", gross_amount="0.001"),
            ["gross_amount must be at least 0.01", "multiple of 0.01"],
        ),
        (
            lambda b: b.payment("r", "t", "OTHER", "INITIAL", gross_amount="zwölf"),
            ["gross_amount must be a decimal amount", "'zwölf'"],
        ),
        (
            lambda b: b.payment("r", "t", "OTHER", "INITIAL", gross_amount="12345678901234567.89"),
            ["too many digits"],
        ),
        (
            lambda b: b.payment(
                "r", "t", "OTHER", "INITIAL", transaction_timestamp=datetime(2024, 1, 1)
            ),
            ["timezone-aware"],
        ),
        (
            lambda b: b.payment("r", "t", "OTHER", "INITIAL", transaction_timestamp="gestern"),
            ["transaction_timestamp", "'gestern'"],
        ),
        (lambda b: b.authentication("1.0", "abc"), ["authentication version", "'1.0'"]),
        (lambda b: b.authentication("1.0.0", "a b"), ["authentication content", "'a b'"]),
        (lambda b: b.authentication("1.0.0", "a", type_="x"), ["authentication type", "'x'"]),
        (
            lambda b: b.reference(application_date=datetime(2024, 1, 1, tzinfo=UTC)),
            ["not a datetime"],
        ),
        (lambda b: b.reference(application_date="04.05.2024"), ["'04.05.2024'"]),
        (lambda b: b.extra("replyChannel", {}), ["builder method"]),
        (lambda b: b.extra("x-bad", object()), ["JSON-serializable"]),
        (lambda b: b.extra("x-nan", float("nan")), ["JSON-serializable"]),
    ],
)
def test_builder_errors_name_the_bad_value(call: Any, needles: list[str]) -> None:
    _bad(call, *needles)


def test_unknown_version_is_refused() -> None:
    with pytest.raises(FormatError, match=r"one of 1\.0\.0, .*1\.5\.0, got '2\.0\.0'"):
        MetadataBuilder("2.0.0")
    with pytest.raises(FormatError):
        validate_metadata({}, version="0.9.6")
    with pytest.raises(FormatError):
        schema_uri("1.6.0")


def test_build_validates_the_whole_document() -> None:
    builder = MetadataBuilder()
    # Bypass the per-method checks to show that build() still refuses an invalid document.
    builder._attachments.append({"attachmentId": "x", "purpose": "form"})
    with pytest.raises(MetadataError) as info:
        builder.build()
    assert paths(list(info.value.violations)) == [
        "$.contentStructure.attachments[0].hash",
        "$.contentStructure.attachments[0].mimeType",
        "$.contentStructure.attachments[0].attachmentId",
        "$.contentStructure.attachments[0].attachmentId",
    ]
    assert str(info.value).startswith("invalid metadata: $.contentStructure.attachments[0].hash")
    assert "(and 3 more)" in str(info.value)


# --- validator ----------------------------------------------------------------------------------


def test_every_violation_with_its_path() -> None:
    doc: dict[str, Any] = {
        "contentStructure": {
            "data": {"hash": {"type": "md5", "content": DATA_HASH.upper()}},
            "attachments": [
                {
                    "attachmentId": "1234",
                    "hash": {"type": "sha512", "content": PDF_HASH},
                    "purpose": "scan",
                    "mimeType": "application/pdf",
                    "signature": {"signatureFormat": "pdf", "detachedSignature": "yes"},
                },
                "not an object",
            ],
        },
        "publicServiceType": {"identifier": "urn:X"},
        "authenticationInformation": [],
        "paymentInformation": {
            "transactionReference": 7,
            "transactionId": "x" * 37,
            "paymentMethod": "CASH",
            "status": "BOOKED",
            "grossAmount": 0.005,
        },
        "replyChannel": {"eMail": {"address": "a@example.de"}, "elster": {"accountId": "1"}},
        "additionalReferenceInfo": {"applicationDate": "2023-02-29"},
    }
    assert [(v.path, v.message) for v in validate_metadata(doc)] == [
        ("$.paymentInformation.transactionId", "must have at most 36 characters, has 37"),
        ("$.paymentInformation.transactionReference", "must be a string, got number"),
        (
            "$.paymentInformation.paymentMethod",
            "must be one of GIROPAY, PAYDIRECT, CREDITCARD, PAYPAL, INVOICE, OTHER",
        ),
        ("$.paymentInformation.grossAmount", "must be at least 0.01"),
        ("$.paymentInformation.grossAmount", "must be a multiple of 0.01"),
        ("$.publicServiceType.identifier", "must have at least 7 character(s)"),
        (
            "$.publicServiceType.identifier",
            "must match the pattern ^urn:[a-z0-9][a-z0-9-]{0,31}:[a-z0-9()+,.:=@;$_!*'%/?#-]+$",
        ),
        ("$.contentStructure.data.submissionSchema", "is required"),
        ("$.contentStructure.data.hash.type", "must be one of sha512"),
        ("$.contentStructure.data.hash.content", "must match the pattern ^[a-f0-9]{128}$"),
        (
            "$.contentStructure.attachments[0].signature.detachedSignature",
            "must be a boolean, got string",
        ),
        ("$.contentStructure.attachments[0].purpose", "must be one of form, attachment, report"),
        ("$.contentStructure.attachments[0].attachmentId", "must have at least 32 character(s)"),
        (
            "$.contentStructure.attachments[0].attachmentId",
            "must be a UUID (8-4-4-4-12 hex digits)",
        ),
        ("$.contentStructure.attachments[1]", "must be an object, got string"),
        ("$.authenticationInformation", "must have at least 1 item(s)"),
        ("$.replyChannel", "must have at most 1 member(s), has 2"),
        ("$.replyChannel.elster.accountId", r"must match the pattern ^\d{10}$"),
        ("$.additionalReferenceInfo.applicationDate", "must be an RFC 3339 date (YYYY-MM-DD)"),
    ]
    with pytest.raises(MetadataError) as info:
        check_metadata(doc)
    assert len(info.value.violations) == 19


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({}, [("$.contentStructure", "is required")]),
        ([], [("$", "must be an object, got array")]),
        (None, [("$", "must be an object, got null")]),
        ({"contentStructure": {}}, [("$.contentStructure.attachments", "is required")]),
        (
            {"contentStructure": {"attachments": {}}},
            [("$.contentStructure.attachments", "must be an array, got object")],
        ),
        (
            {"contentStructure": {"attachments": []}, "replyChannel": {}},
            [("$.replyChannel", "must have at least 1 member(s)")],
        ),
        (
            {"contentStructure": {"attachments": []}, "paymentInformation": {"grossAmount": True}},
            [
                ("$.paymentInformation.transactionReference", "is required"),
                ("$.paymentInformation.transactionId", "is required"),
                ("$.paymentInformation.paymentMethod", "is required"),
                ("$.paymentInformation.status", "is required"),
                ("$.paymentInformation.grossAmount", "must be a finite number, got boolean"),
            ],
        ),
    ],
)
def test_structural_violations(doc: Any, expected: list[tuple[str, str]]) -> None:
    assert [(v.path, v.message) for v in validate_metadata(doc)] == expected


@pytest.mark.parametrize(
    ("amount", "valid"),
    [
        (0.07, True),
        (0.01, True),
        (1.1, True),
        (Decimal("0.07"), True),
        (Decimal("123456789012345678901234567890.12"), True),
        (Decimal("0.0100000000000000000000000000001"), False),
        (1e300, True),
        (3, True),
        (0.071, False),
        (0, False),
        (-0.01, False),
        (float("inf"), False),
        (float("nan"), False),
        (Decimal("NaN"), False),
        ("0.07", False),
    ],
)
def test_gross_amount_is_decimal_exact(amount: Any, valid: bool) -> None:
    doc = MetadataBuilder().payment("r", "t", "OTHER", "BOOKED").build()
    doc["paymentInformation"]["grossAmount"] = amount
    assert (validate_metadata(doc) == []) is valid


def test_messages_never_echo_values() -> None:
    secret = "Erika Mustermann <erika@example.de>"
    doc = MetadataBuilder().build()
    doc["replyChannel"] = {"eMail": {"address": secret}}
    doc["paymentInformation"] = {"transactionReference": "r", "transactionId": secret}
    violations = validate_metadata(doc)
    assert len(violations) >= 2
    assert all("erika" not in str(v).lower() for v in violations)


def test_unknown_members_tolerated_everywhere_and_preserved() -> None:
    doc = full_builder().build()

    def sprinkle(node: Any, depth: int = 0) -> None:
        if isinstance(node, dict):
            for value in list(node.values()):
                sprinkle(value, depth + 1)
            if node is not doc["replyChannel"]:  # exactly one member there
                node[f"x-ext-{depth}"] = {"nested": [1, "two", None]}
        elif isinstance(node, list):
            for item in node:
                sprinkle(item, depth + 1)

    sprinkle(doc)
    assert doc["contentStructure"]["attachments"][0]["hash"]["x-ext-4"]
    assert validate_metadata(doc) == []
    meta = parse_metadata(doc)
    assert meta.content_structure.attachments[0].hash.model_extra == {
        "x-ext-4": {"nested": [1, "two", None]}
    }
    assert meta.to_wire() == doc


def test_unknown_reply_channel_kind_is_tolerated_by_schema_semantics() -> None:
    # No additionalProperties:false in replyChannel: a single unknown channel is valid (1.0.0
    # schema semantics); the subscriber's reply-channel check (§11 #9) rejects what it can't use.
    doc = {"contentStructure": {"attachments": []}, "replyChannel": {"bundId": {"x": 1}}}
    meta = parse_metadata(doc)
    assert meta.reply_channel is not None
    assert meta.reply_channel.kind is None
    # ...and so is a fitConnect channel in a 1.0.0 document (its shape is not checked there).
    doc["replyChannel"] = {"fitConnect": {"processStandards": []}}
    assert validate_metadata(doc) == []
    assert paths(validate_metadata(doc, "1.1.0")) == ["$.replyChannel.fitConnect.processStandards"]


def test_real_vector_validates_and_parses(load_vector: Any) -> None:
    doc = load_vector("sender-metadata-jwe-zip.json")["expected_plaintext"]
    assert "$schema" not in doc
    assert validate_metadata(doc) == []
    assert metadata_version(doc) == "1.0.0"
    meta = parse_metadata(json.dumps(doc).encode())
    assert meta.version == "1.0.0"
    assert meta.schema_uri is None
    assert meta.public_service_type is not None
    assert meta.public_service_type.identifier == "urn:de:govos:parent:a3builder-7676-qs"
    assert meta.content_structure.attachments[0].purpose is AttachmentPurpose.FORM
    assert meta.attachment_ids == ["654bf3b3-787d-4606-8913-efd769f69db7"]
    assert meta.content_structure.data is not None
    assert meta.content_structure.data.submission_schema.schema_uri == "urn:de:govos:data"
    ref = meta.additional_reference_info
    assert ref is not None
    assert ref.application_day == date(2022, 5, 4)
    assert set(ref.model_extra or {}) == {"x-applicant", "x-sender"}
    assert meta.to_wire() == doc
    for version in KNOWN_METADATA_VERSIONS:
        assert validate_metadata(doc, version) == []


# --- versions -----------------------------------------------------------------------------------


def test_version_constants() -> None:
    assert KNOWN_METADATA_VERSIONS == ("1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0", "1.5.0")
    assert DEFAULT_METADATA_VERSION == "1.0.0"
    assert schema_uri("1.2.0") == uri("1.2.0")
    assert schema_uri() == uri("1.0.0")
    assert version_from_schema_uri(uri("2.1.0")) == "2.1.0"
    assert version_from_schema_uri(uri("1.0.0") + "\n") is None
    assert version_from_schema_uri("http://schema.fitko.de/fit-connect/metadata/1.0.0/x") is None
    assert version_from_schema_uri(7) is None
    assert is_supported_version("1.3.0")
    assert not is_supported_version("2.0.0")
    assert is_supported_version("1.0.0", ["1.0.0", "2.0.0"])
    assert not is_supported_version("1.2.0", ["1.0.0"])
    assert not is_supported_version("2.0.0", ["2.0.0"])  # listed, but we can't validate it
    assert len(UNCONFIRMED_ASSUMPTIONS) >= 3


@pytest.mark.parametrize(
    ("schema", "version"),
    [(None, "1.0.0"), *((uri(v), v) for v in KNOWN_METADATA_VERSIONS)],
)
def test_version_detection(schema: str | None, version: str) -> None:
    doc: dict[str, Any] = {"contentStructure": {"attachments": []}}
    if schema is not None:
        doc["$schema"] = schema
    assert metadata_version(doc) == version
    assert validate_metadata(doc) == []
    assert parse_metadata(doc).version == version


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        (uri("2.0.0"), "names metadata version 2.0.0, which is not supported"),
        (uri("1.6.0"), "names metadata version 1.6.0"),
        ("https://example.com/metadata.schema.json", "not a FIT-Connect metadata schema URI"),
        (uri("1.0.0") + "\n", "not a FIT-Connect metadata schema URI"),
        (100, "must be a string, got number"),
    ],
)
def test_unsupported_schema(schema: Any, message: str) -> None:
    doc = {"$schema": schema, "contentStructure": {"attachments": [{}]}}
    violations = validate_metadata(doc)
    assert violations[0] == Violation("$.$schema", violations[0].message)
    assert message in violations[0].message
    # ...and the rest is still checked (by the 1.0.0 rules)
    assert "$.contentStructure.attachments[0].hash" in paths(violations)
    with pytest.raises(MetadataError) as info:
        metadata_version(doc)
    assert paths(list(info.value.violations)) == ["$.$schema"]
    with pytest.raises(MetadataError):
        parse_metadata(doc)


def test_explicit_version_uses_exactly_that_schema() -> None:
    doc = {"$schema": "anything", "contentStructure": {"attachments": []}}
    assert validate_metadata(doc, "1.0.0") == []  # 1.0.0 does not constrain $schema
    assert paths(validate_metadata(doc, "1.1.0")) == ["$.$schema"]  # 1.1.0+ pattern [C]
    assert paths(validate_metadata({**doc, "$schema": uri("1.4.0")}, "1.1.0")) == []
    with pytest.raises(MetadataError, match="must be an object"):
        metadata_version([])


def test_later_versions_accept_deprecated_public_service_type() -> None:
    doc = full_builder("1.5.0").build()
    assert "publicServiceType" in doc
    assert validate_metadata(doc) == []


def test_fitconnect_channel_violations_have_paths() -> None:
    doc = MetadataBuilder("1.3.0").reply_channel_fitconnect([XBAU], RSA_JWK).build()
    channel = doc["replyChannel"]["fitConnect"]
    channel["processStandards"] = ["no uri", 7]
    channel["encryptionPublicKey"] = {"kty": "oct", "n": 1}
    channel["x-unknown"] = True
    assert paths(validate_metadata(doc)) == [
        "$.replyChannel.fitConnect.processStandards[0]",
        "$.replyChannel.fitConnect.processStandards[1]",
        "$.replyChannel.fitConnect.encryptionPublicKey.e",
        "$.replyChannel.fitConnect.encryptionPublicKey.kty",
        "$.replyChannel.fitConnect.encryptionPublicKey.n",
    ]
    del channel["processStandards"]
    assert "$.replyChannel.fitConnect.processStandards" in paths(validate_metadata(doc))


# --- parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b'{"contentStructure":{"attachments":[]},"contentStructure":{"attachments":[]}}',
        b'{"contentStructure":{"attachments":[]},"x":NaN}',
        b"[]",
        b"\xff",
        b"{",
    ],
)
def test_parse_metadata_is_strict_json(data: bytes) -> None:
    with pytest.raises(FormatError, match="metadata"):
        parse_metadata(data)


def test_parse_metadata_reports_all_violations() -> None:
    with pytest.raises(MetadataError) as info:
        parse_metadata(b'{"contentStructure":{"attachments":[{}]},"replyChannel":{}}')
    assert len(info.value.violations) == 5


def test_model_by_field_name() -> None:
    meta = Metadata.model_validate(
        {"content_structure": {"attachments": []}, "schema_uri": uri("1.1.0")}
    )
    assert meta.version == "1.1.0"
    assert meta.to_wire() == {"$schema": uri("1.1.0"), "contentStructure": {"attachments": []}}


def test_payment_time_parsing() -> None:
    doc = MetadataBuilder().payment("r", "t", "OTHER", "BOOKED").build()
    for text, expected in [
        ("2024-05-04T12:00:00.5-01:30", datetime(2024, 5, 4, 13, 30, 0, 500000, tzinfo=UTC)),
        ("2024-05-04t12:00:00z", datetime(2024, 5, 4, 12, 0, tzinfo=UTC)),
    ]:
        doc["paymentInformation"]["transactionTimestamp"] = text
        payment = parse_metadata(doc).payment_information
        assert payment is not None
        assert payment.transaction_time == expected


def test_sha512_hex() -> None:
    assert sha512_hex(b"") == (
        "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce"
        "47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e"
    )


# --- properties ---------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    blobs=st.lists(st.binary(max_size=64), max_size=4),
    purpose=st.sampled_from(list(AttachmentPurpose)),
    mime=st.from_regex(r"\A[a-z]{1,10}/[a-z0-9.+-]{1,12}\Z"),
    filename=st.none() | st.text(max_size=20),
    reference=st.none() | st.text(max_size=20),
    day=st.dates(),
    cents=st.integers(1, 10**10),
)
def test_builder_round_trip(
    blobs: list[bytes],
    purpose: AttachmentPurpose,
    mime: str,
    filename: str | None,
    reference: str | None,
    day: date,
    cents: int,
) -> None:
    builder = MetadataBuilder("1.2.0").data(sha512_hex(b"d"), SCHEMA, MimeType.XML)
    attachment_ids = [ids.new_id() for _ in blobs]
    for attachment_id, blob in zip(attachment_ids, blobs, strict=True):
        builder.attachment(attachment_id, sha512_hex(blob), purpose, mime, filename=filename)
    builder.reference(sender_reference=reference, application_date=day)
    builder.payment("r", "t", "PAYPAL", "BOOKED", gross_amount=Decimal(cents) / 100)
    raw = builder.build_bytes()
    meta = parse_metadata(raw)
    assert meta.attachment_ids == attachment_ids
    assert [a.hash.content for a in meta.content_structure.attachments] == [
        sha512_hex(b) for b in blobs
    ]
    assert meta.additional_reference_info is not None
    assert meta.additional_reference_info.application_day == day
    assert meta.payment_information is not None
    assert meta.payment_information.gross_amount == Decimal(cents) / 100
    assert json.loads(raw) == copy.deepcopy(meta.to_wire())


def test_parse_reads_wire_names_only() -> None:
    doc = {"contentStructure": {"attachments": []}, "replyChannel": {"e_mail": {"address": 5}}}
    meta = parse_metadata(doc)
    assert meta.reply_channel is not None
    assert meta.reply_channel.e_mail is None
    assert meta.reply_channel.kind is None
    assert meta.reply_channel.model_extra == {"e_mail": {"address": 5}}


def test_parse_refuses_what_the_model_cannot_carry() -> None:
    # Valid by the 1.0.0 rules (an unknown channel), but not a usable fitConnect channel.
    doc = {"contentStructure": {"attachments": []}, "replyChannel": {"fitConnect": 5}}
    assert validate_metadata(doc) == []
    with pytest.raises(MetadataError) as info:
        parse_metadata(doc)
    assert paths(list(info.value.violations)) == ["$.replyChannel.fitConnect"]
