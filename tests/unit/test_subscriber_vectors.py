"""The real reference vectors through the subscriber's code path (not only protocol functions).

A fake Zustelldienst serves, as submission ``5e82c135-…`` of case ``c9f0db91-…``:

* as ``encryptedMetadata`` the metadata JWE a production sender platform (GovOS) produced in
  FITKO's test environment (``zip: DEF``, ``cty: application/json``), decryptable with the
  vector's private key — the subscriber decrypts, validates (metadata 1.0.0 with vendor
  extension members) and *uses* it: its service, attachment id and data schema drive the checks;
* as the case's event log the real ``create-submission`` SET of FITKO's test Zustelldienst
  (verified with the vector's JWKS) followed by a ``submit-submission`` of the fake ZD.

The plaintexts of the real data and attachment are not part of the vector, so the fake serves
other content for them: exactly their two hash checks fail — everything else passes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.unit.test_client_fakes import FakeSubmission, environment
from tests.unit.test_subscriber_fakes import SubscriberZD, make_subscriber

from fitconnect_kit.client.keystore import DecryptionKeys
from fitconnect_kit.client.schemas import SchemaRegistry
from fitconnect_kit.client.verification import StepStatus, Verdict
from fitconnect_kit.protocol.events import AuthenticationTags, Event
from fitconnect_kit.protocol.jose import jwe
from fitconnect_kit.protocol.jose.jwk import public_jwk

SUBMISSION_ID = "5e82c135-a3b7-4eb0-bd83-6df337331170"
CASE_ID = "c9f0db91-9355-451a-b2a5-7a9be10ce765"
ATTACHMENT_ID = "654bf3b3-787d-4606-8913-efd769f69db7"
SERVICE = "urn:de:govos:parent:a3builder-7676-qs"
DATA_SCHEMA = "urn:de:govos:data"
REAL_ZD = "https://submission-api-testing.fit-connect.fitko.dev"


def govos_zd(metadata_vector: dict[str, Any], set_vector: dict[str, Any]) -> SubscriberZD:
    zd = SubscriberZD()
    private = metadata_vector["private_jwk"]
    public = {k: v for k, v in public_jwk(private).items() if k != "key_ops"}
    zd.destination["services"] = [
        {
            "identifier": SERVICE,
            "submissionSchemas": [{"schemaUri": DATA_SCHEMA, "mimeType": "application/json"}],
        }
    ]
    zd.destination["metadataVersions"] = ["1.0.0"]
    zd.destination["encryptionKid"] = private["kid"]
    data = jwe.encrypt(b'{"antrag":"not the original"}', public, cty="application/json").token
    attachment = jwe.encrypt(b"%PDF-1.4 not the original", public, cty="application/pdf").token
    zd.submissions[SUBMISSION_ID] = FakeSubmission(
        submission_id=SUBMISSION_ID,
        case_id=CASE_ID,
        destination_id=zd.destination_id,
        announced=[ATTACHMENT_ID],
        service_type={"name": "QS test", "identifier": SERVICE},
        attachments={ATTACHMENT_ID: attachment.encode("ascii")},
        encrypted_metadata=metadata_vector["jwe"],
        encrypted_data=data,
        status="submitted",
    )
    zd.case_events[CASE_ID] = [set_vector["set_valid"]]  # the real ZD's create-submission
    zd.zd_event(
        Event.SUBMIT_SUBMISSION,
        SUBMISSION_ID,
        {"authenticationTags": zd.tags_of(zd.submissions[SUBMISSION_ID])},
    )
    zd.jwks = {"keys": [*set_vector["jwks"]["keys"], zd.zd_jwk]}
    return zd


@pytest.fixture
def vectors(load_vector: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    return load_vector("sender-metadata-jwe-zip.json"), load_vector("zustelldienst-set.json")


async def test_real_metadata_and_real_zd_set_through_receive(
    vectors: tuple[dict[str, Any], dict[str, Any]], tmp_path: Path
) -> None:
    metadata_vector, set_vector = vectors
    zd = govos_zd(metadata_vector, set_vector)
    keys = DecryptionKeys.load(metadata_vector["private_jwk"])
    schemas = SchemaRegistry().add(DATA_SCHEMA, {"type": "object"})
    async with make_subscriber(zd, decryption_keys=keys, schemas=schemas) as subscriber:
        received = await subscriber.receive(SUBMISSION_ID, tmp_path / "in")

    # The real metadata JWE (zip DEF) was decrypted, validated as 1.0.0 and used.
    assert received.metadata_document == metadata_vector["expected_plaintext"]
    assert received.metadata_version == "1.0.0"
    assert received.metadata is not None
    reference = received.metadata.additional_reference_info
    assert reference is not None
    assert reference.sender_reference == "ThAVEL-Test-9879"
    assert received.metadata_path is not None
    assert received.metadata_path.read_bytes().startswith(b"{")
    steps = {s.number: s.status for s in received.steps}
    for number in (1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 13, 14):
        assert steps[number] is StepStatus.OK, (number, received.steps)
    assert steps[9] is StepStatus.NOT_APPLICABLE  # the GovOS record has no reply channel
    # Its attachment gets the metadata's description/purpose/MIME type (filename: none given).
    (attachment,) = received.attachments
    assert attachment.attachment_id == ATTACHMENT_ID
    assert (attachment.purpose, attachment.mime_type) == ("form", "application/pdf")
    assert attachment.path is not None
    assert attachment.path.name.endswith(".pdf")
    # Only the hashes differ: the vector does not carry the original data and PDF.
    assert [(p.type.rsplit("/", 1)[-1], p.instance) for p in received.problems] == [
        ("hash-mismatch", "data"),
        ("hash-mismatch", f"attachment:{ATTACHMENT_ID}"),
    ]
    # The real create-submission SET of FITKO's test ZD was verified with the vector's JWKS.
    real = [e for e in received.events if e.set.jti == set_vector["expected_payload"]["jti"]]
    assert real
    assert real[0].signer == "zustelldienst"
    assert real[0].issuer == REAL_ZD
    assert received.zd_authentication_tags == AuthenticationTags.from_jwes(
        metadata=metadata_vector["jwe"],
        data=zd.submissions[SUBMISSION_ID].encrypted_data,
        attachments={
            ATTACHMENT_ID: zd.submissions[SUBMISSION_ID].attachments[ATTACHMENT_ID].decode()
        },
    )


async def test_real_zd_set_with_a_wrong_alg_jwks_makes_the_event_log_invalid(
    vectors: tuple[dict[str, Any], dict[str, Any]], tmp_path: Path
) -> None:
    metadata_vector, set_vector = vectors
    zd = govos_zd(metadata_vector, set_vector)
    zd.jwks = {"keys": [*set_vector["jwks_wrong_alg"]["keys"], zd.zd_jwk]}
    keys = DecryptionKeys.load(metadata_vector["private_jwk"])
    schemas = SchemaRegistry().add(DATA_SCHEMA, {"type": "object"})
    async with make_subscriber(zd, decryption_keys=keys, schemas=schemas) as subscriber:
        received = await subscriber.receive(SUBMISSION_ID, tmp_path / "in")
    assert received.verdict is Verdict.INVALID
    assert (received.problems[0].type.rsplit("/", 1)[-1], received.problems[0].instance) == (
        "invalid-event-log",
        "submission",
    )
    assert received.metadata_document == metadata_vector["expected_plaintext"]


async def test_real_metadata_with_the_wrong_key_is_an_encryption_issue(
    vectors: tuple[dict[str, Any], dict[str, Any]], tmp_path: Path
) -> None:
    metadata_vector, set_vector = vectors
    zd = govos_zd(metadata_vector, set_vector)
    zd.destination["encryptionKid"] = zd.keys.encryption_kid  # the vector's kid is unknown now
    async with make_subscriber(zd) as subscriber:
        received = await subscriber.receive(SUBMISSION_ID, tmp_path / "in")
    assert ("encryption-issue", "metadata") in [
        (p.type.rsplit("/", 1)[-1], p.instance) for p in received.problems
    ]
    assert environment().name == "unit"
