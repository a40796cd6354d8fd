"""The submission builder: Fachdaten (JSON/XML/pre-encrypted), attachments, metadata inputs."""

from __future__ import annotations

import hashlib
import io
from datetime import date
from pathlib import Path

import pytest
from tests.unit.test_client_fakes import JSON_SCHEMA, SERVICE, XML_SCHEMA, destination_keys

from fitconnect_kit.client.errors import SubmissionError
from fitconnect_kit.client.submission import (
    DataPart,
    EncryptedDataPart,
    SubmissionBuilder,
)
from fitconnect_kit.protocol.jose import jwe
from fitconnect_kit.protocol.metadata import AttachmentPurpose

DEST = "879ee109-a690-4db8-ab32-424284184d7d"


def builder() -> SubmissionBuilder:
    return SubmissionBuilder(DEST).service("99400048079000", "Testantrag")


def test_json_object_is_serialised_compactly() -> None:
    sub = builder().json_data({"b": 1, "a": "ä"}, schema_uri=JSON_SCHEMA).build()
    assert isinstance(sub.data, DataPart)
    assert sub.data.content == '{"b":1,"a":"ä"}'.encode()
    assert sub.data_schema == (JSON_SCHEMA, "application/json")
    assert sub.service.identifier == SERVICE  # Leistungsschlüssel → URN
    assert sub.destination_id == DEST


def test_json_bytes_are_kept_exactly() -> None:
    raw = b'{ "a" : 1 }\n'
    sub = builder().json_data(raw, schema_uri=JSON_SCHEMA).build()
    assert sub.data is not None
    assert sub.data.content == raw
    with pytest.raises(SubmissionError, match="JSON data"):
        builder().json_data(b"{nope", schema_uri=JSON_SCHEMA)
    with pytest.raises(SubmissionError, match="duplicate"):
        builder().json_data(b'{"a":1,"a":2}', schema_uri=JSON_SCHEMA)


def test_xml_data() -> None:
    xml = "<?xml version='1.0' encoding='UTF-8'?><antrag><name>Jörg</name></antrag>"
    sub = builder().xml_data(xml, schema_uri=XML_SCHEMA).build()
    assert sub.data is not None
    assert sub.data_schema == (XML_SCHEMA, "application/xml")
    assert sub.data.content == xml.encode()  # type: ignore[union-attr]
    with pytest.raises(SubmissionError, match="not well-formed"):
        builder().xml_data(b"<a><b></a>", schema_uri=XML_SCHEMA)


def test_only_one_data_part_and_known_mime_types() -> None:
    b = builder().json_data({}, schema_uri=JSON_SCHEMA)
    with pytest.raises(SubmissionError, match="already set"):
        b.xml_data(b"<a/>", schema_uri=XML_SCHEMA)
    with pytest.raises(SubmissionError, match="application/json or application/xml"):
        builder().data(b"x", schema_uri=JSON_SCHEMA, mime_type="text/plain")
    with pytest.raises(SubmissionError, match="schema URI"):
        builder().json_data({}, schema_uri=" ")


def test_pre_encrypted_data() -> None:
    plaintext = b'{"antrag":1}'
    part = jwe.encrypt(plaintext, destination_keys().encryption_public, cty="application/json")
    digest = hashlib.sha512(plaintext).hexdigest()
    sub = builder().encrypted_data(part.token, sha512_hex=digest, schema_uri=JSON_SCHEMA).build()
    assert isinstance(sub.data, EncryptedDataPart)
    assert sub.data.sha512_hex == digest
    assert part.token[:20] not in repr(sub.data)
    with pytest.raises(SubmissionError, match="128 hex"):
        builder().encrypted_data(part.token, sha512_hex="abc", schema_uri=JSON_SCHEMA)
    with pytest.raises(SubmissionError, match="5 segments"):
        builder().encrypted_data("a.b", sha512_hex=digest, schema_uri=JSON_SCHEMA)


def test_attachments_from_bytes_path_and_stream(tmp_path: Path) -> None:
    pdf = tmp_path / "antrag.pdf"
    pdf.write_bytes(b"%PDF-1.7 test")
    stream = io.BytesIO(b"xxhello")
    stream.seek(2)
    sub = (
        builder()
        .attachment(b"plain text", filename="notiz.txt", description="Notiz")
        .attachment(pdf, purpose="form")
        .attachment(stream, filename="data.bin", purpose=AttachmentPurpose.REPORT)
        .build()
    )
    text, form, report = sub.attachments
    assert (text.mime_type, text.size, text.content, text.purpose) == (
        "text/plain",
        10,
        b"plain text",
        AttachmentPurpose.ATTACHMENT,
    )
    assert (form.filename, form.mime_type, form.size, form.path) == (
        "antrag.pdf",
        "application/pdf",
        13,
        pdf,
    )
    assert form.purpose is AttachmentPurpose.FORM
    assert (report.size, report.mime_type, report.stream) == (5, "application/octet-stream", stream)
    assert len({a.attachment_id for a in sub.attachments}) == 3
    assert all(a.replayable for a in sub.attachments)
    # A submission of attachments only is fine.
    assert builder().attachment(b"x", filename="a.txt").build().data is None


