"""Tenants and API keys: issuing, listing, revoking (used by the admin CLI).

A key is ``cs_<env>_<32 hex>``; only its SHA-256 digest and its first
12 characters (the prefix, for identification) are stored.
"""

from __future__ import annotations

import datetime
import hashlib
import re
import secrets
import uuid
from typing import Any, Sequence

import asyncpg

from .keycache import change_in_force

SCOPES = ("prep", "check")
KEY_ENVS = ("live", "test")
KEY_PATTERN = re.compile(r"cs_(live|test)_[0-9a-f]{32}")
PREFIX_LENGTH = 12


class UnknownTenant(LookupError):
    pass


class UnknownKey(LookupError):
    pass


def generate_key(env: str = "live") -> str:
    if env not in KEY_ENVS:
        raise ValueError(f"key env must be one of {', '.join(KEY_ENVS)}")
    return f"cs_{env}_{secrets.token_hex(16)}"


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def looks_like_key(key: str) -> bool:
    return KEY_PATTERN.fullmatch(key) is not None


_TENANT_COLUMNS = "id, name, is_active, created_at"
_KEY_COLUMNS = ("id, key_prefix AS prefix, tenant_id, label, scopes, rate_limit_prep, rate_limit_check, "
                "expires_at, created_at, is_active, last_used_at, rotated_from")


async def create_tenant(conn: asyncpg.Connection, name: str) -> dict[str, Any]:
    row = await conn.fetchrow(f"INSERT INTO tenants (name) VALUES ($1) RETURNING {_TENANT_COLUMNS}", name)
    return dict(row)


async def list_tenants(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await conn.fetch(f"SELECT {_TENANT_COLUMNS} FROM tenants ORDER BY created_at, id")
    return [dict(r) for r in rows]


async def tenant_is_active(conn: asyncpg.Connection, tenant_id: uuid.UUID) -> bool:
    """Whether the tenant is active; ``UnknownTenant`` if there is none."""
    active = await conn.fetchval("SELECT is_active FROM tenants WHERE id = $1", tenant_id)
    if active is None:
        raise UnknownTenant(f"no tenant with id {tenant_id}")
    return active


async def set_tenant_active(conn: asyncpg.Connection, tenant_id: uuid.UUID, active: bool) -> dict[str, Any]:
    """Returns once every worker acts on the change (``keycache.change_in_force``)."""
    row = await conn.fetchrow(
        f"UPDATE tenants SET is_active = $2 WHERE id = $1 RETURNING {_TENANT_COLUMNS}", tenant_id, active)
    if row is None:
        raise UnknownTenant(f"no tenant with id {tenant_id}")
    await change_in_force()
    return dict(row)


async def issue_key(
    conn: asyncpg.Connection,
    tenant_id: uuid.UUID,
    *,
    scopes: Sequence[str],
    label: str,
    env: str,
    rate_limit_prep: int,
    rate_limit_check: int,
    expires_at: datetime.datetime | None,
) -> dict[str, Any]:
    """Create a key; the returned dict holds the full key under ``"key"`` (shown once)."""
    key = generate_key(env)
    async with conn.transaction():
        await tenant_is_active(conn, tenant_id)
        row = await conn.fetchrow(
            f"""INSERT INTO api_keys (tenant_id, key_hash, key_prefix, label, scopes,
                                      rate_limit_prep, rate_limit_check, expires_at)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {_KEY_COLUMNS}""",
            tenant_id, hash_key(key), key[:PREFIX_LENGTH], label, list(scopes),
            rate_limit_prep, rate_limit_check, expires_at,
        )
    return {"key": key, **dict(row)}


async def list_keys(conn: asyncpg.Connection, tenant_id: uuid.UUID) -> list[dict[str, Any]]:
    await tenant_is_active(conn, tenant_id)
    rows = await conn.fetch(
        f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, id", tenant_id)
    return [dict(r) for r in rows]


async def revoke_key(conn: asyncpg.Connection, key_id: uuid.UUID) -> dict[str, Any]:
    """Returns once no worker admits the key any more (``keycache.change_in_force``)."""
    row = await conn.fetchrow(
        f"UPDATE api_keys SET is_active = false WHERE id = $1 RETURNING {_KEY_COLUMNS}", key_id)
    if row is None:
        raise UnknownKey(f"no API key with id {key_id}")
    await change_in_force()
    return dict(row)


class KeyNotRotatable(ValueError):
    pass


async def rotate_key(conn: asyncpg.Connection, key_id: uuid.UUID, overlap: datetime.timedelta) -> dict[str, Any]:
    """A new key like ``key_id`` (tenant, environment, label, scopes, limits, LLM budget,
    expiry), counting in the same rate-limit counters and key budget; the old key expires
    at the end of ``overlap`` (or at its own expiry, if sooner). The returned dict holds the
    new key under ``"key"`` (shown once), and the old key's id and new and former expiry.
    Returns once every worker acts on the change."""
    async with conn.transaction():
        old = await conn.fetchrow(
            """SELECT k.*, k.expires_at IS NOT NULL AND k.expires_at <= now() AS expired, t.is_active AS tenant_active
               FROM api_keys k JOIN tenants t ON t.id = k.tenant_id WHERE k.id = $1 FOR UPDATE OF k""", key_id)
        if old is None:
            raise UnknownKey(f"no API key with id {key_id}")
        if not old["is_active"] or old["expired"]:
            raise KeyNotRotatable(f"the key {old['key_prefix']} is {'revoked' if not old['is_active'] else 'expired'}: "
                                  "issue a new one instead (`key issue`)")
        key = generate_key(old["key_prefix"].split("_")[1])
        row = await conn.fetchrow(
            f"""INSERT INTO api_keys (tenant_id, key_hash, key_prefix, label, scopes, rate_limit_prep,
                                      rate_limit_check, expires_at, monthly_budget_usd, counts_as, rotated_from)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING {_KEY_COLUMNS}""",
            old["tenant_id"], hash_key(key), key[:PREFIX_LENGTH], old["label"], old["scopes"],
            old["rate_limit_prep"], old["rate_limit_check"], old["expires_at"], old["monthly_budget_usd"],
            old["counts_as"] or old["id"], old["id"])
        old_expires_at = await conn.fetchval(
            """UPDATE api_keys SET expires_at = least(coalesce(expires_at, 'infinity'), now() + $2)
               WHERE id = $1 RETURNING expires_at""", key_id, overlap)
    await change_in_force()
    return {"key": key, **dict(row), "old_key_id": key_id, "old_key_expires_at": old_expires_at,
            "old_key_previous_expires_at": old["expires_at"]}


async def undo_rotation(conn: asyncpg.Connection, rotated: dict[str, Any]) -> None:
    """Revoke the new key of ``rotate_key`` and give the old key back its former expiry."""
    async with conn.transaction():
        await conn.execute("UPDATE api_keys SET is_active = false WHERE id = $1", rotated["id"])
        await conn.execute("UPDATE api_keys SET expires_at = $2 WHERE id = $1", rotated["old_key_id"],
                           rotated["old_key_previous_expires_at"])
    await change_in_force()
