"""fitconnect-kit client SDK: environments, credentials, sender (and subscriber) on httpx.

Async core, sync facade — one implementation of the logic::

    from fitconnect_kit.client import Sender, SubmissionBuilder

    with Sender.from_config("test") as sender:          # FITCONNECT_CLIENT_ID/_SECRET or profile
        sent = sender.send(
            SubmissionBuilder(destination_id)
            .service("99123456760610", "Antrag auf Wohngeld")
            .json_data({"antrag": {}}, schema_uri="https://schema.fitko.de/fim/s00000096_1.0.schema.json")
            .build()
        )
        print(sender.wait(sent).status)

Names are imported lazily, so ``import fitconnect_kit.client`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fitconnect_kit.client import errors as _errors

if TYPE_CHECKING:
    from fitconnect_kit.client._http import RetryPolicy
    from fitconnect_kit.client.callbacks import (
        CallbackApp,
        CallbackWsgiApp,
        verify_callback,
        verify_wsgi_environ,
    )
    from fitconnect_kit.client.config import (
        Credentials,
        Profile,
        Settings,
        find_profile,
        load_profile,
        resolve_settings,
    )
    from fitconnect_kit.client.environments import Environment
    from fitconnect_kit.client.errors import (
        AmbiguousCaseError,
        ApiError,
        AuthenticationError,
        ClientError,
        ConfigurationError,
        ConflictError,
        DataSchemaNotOfferedError,
        DestinationCheckError,
        DestinationInactiveError,
        EncryptionKeyRejectedError,
        EventLogVerificationError,
        InvalidClientError,
        InvalidRequestError,
        InvalidResponseError,
        InvalidScopeError,
        MetadataVersionNotSupportedError,
        NotFoundError,
        PermissionDeniedError,
        ProfileError,
        ProfileNotFoundError,
        RateLimitedError,
        ReplyChannelNotOfferedError,
        ServerError,
        ServiceNotOfferedError,
        SubmissionError,
        SubmissionLimitError,
        TokenError,
        TransportError,
        WaitTimeoutError,
    )
    from fitconnect_kit.client.eventlog import VerifiedEvent
    from fitconnect_kit.client.keystore import DecryptionKeys, SigningKey
    from fitconnect_kit.client.schemas import SchemaNotAvailableError, SchemaRegistry
    from fitconnect_kit.client.sender import (
        AsyncSender,
        CheckedDestination,
        DestinationReport,
        Limits,
        Sender,
        SentSubmission,
        StatusReport,
    )
    from fitconnect_kit.client.submission import Submission, SubmissionBuilder
    from fitconnect_kit.client.subscriber import (
        AsyncSubscriber,
        CaseEventLog,
        PostedEvent,
        ReceivedAttachment,
        ReceivedSubmission,
        SubmissionInvalidError,
        Subscriber,
        VerificationIncompleteError,
    )
    from fitconnect_kit.client.verification import Verdict
    from fitconnect_kit.client.worker import Accept, Reject, SubscriberWorker

_EXPORTS: dict[str, str] = {
    "RetryPolicy": "_http",
    "Credentials": "config",
    "Profile": "config",
    "Settings": "config",
    "find_profile": "config",
    "load_profile": "config",
    "resolve_settings": "config",
    "Environment": "environments",
    "VerifiedEvent": "eventlog",
    "AsyncSender": "sender",
    "CheckedDestination": "sender",
    "DestinationReport": "sender",
    "Limits": "sender",
    "Sender": "sender",
    "SentSubmission": "sender",
    "StatusReport": "sender",
    "Submission": "submission",
    "SubmissionBuilder": "submission",
    # subscriber SDK
    "AsyncSubscriber": "subscriber",
    "Subscriber": "subscriber",
    "ReceivedSubmission": "subscriber",
    "ReceivedAttachment": "subscriber",
    "PostedEvent": "subscriber",
    "CaseEventLog": "subscriber",
    "SubmissionInvalidError": "subscriber",
    "VerificationIncompleteError": "subscriber",
    "Verdict": "verification",
    "DecryptionKeys": "keystore",
    "SigningKey": "keystore",
    "SchemaRegistry": "schemas",
    "SchemaNotAvailableError": "schemas",
    "CallbackApp": "callbacks",
    "CallbackWsgiApp": "callbacks",
    "verify_callback": "callbacks",
    "verify_wsgi_environ": "callbacks",
    "SubscriberWorker": "worker",
    "Accept": "worker",
    "Reject": "worker",
}
# Every error class, from the one list in errors.py (importing it is cheap: no httpx, no crypto).
_EXPORTS.update(dict.fromkeys(_errors.__all__, "errors"))

__all__ = [
    "Accept",
    "AmbiguousCaseError",
    "ApiError",
    "AsyncSender",
    "AsyncSubscriber",
    "AuthenticationError",
    "CallbackApp",
    "CallbackWsgiApp",
    "CaseEventLog",
    "CheckedDestination",
    "ClientError",
    "ConfigurationError",
    "ConflictError",
    "Credentials",
    "DataSchemaNotOfferedError",
    "DecryptionKeys",
    "DestinationCheckError",
    "DestinationInactiveError",
    "DestinationReport",
    "EncryptionKeyRejectedError",
    "Environment",
    "EventLogVerificationError",
    "InvalidClientError",
    "InvalidRequestError",
    "InvalidResponseError",
    "InvalidScopeError",
    "Limits",
    "MetadataVersionNotSupportedError",
    "NotFoundError",
    "PermissionDeniedError",
    "PostedEvent",
    "Profile",
    "ProfileError",
    "ProfileNotFoundError",
    "RateLimitedError",
    "ReceivedAttachment",
    "ReceivedSubmission",
    "Reject",
    "ReplyChannelNotOfferedError",
    "RetryPolicy",
    "SchemaNotAvailableError",
    "SchemaRegistry",
    "Sender",
    "SentSubmission",
    "ServerError",
    "ServiceNotOfferedError",
    "Settings",
    "SigningKey",
    "StatusReport",
    "Submission",
    "SubmissionBuilder",
    "SubmissionError",
    "SubmissionInvalidError",
    "SubmissionLimitError",
    "Subscriber",
    "SubscriberWorker",
    "TokenError",
    "TransportError",
    "Verdict",
    "VerificationIncompleteError",
    "VerifiedEvent",
    "WaitTimeoutError",
    "find_profile",
    "load_profile",
    "resolve_settings",
    "verify_callback",
    "verify_wsgi_environ",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
