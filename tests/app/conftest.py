"""The real app, in-process (pytest-aiohttp), plus tenants and keys made through the data layer."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import asyncpg
import pytest

from app import tenants
from app.config import Settings
from app.main import create_app
from tests.conftest import unique


@pytest.fixture
def settings(app_env) -> Settings:
    return Settings.from_env(app_env)


@pytest.fixture
async def db(database_url):
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


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


@pytest.fixture
def factory(db) -> Factory:
    return Factory(db)


@pytest.fixture
async def client(aiohttp_client, settings):
    return await aiohttp_client(await create_app(settings))


@pytest.fixture
async def auth(factory) -> dict[str, str]:
    """Headers with a prep+check key of a fresh tenant."""
    _, headers = await factory.tenant_with_key()
    return headers


async def llm_calls(db, tenant_id, count: int = 1, timeout: float = 5.0) -> list[dict]:
    """The tenant's accounted LLM calls, oldest first, once ``count`` of them are in
    (the app writes them in the background, just after answering)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        rows = await db.fetch("SELECT * FROM llm_calls WHERE tenant_id = $1 ORDER BY id", tenant_id)
        if len(rows) >= count or asyncio.get_running_loop().time() > deadline:
            return [dict(r) for r in rows]
        await asyncio.sleep(0.02)


@pytest.fixture
def fresh_llm(llm):
    """The test server with no scripted behaviours and no recorded requests."""
    llm.reset()
    return llm


@pytest.fixture
def make_client(aiohttp_client, app_env):
    """An in-process app with extra or changed environment variables."""
    async def make(**env: str):
        return await aiohttp_client(await create_app(Settings.from_env({**app_env, **env})))

    return make
