"""Typed exceptions of the client SDK.

Every exception derives from :class:`fitconnect_kit.protocol.errors.FitConnectError`. Messages
are one sentence that says what went wrong *and what to do about it*; they never contain client
secrets, access tokens, keys or plaintext. Exceptions that map to a documented CLI exit code
carry it as ``cli_exit_code`` (3 = rejected / check failed, 4 = not found), which
``fitconnect_kit.cli.main`` uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from fitconnect_kit.protocol.errors import FitConnectError

if TYPE_CHECKING:
    from fitconnect_kit.protocol.problems import Problem

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CHECK_FAILED = 3
EXIT_NOT_FOUND = 4


class ClientError(FitConnectError):
    """Base class of all errors raised by :mod:`fitconnect_kit.client`."""

    cli_exit_code: ClassVar[int] = EXIT_ERROR


# --- configuration ------------------------------------------------------------------------------


class ConfigurationError(ClientError):
    """The SDK is not configured well enough to run (environment, credentials, profile)."""

    cli_exit_code = EXIT_USAGE


class ProfileNotFoundError(ConfigurationError):
    """A profile file that was asked for explicitly does not exist."""

    cli_exit_code = EXIT_NOT_FOUND


class ProfileError(ConfigurationError):
    """A profile file exists but cannot be used (invalid JSON, wrong member types)."""


# --- transport and HTTP -----------------------------------------------------------------------


class TransportError(ClientError):
    """The HTTP exchange failed below HTTP (DNS, connect, TLS, timeout, broken connection)."""

    def __init__(self, message: str, *, method: str | None = None, url: str | None = None) -> None:
        super().__init__(message)
        self.method = method
        self.url = url


class ApiError(ClientError):
    """The server answered with an HTTP error status.

    ``status`` is the HTTP status, ``problem`` the parsed RFC 7807 problem (``None`` when the
    body was not problem JSON), ``method``/``url`` the request (URLs carry ids, never secrets).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        problem: Problem | None = None,
        method: str | None = None,
        url: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.problem = problem
        self.method = method
        self.url = url

    @property
    def problem_type(self) -> str | None:
        """The problem ``type`` URI, if the server sent problem JSON."""
        return None if self.problem is None else str(self.problem.type)


class InvalidRequestError(ApiError):
    """400, 413 or 422: the server refused the request as malformed or semantically invalid."""


class AuthenticationError(ApiError):
    """401: the access token was refused (also after fetching a fresh one)."""


class PermissionDeniedError(ApiError):
    """403: the client is authenticated but not allowed to do this."""


class NotFoundError(ApiError):
    """404: the destination, submission, case or key does not exist (on this environment)."""

    cli_exit_code = EXIT_NOT_FOUND


class ConflictError(ApiError):
    """409: the request conflicts with the resource's state (e.g. already uploaded/submitted)."""


class RateLimitedError(ApiError):
    """429: too many requests; ``retry_after`` is the server's wait hint in seconds, if any."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ServerError(ApiError):
    """5xx: the server failed; retried automatically where the request was safe to repeat."""


class InvalidResponseError(ApiError):
    """The server's answer does not have the form FIT-Connect specifies (e.g. not JSON)."""


class TokenError(ApiError):
    """The OAuth token endpoint refused to issue an access token.

    ``error`` is the OAuth error code (RFC 6749 §5.2, e.g. ``invalid_client``), ``description``
    the server's ``error_description``.
    """

    def __init__(
        self,
        message: str,
        *,
        error: str | None = None,
        description: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.error = error
        self.description = description


class InvalidClientError(TokenError, AuthenticationError):
    """``invalid_client``: wrong client id or secret, or a client of another environment."""


class InvalidScopeError(TokenError):
    """``invalid_scope``: the client may not get a token with these scopes."""


# --- destination checks -------------------------------------------------------------------------


class DestinationCheckError(ClientError):
    """A destination cannot receive this submission; nothing was sent."""

    cli_exit_code = EXIT_CHECK_FAILED

    def __init__(self, message: str, *, destination_id: str) -> None:
        super().__init__(message)
        self.destination_id = destination_id


class DestinationInactiveError(DestinationCheckError):
    """The destination's status is not ``active``."""


class ServiceNotOfferedError(DestinationCheckError):
    """The destination does not offer the requested service (Leistung)."""


class DataSchemaNotOfferedError(DestinationCheckError):
    """The destination does not accept this data schema (schemaUri + mimeType) for the service."""


class MetadataVersionNotSupportedError(DestinationCheckError):
    """No metadata version is known to both this SDK and the destination."""


class ReplyChannelNotOfferedError(DestinationCheckError):
    """The requested reply channel is not offered by the destination for the service."""


class EncryptionKeyRejectedError(DestinationCheckError):
    """The destination's encryption key is missing or fails the key rules / trust policy."""


# --- submissions --------------------------------------------------------------------------------


class SubmissionError(ClientError):
    """The submission as built cannot be sent (content, limits, pre-encrypted parts)."""

    cli_exit_code = EXIT_CHECK_FAILED


class SubmissionLimitError(SubmissionError):
    """A FIT-Connect size/count limit would be exceeded; checked before anything is uploaded."""


# --- status / event log -------------------------------------------------------------------------


class EventLogVerificationError(ClientError):
    """The event log cannot be trusted: a SET does not verify, or authentication tags differ.

    This is never turned into a status: treat the submission as *not* delivered and investigate.
    ``problems`` lists every finding (one line each).
    """

    cli_exit_code = EXIT_CHECK_FAILED

    def __init__(self, message: str, *, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems = tuple(problems) or (message,)


class AmbiguousCaseError(ClientError):
    """A case holds several submissions and it is not said which one is meant."""

    cli_exit_code = EXIT_USAGE


class WaitTimeoutError(ClientError):
    """:meth:`AsyncSender.wait` gave up before the submission reached a final state.

    ``last_report`` is the last verified :class:`~fitconnect_kit.client.sender.StatusReport`.
    """

    def __init__(self, message: str, *, last_report: Any = None) -> None:
        super().__init__(message)
        self.last_report = last_report


__all__ = [
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
]
