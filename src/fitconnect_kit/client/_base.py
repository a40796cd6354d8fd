"""What the sender and the subscriber share: configuration, HTTP core, trust policy, lifecycle.

:class:`AsyncClientBase` holds the plumbing of :class:`~fitconnect_kit.client.sender.
AsyncSender` and :class:`~fitconnect_kit.client.subscriber.AsyncSubscriber`;
:class:`SyncFacadeBase` that of their sync facades (:class:`~fitconnect_kit.client.sender.
Sender`, :class:`~fitconnect_kit.client.subscriber.Subscriber`), which run the async client on
a :class:`~fitconnect_kit.client._sync.Portal`.
"""

from __future__ import annotations

import asyncio
import os
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Self, TypedDict, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from fitconnect_kit.client._http import HttpCore, RetryPolicy, Sleep
from fitconnect_kit.client._sync import Portal
from fitconnect_kit.client.config import Credentials, Profile, Role, Settings, resolve_settings
from fitconnect_kit.client.environments import Environment
from fitconnect_kit.client.errors import InvalidResponseError
from fitconnect_kit.client.eventlog import EventLogReader
from fitconnect_kit.protocol import api
from fitconnect_kit.protocol.clock import SYSTEM_CLOCK, Clock

if TYPE_CHECKING:
    from fitconnect_kit.protocol.keys import TrustPolicy

ModelT = TypeVar("ModelT", bound=BaseModel)


class ClientOptions(TypedDict, total=False):
    """The keyword arguments of :class:`AsyncClientBase`, which the sender and the subscriber
    pass on (``**options: Unpack[ClientOptions]``) next to their own."""

    transport: httpx.AsyncBaseTransport | None
    http_client: httpx.AsyncClient | None
    timeout: httpx.Timeout | float | None
    retry: RetryPolicy | None
    trust_policy: TrustPolicy | None
    clock: Clock
    sleep: Sleep | None
    rand: Any
    profile: Profile | None


def resolve_client_settings(
    environment: Environment | str | None,
    *,
    credentials: Credentials | None,
    profile: Profile | str | os.PathLike[str] | None,
    role: Role,
) -> Settings:
    """:func:`~fitconnect_kit.client.config.resolve_settings` for ``from_config``, which also
    takes the profile as any path-like."""
    prof = profile if isinstance(profile, Profile) or profile is None else str(profile)
    return resolve_settings(environment, credentials=credentials, profile=prof, role=role)


