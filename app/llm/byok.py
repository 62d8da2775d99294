"""Bring your own key: a tenant's own OpenAI-compatible provider.

The provider key is encrypted at rest with Fernet (AES-128-CBC + HMAC-SHA256,
from ``cryptography``) under ``APP_ENCRYPTION_KEY``. That variable may hold
several comma-separated keys: the first encrypts, every one decrypts, so a key
is rotated by putting a new key first, running ``python -m app.admin
encryption rotate`` (re-encrypts every stored provider key with the first), and
then dropping the old key. The plain key is never logged, returned or stored.

A tenant's provider URL must lead to a public address: otherwise any tenant could
make the server send requests into its own network (SSRF: the database, Netdata,
the app itself, a cloud metadata service). The address is checked when the
settings are stored, and again on every connection to the provider (a retry or a
redirect that needs a new connection too), because the name may later resolve
elsewhere. That second check is made by the connection itself
(``CheckedTransport``): it resolves the name once, checks every address, and
connects to an address it checked. So a name that answers with a public address
to the check and a private one a moment later (DNS rebinding) cannot slip
through. An operator whose own provider runs on a private network lists it in
LLM_BYOK_ALLOWED_NETWORKS.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import uuid
from typing import Any, Awaitable, Callable, Iterable
from urllib.parse import urlsplit

import asyncpg
import httpcore2
import httpx2
import openai
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from ..errors import ServiceUnavailable

PREFIX_CHARS = 8
RESOLVE_TIMEOUT_S = 5.0


class EncryptionUnavailable(ServiceUnavailable):
    code = "encryption_unavailable"


class KeyBox:
    def __init__(self, keys: tuple[str, ...]) -> None:
        self._fernet = MultiFernet([Fernet(k) for k in keys]) if keys else None

    def _require(self) -> MultiFernet:
        if self._fernet is None:
            raise EncryptionUnavailable(
                "This server cannot store provider keys: APP_ENCRYPTION_KEY is not set.")
        return self._fernet

    def encrypt(self, secret: str) -> bytes:
        return self._require().encrypt(secret.encode())

    def decrypt(self, token: bytes) -> str:
        try:
            return self._require().decrypt(bytes(token)).decode()
        except InvalidToken:
            raise EncryptionUnavailable(
                "The stored provider key cannot be decrypted with APP_ENCRYPTION_KEY; "
                "store it again with PUT /api/v1/settings/llm.") from None

    def rotate(self, token: bytes) -> bytes:
        return self._require().rotate(bytes(token))


class ProviderAddressRefused(ValueError):
    """A tenant's provider URL leads to an address that is neither public nor allowed."""


def _refused(address: str, allowed: Iterable) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone id is not part of the address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return not ip.is_global and not any(ip in network for network in allowed)


Resolver = Callable[[str, int], Awaitable[list[str]]]


async def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, in the resolver's order (socket.gaierror or
    TimeoutError if none)."""
    async with asyncio.timeout(RESOLVE_TIMEOUT_S):
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def check_addresses(host: str, addresses: Iterable[str], allowed: Iterable) -> None:
    """Raise ProviderAddressRefused if any of ``host``'s addresses is neither public nor allowed."""
    refused = sorted({address for address in addresses if _refused(address, allowed)})
    if refused:
        raise ProviderAddressRefused(f"{host} resolves to {', '.join(refused)}, which is not a public address")


