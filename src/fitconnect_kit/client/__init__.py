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

if TYPE_CHECKING:
    from fitconnect_kit.client._http import RetryPolicy
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
}
for _name in (
    "AmbiguousCaseError",
    "ApiError",
    "AuthenticationError",
    "ClientError",
    "ConfigurationError",
    "ConflictError",
    "DataSchemaNotOfferedError",
    "DestinationCheckError",
    "DestinationInactiveError",
    "EncryptionKeyRejectedError",
    "EventLogVerificationError",
    "InvalidClientError",
    "InvalidRequestError",
    "InvalidResponseError",
    "InvalidScopeError",
    "MetadataVersionNotSupportedError",
    "NotFoundError",
    "PermissionDeniedError",
    "ProfileError",
    "ProfileNotFoundError",
    "RateLimitedError",
    "ReplyChannelNotOfferedError",
    "ServerError",
    "ServiceNotOfferedError",
    "SubmissionError",
    "SubmissionLimitError",
    "TokenError",
    "TransportError",
    "WaitTimeoutError",
):
    _EXPORTS[_name] = "errors"

__all__ = [
    "AmbiguousCaseError",
    "ApiError",
    "AsyncSender",
    "AuthenticationError",
    "CheckedDestination",
    "ClientError",
    "ConfigurationError",
    "ConflictError",
    "Credentials",
    "DataSchemaNotOfferedError",
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
    "Profile",
    "ProfileError",
    "ProfileNotFoundError",
    "RateLimitedError",
    "ReplyChannelNotOfferedError",
    "RetryPolicy",
    "Sender",
    "SentSubmission",
    "ServerError",
    "ServiceNotOfferedError",
    "Settings",
    "StatusReport",
    "Submission",
    "SubmissionBuilder",
    "SubmissionError",
    "SubmissionLimitError",
    "TokenError",
    "TransportError",
    "VerifiedEvent",
    "WaitTimeoutError",
    "find_profile",
    "load_profile",
    "resolve_settings",
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
