"""Submission API v1 bodies (protocol/api.py): exact wire names, tolerance, id validation."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from pydantic import ValidationError

from fitconnect_kit.protocol import api
from fitconnect_kit.protocol.api import (
    ERROR_DUPLICATE_ATTACHMENT_IDS,
    ERROR_UUID,
    ERROR_UUID_V4,
    AnnounceSubmission,
    ApiInfo,
    CallbackConfig,
    Destination,
    DestinationPatch,
    DestinationStatus,
    DestinationUpdate,
    EventLog,
    NewEventsCallback,
    NewSubmissionsCallback,
    OAuthError,
    PublicDestination,
    ReplyChannels,
    Submission,
    SubmissionCreated,
    SubmissionList,
    SubmissionStatus,
    SubmissionSummary,
    SubmitSubmission,
    TokenResponse,
    describe_validation_error,
    validation_error_types,
)

DEST = "879ee109-a690-4db8-ab32-424284184d7d"
SUB = "ce75a6b8-d72f-4b94-b09e-af6be35bc2ae"
CASE = "e89e107e-ed79-40e6-ad34-4e770f9df263"
ATT1 = "2046f9f1-dc89-4440-9c24-c76a8f40d668"
ATT2 = "b9715dcb-700e-44d9-802f-12b45bf9f8a3"
LEIKA = "urn:de:fim:leika:leistung:99400048079000"


def announce_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "destinationId": DEST,
        "announcedAttachments": [ATT1, ATT2],
        "serviceType": {"name": "Bauantrag", "identifier": LEIKA},
    }
    body.update(overrides)
    return body


def test_announce_round_trip_with_exact_wire_names() -> None:
    body = announce_body(
        callback={"url": "https://sender.example/cb", "secret": "s3cret-value"}, caseId=CASE
    )
    model = AnnounceSubmission.model_validate(body)
    assert model.destination_id == DEST
    assert model.announced_attachments == [ATT1, ATT2]
    assert model.service_type.identifier == LEIKA
    assert model.to_json() == body
    assert json.loads(model.to_bytes()) == body
    assert b" " not in model.to_bytes().replace(b"Bauantrag", b"")


def test_models_accept_python_names_and_serialize_aliases() -> None:
    model = SubmissionSummary(destination_id=DEST, submission_id=SUB, case_id=CASE)
    assert model.to_json() == {"destinationId": DEST, "submissionId": SUB, "caseId": CASE}
    assert model.model_dump() == model.to_json()  # aliases by default


def test_unknown_members_are_ignored() -> None:
    model = AnnounceSubmission.model_validate(announce_body(futureField=1, bidirectional=True))
    assert "futureField" not in model.to_json()
    created = SubmissionCreated.model_validate(
        {"destinationId": DEST, "submissionId": SUB, "caseId": CASE, "links": {}}
    )
    assert created.to_json() == {"destinationId": DEST, "submissionId": SUB, "caseId": CASE}


def test_ids_are_normalized_to_lowercase() -> None:
    model = AnnounceSubmission.model_validate(
        announce_body(destinationId=DEST.upper(), announcedAttachments=[ATT1.replace("-", "")])
    )
    assert model.destination_id == DEST
    assert model.announced_attachments == [ATT1]


@pytest.mark.parametrize(
    ("override", "error_type", "path"),
    [
        ({"destinationId": "not-a-uuid"}, ERROR_UUID, "destinationId"),
        ({"destinationId": 12}, ERROR_UUID, "destinationId"),
        ({"announcedAttachments": ["zzz"]}, ERROR_UUID, "announcedAttachments[0]"),
        # A valid UUID but version 1: sender-chosen attachment ids must be random UUIDv4.
        (
            {"announcedAttachments": ["c232ab00-9414-11ec-b3c8-9f6bdeced846"]},
            ERROR_UUID_V4,
            "announcedAttachments[0]",
        ),
        ({"announcedAttachments": [ATT1, ATT1.upper()]}, ERROR_DUPLICATE_ATTACHMENT_IDS, None),
        ({"caseId": "x"}, ERROR_UUID, "caseId"),
        ({"serviceType": {"name": "x", "identifier": "leika 1"}}, "service_identifier", None),
    ],
)
def test_bad_ids_are_refused_with_clear_errors(
    override: dict[str, Any], error_type: str, path: str | None
) -> None:
    with pytest.raises(ValidationError) as info:
        AnnounceSubmission.model_validate(announce_body(**override))
    assert error_type in validation_error_types(info.value)
    message = describe_validation_error(info.value)
    if path:
        assert message.startswith(f"{path}: ")
    assert "\n" not in message


def test_duplicate_message_names_the_id() -> None:
    with pytest.raises(ValidationError) as info:
        AnnounceSubmission.model_validate(announce_body(announcedAttachments=[ATT1, ATT2, ATT1]))
    assert describe_validation_error(info.value) == (
        f"announcedAttachments: attachment id {ATT1} is announced more than once"
    )


def test_service_identifier_bare_key_becomes_urn() -> None:
    model = AnnounceSubmission.model_validate(
        announce_body(serviceType={"name": "x", "identifier": "99400048079000"})
    )
    assert model.service_type.identifier == LEIKA


def test_callback_secret_is_write_only() -> None:
    config = CallbackConfig(url="https://r.example/cb", secret="top-secret-123")
    assert "top-secret-123" not in repr(config)
    assert "top-secret-123" not in str(config)
    assert config.to_json() == {"url": "https://r.example/cb", "secret": "top-secret-123"}
    assert config.is_https
    announce = AnnounceSubmission.model_validate(announce_body(callback=config.to_json()))
    assert "top-secret-123" not in repr(announce)
    # Owner view of a destination never has the secret, even if a server sends one.
    dest = Destination.model_validate(
        {**public_destination_body(), "callback": {"url": "https://r.example/cb", "secret": "x"}}
    )
    assert dest.to_json()["callback"] == {"url": "https://r.example/cb"}


def test_callback_validation_hides_the_input() -> None:
    with pytest.raises(ValidationError) as info:
        CallbackConfig.model_validate({"url": "ftp://x.example", "secret": "hidden-secret"})
    assert "hidden-secret" not in str(info.value)
    with pytest.raises(ValidationError) as info:
        CallbackConfig.model_validate({"url": "https://x.example", "secret": ""})
    assert describe_validation_error(info.value).startswith("secret:")
    assert CallbackConfig(url="http://localhost:8080/cb", secret="s").is_https is False


def test_submit_submission() -> None:
    body = {"encryptedMetadata": "a.b.c.d.e"}
    model = SubmitSubmission.model_validate(body)
    assert model.encrypted_data is None
    assert model.to_json() == body
    assert SubmitSubmission.model_validate({**body, "encryptedData": None}).to_json() == body
    with pytest.raises(ValidationError):
        SubmitSubmission.model_validate({"encryptedData": "a.b.c.d.e"})


def test_submission_and_list() -> None:
    body = {
        "destinationId": DEST,
        "submissionId": SUB,
        "caseId": CASE,
        "serviceType": {"name": "Bauantrag", "identifier": LEIKA},
        "attachments": [ATT1],
        "encryptedMetadata": "m.m.m.m.m",
        "encryptedData": "d.d.d.d.d",
    }
    assert Submission.model_validate(body).to_json() == body
    listing = {
        "count": 1,
        "offset": 0,
        "totalCount": 7,
        "submissions": [{"destinationId": DEST, "submissionId": SUB, "caseId": CASE}],
    }
    model = SubmissionList.model_validate(listing)
    assert model.total_count == 7
    assert model.to_json() == listing
    with pytest.raises(ValidationError):
        SubmissionList.model_validate({**listing, "count": -1})


def public_destination_body() -> dict[str, Any]:
    return {
        "destinationId": DEST,
        "status": "active",
        "services": [
            {
                "identifier": LEIKA,
                "submissionSchemas": [
                    {
                        "schemaUri": "https://schema.fitko.de/fim/s00000000009_1.0.0.schema.json",
                        "mimeType": "application/json",
                    }
                ],
                "regions": ["DE09372126"],
                "replyChannels": {"eMail": {"usePgp": True}, "fitConnect": {}},
            }
        ],
        "encryptionKid": "NFNb7k84r61G9ayAAJItJCNGl7wKWif9HyBAgicJq_8",
        "metadataVersions": ["1.0.0", "1.1.0"],
        "replyChannels": {"eMail": {"usePgp": True}},
    }


def test_public_destination_round_trip() -> None:
    body = public_destination_body()
    model = PublicDestination.model_validate(body)
    assert model.status is DestinationStatus.ACTIVE
    assert model.to_json() == body
    assert model.service("99400048079000") is model.services[0]
    assert model.service("urn:de:fim:leika:leistung:99400048079001") is None
    assert model.service("garbage") is None


def test_reply_channels_keep_unknown_channels_and_members() -> None:
    raw = {"eMail": {"usePgp": False, "x": 1}, "bundId": {"a": True}, "elster": {}}
    channels = ReplyChannels.model_validate(raw)
    assert channels.e_mail is not None
    assert channels.e_mail.use_pgp is False
    assert channels.to_json() == raw
    assert set(channels.channel_names()) == {"eMail", "elster", "bundId"}


def test_owner_destination_view() -> None:
    body = {
        **public_destination_body(),
        "callback": {"url": "https://r.example/cb"},
        "contactInformation": {"legalName": "Stadt X", "email": "it@x.example", "fax": "1"},
        "name": "Bauamt",
    }
    model = Destination.model_validate(body)
    assert model.contact_information is not None
    assert model.to_json() == body


def test_destination_status_created_cannot_be_set() -> None:
    with pytest.raises(ValidationError) as info:
        DestinationPatch.model_validate({"status": "created"})
    assert "status_not_allowed" in validation_error_types(info.value)
    patch = DestinationPatch.model_validate({"encryptionKid": "new-encryption-key"})
    assert patch.to_json() == {"encryptionKid": "new-encryption-key"}
    assert patch.changed_fields() == {"encryption_kid"}
    assert DestinationPatch.model_validate({"status": "inactive"}).to_json() == {
        "status": "inactive"
    }
    full = {k: v for k, v in public_destination_body().items() if k != "destinationId"}
    assert DestinationUpdate.model_validate(full).status is DestinationStatus.ACTIVE
    with pytest.raises(ValidationError):
        DestinationUpdate.model_validate({**full, "status": "created"})


def test_event_log_info_token_and_oauth_error() -> None:
    log = EventLog.model_validate({"eventLog": ["a.b.c"], "totalCount": 1, "other": 2})
    assert log.to_json() == {"eventLog": ["a.b.c"], "totalCount": 1}
    info = ApiInfo.model_validate({"version": {"major": 1, "minor": 3, "patch": 0}, "x": "y"})
    assert str(info.version) == "1.3.0"
    assert info.to_json() == {"version": {"major": 1, "minor": 3, "patch": 0}, "x": "y"}
    token = TokenResponse.model_validate(
        {
            "access_token": "eyJsecret.token.value",
            "token_type": "Bearer",
            "expires_in": 1800,
            "scope": "send:region:DE a",
        }
    )
    assert token.scopes == ["send:region:DE", "a"]
    assert "eyJsecret" not in repr(token)
    assert OAuthError.model_validate({"error": "invalid_client"}).to_json() == {
        "error": "invalid_client"
    }


def test_status_enums() -> None:
    assert [s.value for s in SubmissionStatus] == [
        "incomplete",
        "submitted",
        "notified",
        "forwarded",
        "accepted",
        "rejected",
        "deleted",
    ]
    assert {s.value for s in DestinationStatus} == {
        "created",
        "active",
        "inactive",
        "decommissioned",
    }


def test_callback_payload_models() -> None:
    summary = {"destinationId": DEST, "submissionId": SUB, "caseId": CASE}
    old = NewSubmissionsCallback.model_validate({"type": "t", "submissionIds": [SUB]})
    assert old.submissions == []
    assert old.all_submission_ids() == [SUB]
    both = NewSubmissionsCallback.model_validate(
        {"type": "t", "submissionIds": [SUB], "submissions": [summary]}
    )
    assert both.all_submission_ids() == [SUB]
    events = NewEventsCallback.model_validate({"type": "t", "submissions": [summary]})
    assert events.to_json() == {"type": "t", "submissions": [summary]}


def test_limits_and_unconfirmed_table() -> None:
    assert api.LIMIT_MAX_ATTACHMENT_BYTES == 500_000_000
    assert api.LIMIT_MAX_TOTAL_ATTACHMENT_BYTES == 2_000_000_000
    assert api.LIMIT_MAX_ATTACHMENTS == 100
    assert api.EVENT_LOG_PAGE_MAX == 500
    assert api.MIN_JWE_COMPACT_LENGTH == 776
    assert "limits.units" in api.UNCONFIRMED_CHOICES


def test_random_uuid4_attachments_are_accepted() -> None:
    ids = [str(uuid.uuid4()) for _ in range(100)]
    model = AnnounceSubmission.model_validate(announce_body(announcedAttachments=ids))
    assert model.announced_attachments == ids