def test_attachment_errors(tmp_path: Path) -> None:
    with pytest.raises(SubmissionError, match="not found"):
        builder().attachment(tmp_path / "missing.pdf")
    with pytest.raises(SubmissionError, match="not a regular file"):
        builder().attachment(tmp_path)

    class Pipe(io.RawIOBase):
        def readable(self) -> bool:
            return True

    with pytest.raises(SubmissionError, match="size"):
        builder().attachment(Pipe())  # type: ignore[arg-type]
    sub = builder().attachment(Pipe(), size=3, filename="p.bin").build()  # type: ignore[arg-type]
    assert not sub.attachments[0].replayable
    with pytest.raises(SubmissionError, match="purpose"):
        builder().attachment(b"x", purpose="selfie")
    with pytest.raises(SubmissionError, match="mime"):
        builder().attachment(b"x", mime_type="not a mime type")
    aid = "2046f9f1-dc89-4440-9c24-c76a8f40d668"
    once = builder().attachment(b"x", attachment_id=aid)
    with pytest.raises(SubmissionError, match="used twice"):
        once.attachment(b"y", attachment_id=aid)
    with pytest.raises(SubmissionError, match="UUIDv4"):
        builder().attachment(b"x", attachment_id="e89e107e-ed79-10e6-ad34-4e770f9df263")
    with pytest.raises(SubmissionError, match="bytes, a path or a binary stream"):
        builder().attachment(42)  # type: ignore[arg-type]


def test_pre_encrypted_attachment(tmp_path: Path) -> None:
    token = jwe.encrypt(b"abc", destination_keys().encryption_public).token
    digest = hashlib.sha512(b"abc").hexdigest()
    path = tmp_path / "a.jwe"
    path.write_text(token + "\n")
    sub = (
        builder()
        .encrypted_attachment(token, sha512_hex=digest, mime_type="text/plain")
        .encrypted_attachment(path, sha512_hex=digest.upper(), mime_type="text/plain")
        .build()
    )
    first, second = sub.attachments
    assert first.pre_encrypted
    assert second.pre_encrypted
    assert first.encrypted_token == token
    assert second.encrypted_path == path
    assert second.sha512_hex == digest


def test_metadata_inputs_are_checked_at_once() -> None:
    with pytest.raises(SubmissionError, match="e-mail"):
        builder().reply_email("not an address")
    with pytest.raises(SubmissionError, match="already set"):
        builder().reply_email("a@example.org").reply_demail("b@example.org")
    with pytest.raises(SubmissionError, match="10 digits"):
        builder().reply_elster("123")
    with pytest.raises(SubmissionError, match="transaction_id"):
        builder().payment("ref", "bad id with spaces", "PAYPAL", "BOOKED")
    with pytest.raises(SubmissionError, match="application_date"):
        builder().reference(application_date="31.12.2024")


def test_full_metadata_for_a_version() -> None:
    sub = (
        builder()
        .json_data({"a": 1}, schema_uri=JSON_SCHEMA)
        .attachment(b"x", filename="x.txt")
        .reply_email("erika@example.org")
        .payment("KZ-1", "tx-42", "PAYPAL", "BOOKED", gross_amount="12.50")
        .authentication("1.0.0", "eyJhbGciOi")
        .reference(sender_reference="AZ-7", application_date=date(2026, 1, 2))
        .extra("x-sender", {"system": "unit"})
        .build()
    )
    assert sub.reply_channel == "eMail"
    digest = "a" * 128
    doc = sub.metadata(
        "1.2.0",
        data_sha512=digest,
        attachment_sha512={sub.attachments[0].attachment_id: digest},
    ).build()
    assert doc["$schema"].endswith("/1.2.0/metadata.schema.json")
    assert doc["publicServiceType"] == {"identifier": SERVICE, "name": "Testantrag"}
    assert doc["contentStructure"]["data"]["hash"]["content"] == digest
    assert doc["replyChannel"] == {"eMail": {"address": "erika@example.org"}}
    assert doc["paymentInformation"]["grossAmount"] == 12.5
    assert doc["additionalReferenceInfo"] == {
        "senderReference": "AZ-7",
        "applicationDate": "2026-01-02",
    }
    assert doc["x-sender"] == {"system": "unit"}


def test_build_requires_destination_service_name_and_content() -> None:
    with pytest.raises(SubmissionError, match="no destination"):
        SubmissionBuilder().service(SERVICE, "x").json_data({}, schema_uri=JSON_SCHEMA).build()
    with pytest.raises(SubmissionError, match="no service"):
        SubmissionBuilder(DEST).json_data({}, schema_uri=JSON_SCHEMA).build()
    with pytest.raises(SubmissionError, match="needs a name"):
        SubmissionBuilder(DEST).service(SERVICE).json_data({}, schema_uri=JSON_SCHEMA).build()
    with pytest.raises(SubmissionError, match="empty"):
        builder().build()
    with pytest.raises(SubmissionError, match="UUID"):
        SubmissionBuilder("nope")
    with pytest.raises(SubmissionError, match="Leistungsschlüssel"):
        SubmissionBuilder(DEST).service("12345")


def test_callback_secret_is_hidden() -> None:
    sub = (
        builder()
        .json_data({}, schema_uri=JSON_SCHEMA)
        .callback("https://sender.example/cb", "cb-secret-123")
        .build()
    )
    assert sub.callback is not None
    assert "cb-secret-123" not in repr(sub)
    assert "cb-secret-123" not in repr(sub.callback)
    with pytest.raises(SubmissionError, match="invalid callback"):
        builder().callback("ftp://x", "s")
