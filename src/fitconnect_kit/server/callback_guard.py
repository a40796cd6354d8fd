"""SSRF guard for callbacks: no callback to private, loopback, link-local or other non-public
addresses (``callbacks.block_private_addresses``; on by default with ``key_policy = "strict"``).

A callback URL is chosen by a client of the API (sender per submission, subscriber per
destination); without a guard the Zustelldienst could be made to send requests into its own
network. The guard applies twice:

* **when a callback is configured** (announce, destination create/replace/patch, ``fitconnect
  admin``): :func:`callback_target_refusal` refuses a URL whose host is such an address or
  resolves to one (422 ``invalid-callback``). A name that does not resolve (yet) is accepted —
  delivery checks again;
* **when it is delivered**: the callback worker's HTTP client connects through
  :class:`GuardedNetworkBackend`, which resolves the host itself, refuses when *any* address is
  not public and connects to the address it checked (so a DNS answer that changes between check
  and connect — DNS rebinding — cannot slip through). TLS still verifies the certificate for the
  host name of the URL.

"Public" is :attr:`ipaddress.IPv4Address.is_global` (IPv6 likewise) and not multicast; IPv4-mapped
IPv6 addresses are judged by their IPv4 address. This refuses RFC 1918, loopback, link-local
(cloud metadata at 169.254.169.254), CGNAT (100.64/10), unique-local IPv6, documentation and
reserved ranges and the unspecified address.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import ssl
import typing
from collections.abc import Iterable
from urllib.parse import urlsplit

import httpcore
import httpx

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Seconds a configuration-time lookup may take before the URL is accepted unchecked.
CONFIG_RESOLVE_TIMEOUT = 5.0


class PrivateAddressError(httpcore.ConnectError):
    """The callback target is (or resolves to) an address the guard refuses."""


def is_public_address(address: IpAddress) -> bool:
    """Whether a callback may be sent to ``address`` (see the module docstring)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def _literal(host: str) -> IpAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def _refusal(host: str, addresses: Iterable[IpAddress]) -> str | None:
    blocked = sorted({str(a) for a in addresses if not is_public_address(a)})
    if not blocked:
        return None
    # The address, not the URL: URLs may carry credentials or tokens in their query.
    return (
        f"callback host {host} resolves to a non-public address ({blocked[0]}); callbacks to "
        "private, loopback and link-local addresses are refused (callbacks."
        "block_private_addresses)"
    )


async def resolve(host: str, port: int) -> list[IpAddress]:
    """Every address ``host`` resolves to (TCP); raises :class:`OSError` when it does not."""
    literal = _literal(host)
    if literal is not None:
        return [literal]
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    result: list[IpAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = _literal(str(sockaddr[0]))
        if address is not None and address not in result:
            result.append(address)
    if not result:
        raise OSError(f"{host} has no address")
    return result


def _host_and_port(url: str) -> tuple[str, int] | None:
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host:
        return None
    return host, port or (443 if parts.scheme == "https" else 80)


async def callback_target_refusal(url: str) -> str | None:
    """Why the guard refuses ``url`` at configuration time (``None``: accepted).

    IP literals are judged directly, names by what they resolve to now; a name that does not
    resolve within :data:`CONFIG_RESOLVE_TIMEOUT` is accepted (the delivery checks again).
    """
    target = _host_and_port(url)
    if target is None:
        return None  # the URL policy (https, host) reports malformed URLs
    host, port = target
    try:
        async with asyncio.timeout(CONFIG_RESOLVE_TIMEOUT):
            addresses = await resolve(host, port)
    except (OSError, TimeoutError):
        return None
    return _refusal(host, addresses)


class GuardedNetworkBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that connects only to public addresses (checked itself)."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                addresses = await resolve(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from None
        refusal = _refusal(host, addresses)
        if refusal is not None:
            raise PrivateAddressError(refusal)
        return await self._inner.connect_tcp(
            str(addresses[0]),
            port,
            timeout=timeout,
            local_address=local_address,
            socket_options=socket_options,
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise PrivateAddressError("callbacks are never sent to unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


@functools.cache
def callback_ssl_context() -> ssl.SSLContext:
    """The TLS context of callback requests (httpx's defaults: certificates verified against
    the system's CA bundle), built once per process — building one loads and parses the CA
    bundle, ~17 ms of CPU, which a new HTTP client per callback pass would pay every time."""
    return httpx.create_ssl_context(trust_env=False)


def guarded_transport(*, max_connections: int) -> httpx.AsyncHTTPTransport:
    """An httpx transport whose connections go through :class:`GuardedNetworkBackend`."""
    transport = httpx.AsyncHTTPTransport(
        verify=callback_ssl_context(),
        trust_env=False,
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
    )
    # httpx has no public knob for the network backend; the pool is built like httpx builds it.
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=callback_ssl_context(),
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=5.0,
        network_backend=GuardedNetworkBackend(),
    )
    return transport


def is_guard_refusal(exc: BaseException) -> str | None:
    """The guard's reason when ``exc`` (an httpx error) was caused by the guard, else ``None``."""
    cause: BaseException | None = exc
    for _ in range(10):  # exception chains are short; never loop forever
        if cause is None:
            break
        if isinstance(cause, PrivateAddressError):
            return str(cause)
        cause = cause.__cause__ or cause.__context__
    return None
