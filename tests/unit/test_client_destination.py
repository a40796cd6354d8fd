"""Destination checks before sending: each failure has its own typed error."""

from __future__ import annotations

from typing import Any

import pytest
from tests.unit.test_client_fakes import (
    JSON_SCHEMA,
    SERVICE,
    XML_SCHEMA,
    FakeZustelldienst,
    RecordingSleep,
    credentials,
    environment,
    other_destination_keys,
)

from fitconnect_kit.client.errors import (
    ConfigurationError,
    DataSchemaNotOfferedError,
    DestinationCheckError,
    DestinationInactiveError,
    EncryptionKeyRejectedError,
    MetadataVersionNotSupportedError,
    NotFoundError,
    ReplyChannelNotOfferedError,
    ServiceNotOfferedError,
)
from fitconnect_kit.client.sender import AsyncSender
from fitconnect_kit.protocol.keys import TrustPolicy


def sender_for(zd: FakeZustelldienst, **options: Any) -> AsyncSender:
    options.setdefault("sleep", RecordingSleep())
    return AsyncSender(
        environment(), credentials(), transport=zd.transport(), clock=zd.clock, **options
    )


async def check(zd: FakeZustelldienst, **kwargs: Any) -> Any:
    args: dict[str, Any] = {"service": SERVICE, "data_schema": (JSON_SCHEMA, "application/json")}
    args.update(kwargs)
    async with sender_for(zd) as sender:
        return await sender.check_destination(zd.destination_id, **args)


async def test_a_good_destination_passes() -> None:
    zd = FakeZustelldienst()
    checked = await check(zd, reply_channel="eMail")
    assert checked.destination_id == zd.destination_id
    assert checked.metadata_version == "1.2.0"  # highest version both sides know
    assert checked.encryption_kid == zd.keys.encryption_kid
    assert checked.encryption_key.key_size == 4096
    assert checked.service.identifier == SERVICE
    # Bare Leistungsschlüssel works as well; XML schema is offered too.
    await check(zd, service="99400048079000", data_schema=(XML_SCHEMA, "application/xml"))


@pytest.mark.parametrize("status", ["inactive", "created", "decommissioned"])
async def test_inactive_destination(status: str) -> None:
    zd = FakeZustelldienst()
    zd.destination["status"] = status
    with pytest.raises(DestinationInactiveError, match=f"is '{status}'") as info:
        await check(zd)
    assert info.value.cli_exit_code == 3
    assert info.value.destination_id == zd.destination_id


async def test_service_not_offered() -> None:
    zd = FakeZustelldienst()
    with pytest.raises(ServiceNotOfferedError, match="does not offer service") as info:
        await check(zd, service="99123456760610")
    assert SERVICE in str(info.value)  # lists what is offered
    with pytest.raises(ServiceNotOfferedError, match="Leistungsschlüssel"):
        await check(zd, service="not a urn")


async def test_data_schema_not_offered() -> None:
    zd = FakeZustelldienst()
    with pytest.raises(DataSchemaNotOfferedError, match="does not accept data schema") as info:
        await check(zd, data_schema=(JSON_SCHEMA, "application/xml"))
    assert JSON_SCHEMA in str(info.value)
    with pytest.raises(DataSchemaNotOfferedError):
        await check(zd, data_schema=("urn:other", "application/json"))


async def test_metadata_version_not_supported() -> None:
    zd = FakeZustelldienst()
    zd.destination["metadataVersions"] = ["2.0.0", "2.1.0"]
    with pytest.raises(MetadataVersionNotSupportedError, match="no common version"):
        await check(zd)
    zd.destination["metadataVersions"] = ["1.0.0"]
    with pytest.raises(MetadataVersionNotSupportedError, match="reply channel needs"):
        await check(zd, reply_channel="fitConnect")