def parse_answer(
    model: type[ModelT],
    data: Any,
    *,
    problem: str,
    url: str,
    method: str = "GET",
    status: int = 200,
) -> ModelT:
    """The Zustelldienst's JSON answer as ``model``; one that does not fit raises
    :class:`~fitconnect_kit.client.errors.InvalidResponseError` (``problem`` plus what did not
    fit) — it is the server's fault, not the caller's."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidResponseError(
            f"{problem} ({api.describe_validation_error(exc)})",
            status=status,
            method=method,
            url=url,
        ) from None


class _FromConfig:
    """``from_config`` for clients built as ``cls(environment, credentials, profile=…, …)``."""

    #: Which credentials of the profile the client uses.
    _role: ClassVar[Role]

    if TYPE_CHECKING:

        def __init__(
            self, environment: Environment, credentials: Credentials, **options: Any
        ) -> None: ...

    @classmethod
    def from_config(
        cls,
        environment: Environment | str | None = None,
        *,
        credentials: Credentials | None = None,
        profile: Profile | str | os.PathLike[str] | None = None,
        **options: Any,
    ) -> Self:
        """A client configured from arguments, ``FITCONNECT_*`` variables and the profile.

        Switching from ``local`` to ``test`` changes nothing in your code but the environment
        name (``FITCONNECT_ENV``) and the credentials.
        """
        settings = resolve_client_settings(
            environment, credentials=credentials, profile=profile, role=cls._role
        )
        return cls(settings.environment, settings.credentials, profile=settings.profile, **options)


class SubscriberFromConfig(_FromConfig):
    """``from_config`` of :class:`~fitconnect_kit.client.subscriber.AsyncSubscriber` and
    :class:`~fitconnect_kit.client.subscriber.Subscriber`: also the keys and the default
    destination from the profile."""

    _role = "subscriber"

    @classmethod
    def from_config(
        cls,
        environment: Environment | str | None = None,
        *,
        credentials: Credentials | None = None,
        profile: Profile | str | os.PathLike[str] | None = None,
        load_keys: bool = True,
        **options: Any,
    ) -> Self:
        """A subscriber configured from arguments, ``FITCONNECT_*`` variables and the profile.

        From the profile it also takes (unless passed): the decryption key
        ``keys.encryptionPrivate``, the signing key ``keys.signingPrivate`` (both skipped with
        ``load_keys=False``, e.g. for listing only) and the default ``destinationId``.
        """
        settings = resolve_client_settings(
            environment, credentials=credentials, profile=profile, role=cls._role
        )
        prof = settings.profile
        if prof is not None:
            keys = prof.keys
            if load_keys and options.get("decryption_keys") is None and "encryptionPrivate" in keys:
                options["decryption_keys"] = keys["encryptionPrivate"]
            if load_keys and options.get("signing_key") is None and "signingPrivate" in keys:
                options["signing_key"] = keys["signingPrivate"]
            if options.get("destination_id") is None and prof.destination_id:
                options["destination_id"] = prof.destination_id
        return cls(settings.environment, settings.credentials, profile=prof, **options)


class AsyncClientBase(_FromConfig):
    """HTTP core (token, retries), verified event log reader, trust policy and lifecycle of an
    async client; ``async with`` closes it."""

    def __init__(
        self,
        environment: Environment,
        credentials: Credentials,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        http_client: httpx.AsyncClient | None = None,
        timeout: httpx.Timeout | float | None = None,
        retry: RetryPolicy | None = None,
        trust_policy: TrustPolicy | None = None,
        clock: Clock = SYSTEM_CLOCK,
        sleep: Sleep | None = None,
        rand: Any = None,
        profile: Profile | None = None,
    ) -> None:
        self.environment = environment
        self.profile = profile
        self.clock = clock
        self._sleep: Sleep = sleep or asyncio.sleep
        self._trust_override = trust_policy
        self._trust_cached: TrustPolicy | None = None
        self._core = HttpCore(
            environment,
            credentials,
            transport=transport,
            http_client=http_client,
            timeout=timeout,
            retry=retry,
            clock=clock,
            sleep=sleep,
            rand=rand,
        )
        self._events = EventLogReader(self._core, trust_policy=self.trust_policy, clock=clock)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(environment={self.environment.name!r})"

    async def aclose(self) -> None:
        """Close the HTTP client (if this client created it)."""
        await self._core.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def trust_policy(self) -> TrustPolicy:
        """The x5c trust policy for destination keys (environment default unless overridden)."""
        if self._trust_override is not None:
            return self._trust_override
        if self._trust_cached is None:
            self._trust_cached = self.environment.trust_policy()
        return self._trust_cached


AsyncClientT = TypeVar("AsyncClientT", bound=AsyncClientBase)


class SyncFacadeBase(_FromConfig, Generic[AsyncClientT]):
    """A blocking facade: runs its async client on a private event loop in a daemon thread,
    so it also works inside Jupyter or any other running event loop. Close it (or use
    ``with``) when done."""

    #: The async client class behind the facade, and the name of the facade's loop thread.
    _async_class: ClassVar[type[Any]]
    _thread_name: ClassVar[str]

    def __init__(self, environment: Environment, credentials: Credentials, **options: Any) -> None:
        self._portal = Portal(name=self._thread_name)
        try:
            # On the portal's loop: the async client's httpx client is bound to the loop it
            # was created on.
            self._async: AsyncClientT = self._portal.call_soon(
                lambda: self._async_class(environment, credentials, **options)
            )
        except BaseException:
            self._portal.close()
            raise

    def __repr__(self) -> str:
        return f"{type(self).__name__}(environment={self.environment.name!r})"

    @property
    def environment(self) -> Environment:
        return self._async.environment

    @property
    def profile(self) -> Profile | None:
        return self._async.profile

    def close(self) -> None:
        """Close the HTTP client and stop the background loop."""
        self._portal.close(self._async.aclose)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
