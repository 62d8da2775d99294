"""The real app, in-process (pytest-aiohttp), plus tenants and keys made through the data
layer, and courses made through the API."""

from __future__ import annotations

import io
import json
import sys

import asyncpg
import pytest

from app import log
from app.config import Settings
from app.main import create_app
from tests.support.tenants import Factory


@pytest.fixture
def settings(app_env) -> Settings:
    return Settings.from_env(app_env)


@pytest.fixture
async def db(database_url):
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


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


@pytest.fixture
def make_course(client, auth):
    """Makes courses through the API, as a client does: ``await make_course()`` POSTs
    /api/v1/courses to the ``client`` app with the ``auth`` key (or to ``client=`` a test's
    own app, with ``auth=`` another tenant's headers) and returns the created course; with
    ``structure=`` it then PUTs that structure and adds the stored one to the course as
    ``"structure"``. The only fixture that makes courses (tests/test_layout.py)."""
    app_client, tenant_auth = client, auth

    async def make(title: str = "Algebra", description: str = "Equations", *, structure: dict | None = None,
                   auth: dict[str, str] | None = None, client=None) -> dict:
        http, headers = client or app_client, auth or tenant_auth
        resp = await http.post("/api/v1/courses", json={"title": title, "description": description}, headers=headers)
        assert resp.status == 201, await resp.text()
        course = await resp.json()
        if structure is not None:
            resp = await http.put(f"/api/v1/courses/{course['id']}/structure", json=structure, headers=headers)
            assert resp.status == 200, await resp.text()
            course["structure"] = await resp.json()
        return course

    return make


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


@pytest.fixture
def json_log():
    """The JSON lines the app writes while the test runs (access lines included), parsed."""
    stream = io.StringIO()
    log.setup_logging("INFO", stream=stream)

    def records() -> list[dict]:
        log.flush_access()
        return [json.loads(line) for line in stream.getvalue().splitlines()]

    yield records
    log.setup_logging("INFO", stream=sys.stderr)