async def test_reply_channel_per_service_with_top_level_fallback() -> None:
    zd = FakeZustelldienst()
    with pytest.raises(ReplyChannelNotOfferedError, match="offered: eMail"):
        await check(zd, reply_channel="deMail")
    # Without per-service channels the deprecated top-level ones apply.
    del zd.destination["services"][0]["replyChannels"]
    zd.destination["replyChannels"] = {"deMail": {}}
    await check(zd, reply_channel="deMail")
    with pytest.raises(ReplyChannelNotOfferedError):
        await check(zd, reply_channel="eMail")
    # No channel at all: the authority answers by post.
    del zd.destination["replyChannels"]
    with pytest.raises(ReplyChannelNotOfferedError, match="answers by post"):
        await check(zd, reply_channel="eMail")
    await check(zd)  # no reply channel asked for: fine


async def test_encryption_key_missing() -> None:
    zd = FakeZustelldienst()
    zd.dest_keys.clear()
    with pytest.raises(EncryptionKeyRejectedError, match="has no such key"):
        await check(zd)


async def test_encryption_key_breaking_key_rules() -> None:
    zd = FakeZustelldienst()
    key = zd.dest_keys[zd.keys.encryption_kid]
    key["key_ops"] = ["encrypt"]
    with pytest.raises(EncryptionKeyRejectedError, match="key_ops") as info:
        await check(zd)
    assert isinstance(info.value, DestinationCheckError)


async def test_encryption_key_without_x5c() -> None:
    zd = FakeZustelldienst()
    del zd.dest_keys[zd.keys.encryption_kid]["x5c"]
    with pytest.raises(EncryptionKeyRejectedError, match="x5c"):
        await check(zd)


async def test_self_signed_chain_is_refused_under_a_strict_policy() -> None:
    zd = FakeZustelldienst()
    strict = TrustPolicy.strict([other_destination_keys().ca_certificate])
    async with sender_for(zd, trust_policy=strict) as sender:
        with pytest.raises(EncryptionKeyRejectedError, match="not acceptable"):
            await sender.check_destination(zd.destination_id, service=SERVICE)
    anchored = TrustPolicy.strict([zd.keys.ca_certificate])
    async with sender_for(zd, trust_policy=anchored) as sender:
        await sender.check_destination(zd.destination_id, service=SERVICE)


async def test_strict_environment_without_anchors_is_a_configuration_error() -> None:
    zd = FakeZustelldienst()
    env = environment(trust="strict")
    async with AsyncSender(env, credentials(), transport=zd.transport()) as sender:
        with pytest.raises(ConfigurationError, match="trust anchors"):
            await sender.check_destination(zd.destination_id, service=SERVICE)


async def test_key_with_other_kid_is_refused() -> None:
    zd = FakeZustelldienst()
    zd.dest_keys[zd.keys.encryption_kid] = dict(zd.dest_keys[zd.keys.signing_kid])
    with pytest.raises(EncryptionKeyRejectedError, match="asked for encryption key"):
        await check(zd)


async def test_signature_key_as_encryption_key_is_refused() -> None:
    zd = FakeZustelldienst()
    zd.destination["encryptionKid"] = zd.keys.signing_kid
    with pytest.raises(EncryptionKeyRejectedError, match=r"alg|key_ops"):
        await check(zd)


async def test_unknown_destination() -> None:
    zd = FakeZustelldienst()
    async with sender_for(zd) as sender:
        with pytest.raises(NotFoundError, match="not found on environment 'unit'") as info:
            await sender.check_destination("6f3c1f2e-3b7a-4c39-9b1e-0a1b2c3d4e5f", service=SERVICE)
    assert info.value.cli_exit_code == 4


async def test_inspect_destination_reports_without_raising() -> None:
    zd = FakeZustelldienst()
    zd.destination["status"] = "inactive"
    zd.dest_keys[zd.keys.encryption_kid]["key_ops"] = ["encrypt"]
    async with sender_for(zd) as sender:
        report = await sender.inspect_destination(
            zd.destination_id, service="99123456760610", reply_channel="eMail"
        )
    assert not report.ok
    assert not report.key_valid
    assert report.metadata_version == "1.2.0"
    assert len(report.problems) == 3
    data = report.to_json()
    assert data["destination"]["destinationId"] == zd.destination_id
    assert data["encryptionKey"]["valid"] is False

    good = FakeZustelldienst()
    async with sender_for(good) as sender:
        report = await sender.inspect_destination(good.destination_id, service=SERVICE)
    assert report.ok
    assert report.key_valid
