"""Tenants and API keys made through the data layer, the way the admin CLI makes them."""

from __future__ import annotations

import datetime
from typing import Any

import asyncpg

from app import tenants

from .names import unique


class Factory:
    """Makes tenants and keys the way the admin CLI does."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def tenant(self, name: str = "tenant") -> dict[str, Any]:
        return await tenants.create_tenant(self.conn, unique(name))

    async def key(self, tenant_id, *, scopes=("prep", "check"), prep: int = 1000, check: int = 1000,
                  expires_at: datetime.datetime | None = None) -> dict[str, Any]:
        return await tenants.issue_key(self.conn, tenant_id, scopes=scopes, label="test", env="test",
                                       rate_limit_prep=prep, rate_limit_check=check, expires_at=expires_at)

    async def tenant_with_key(self, **key_options) -> tuple[dict, dict[str, str]]:
        tenant = await self.tenant()
        key = await self.key(tenant["id"], **key_options)
        return tenant, {"X-API-Key": key["key"]}