async def check_destination(url: str, allowed: Iterable = ()) -> None:
    """Raise ProviderAddressRefused unless every address ``url``'s host resolves to is public
    or in one of the ``allowed`` networks. A name that does not resolve is refused too."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        addresses = await resolve(host, parts.port or (443 if parts.scheme == "https" else 80))
    except (socket.gaierror, TimeoutError):
        raise ProviderAddressRefused(f"{host} does not resolve") from None
    check_addresses(host, addresses, allowed)


class RefusedConnection(openai.APIConnectionError):
    """A connection to a refused address was not made. An OpenAIError, so the client
    passes it on as it is, with no retry (the address would be refused again). The
    refusal travels as an attribute: httpcore re-raises connection errors ``from None``."""

    def __init__(self, refusal: ProviderAddressRefused, *, request: httpx2.Request) -> None:
        super().__init__(message=f"refused: {refusal}", request=request)
        self.refusal = refusal


class CheckedBackend(httpcore2.AsyncNetworkBackend):
    """Opens TCP connections only to addresses that pass the check. Each name is
    resolved once per connection, and the connection goes to an address from that
    same answer: the address checked is the address connected to. TLS still
    verifies the certificate against the name (httpcore passes it as the server name)."""

    def __init__(self, allowed: Iterable = (), *, resolver: Resolver = resolve) -> None:
        self._allowed = tuple(allowed)
        self._resolve = resolver
        self._inner = httpcore2.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None, socket_options=None) -> httpcore2.AsyncNetworkStream:
        try:
            addresses = await self._resolve(host, port)
        except (socket.gaierror, TimeoutError) as exc:
            raise httpcore2.ConnectError(f"{host} does not resolve: {exc}") from exc
        try:
            check_addresses(host, addresses, self._allowed)
        except ProviderAddressRefused as exc:
            request = httpx2.Request("GET", httpx2.URL(scheme="http", host=host, port=port))
            raise RefusedConnection(exc, request=request) from exc
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(address, port, timeout=timeout, local_address=local_address,
                                                     socket_options=socket_options)
            except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as exc:
                failure = exc
        raise failure or httpcore2.ConnectError(f"{host} has no address")

    async def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options=None):
        raise httpcore2.ConnectError("a tenant's provider is reached over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class CheckedTransport(httpx2.AsyncHTTPTransport):
    """httpx's own transport (TLS verified, keep-alive pool), whose connections are
    made by CheckedBackend. No proxy: a proxy would resolve the name itself."""

    def __init__(self, allowed: Iterable = (), *, resolver: Resolver = resolve,
                 limits: httpx2.Limits = openai.DEFAULT_CONNECTION_LIMITS) -> None:
        # Not super().__init__(): it builds the same pool with httpcore's default backend.
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=httpx2.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=CheckedBackend(allowed, resolver=resolver),
        )


def key_prefix(api_key: str) -> str:
    """Enough to recognise a key, never enough to use it."""
    return api_key[:PREFIX_CHARS] if len(api_key) >= 4 * PREFIX_CHARS else api_key[:3]


_COLUMNS = "base_url, model, api_key_prefix"


async def get_settings(conn: asyncpg.Connection, tenant_id: uuid.UUID) -> dict[str, Any] | None:
    """The tenant's provider with its encrypted key, or None for the server's provider."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS}, api_key_encrypted FROM tenant_llm_settings WHERE tenant_id = $1", tenant_id)
    return dict(row) if row else None


async def put_settings(conn: asyncpg.Connection, tenant_id: uuid.UUID, *, base_url: str, model: str | None,
                       encrypted_key: bytes, api_key_prefix: str) -> dict[str, Any]:
    row = await conn.fetchrow(
        f"""INSERT INTO tenant_llm_settings (tenant_id, base_url, model, api_key_encrypted, api_key_prefix)
            VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (tenant_id) DO UPDATE SET base_url = EXCLUDED.base_url, model = EXCLUDED.model,
                api_key_encrypted = EXCLUDED.api_key_encrypted, api_key_prefix = EXCLUDED.api_key_prefix,
                updated_at = now()
            RETURNING {_COLUMNS}""",
        tenant_id, base_url, model, encrypted_key, api_key_prefix)
    return dict(row)


async def delete_settings(conn: asyncpg.Connection, tenant_id: uuid.UUID) -> bool:
    return await conn.fetchval(
        "DELETE FROM tenant_llm_settings WHERE tenant_id = $1 RETURNING true", tenant_id) is not None


async def rotate_all(conn: asyncpg.Connection, box: KeyBox) -> int:
    """Re-encrypt every stored provider key with the first APP_ENCRYPTION_KEY."""
    async with conn.transaction():
        rows = await conn.fetch("SELECT tenant_id, api_key_encrypted FROM tenant_llm_settings FOR UPDATE")
        for row in rows:
            try:
                rotated = box.rotate(row["api_key_encrypted"])
            except InvalidToken:
                raise EncryptionUnavailable(
                    f"tenant {row['tenant_id']}: its provider key is under none of the APP_ENCRYPTION_KEY keys") from None
            await conn.execute("UPDATE tenant_llm_settings SET api_key_encrypted = $2 WHERE tenant_id = $1",
                               row["tenant_id"], rotated)
    return len(rows)
