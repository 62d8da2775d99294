"""Bring your own key: a tenant's own provider, its key encrypted at rest and never shown."""

from __future__ import annotations

import asyncio
import ipaddress
import subprocess

import httpx2
import pytest
from cryptography.fernet import Fernet

from app import admin
from app.llm import byok
from app.keys import llm_key
from tests.support.llm_accounting import llm_calls
from tests.support.llm_server import LLMServer

KEY_1, KEY_2 = Fernet.generate_key().decode(), Fernet.generate_key().decode()
TENANT_API_KEY = "sk-tenant-" + "a1b2c3d4" * 6


@pytest.fixture(scope="module")
def own_llm():
    """The tenant's own provider."""
    with LLMServer() as server:
        yield server


# The test providers listen on loopback, which a tenant's provider may only use when the
# operator allows it (the default refuses every non-public address: SSRF).
LOOPBACK_ALLOWED = {"LLM_BYOK_ALLOWED_NETWORKS": "127.0.0.0/8"}


@pytest.fixture
async def byok_client(make_client, own_llm, fresh_llm):
    own_llm.reset()
    return await make_client(APP_ENCRYPTION_KEY=KEY_1, **LOOPBACK_ALLOWED)


async def put_own_provider(client, auth, own_llm, **extra):
    resp = await client.put("/api/v1/settings/llm", json={"base_url": own_llm.base_url + "/",
                                                          "api_key": TENANT_API_KEY, **extra}, headers=auth)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def test_settings_round_trip_never_show_the_key(byok_client, auth, own_llm):
    unset = await (await byok_client.get("/api/v1/settings/llm", headers=auth)).json()
    assert unset == {"base_url": None, "model": None, "api_key_prefix": None}
    stored = await put_own_provider(byok_client, auth, own_llm, model="fake-small")
    assert stored == {"base_url": own_llm.base_url, "model": "fake-small", "api_key_prefix": "sk-tenan"}
    assert await (await byok_client.get("/api/v1/settings/llm", headers=auth)).json() == stored
    resp = await byok_client.delete("/api/v1/settings/llm", headers=auth)
    assert resp.status == 204
    assert await (await byok_client.get("/api/v1/settings/llm", headers=auth)).json() == unset
    assert (await byok_client.delete("/api/v1/settings/llm", headers=auth)).status == 204


async def test_the_tenants_calls_go_to_its_provider_and_others_are_unaffected(byok_client, factory, db, own_llm,
                                                                              fresh_llm):
    tenant, auth = await factory.tenant_with_key()
    other, other_auth = await factory.tenant_with_key()
    await put_own_provider(byok_client, auth, own_llm, model="fake-small")

    resp = await byok_client.post("/api/v1/gpt", json={"prompt": "Mine"}, headers=auth)
    assert resp.status == 200 and (await resp.json())["model"] == "fake-small"
    [received] = own_llm.requests()
    assert received["authorization_prefix"] == TENANT_API_KEY[:8]
    assert fresh_llm.requests() == []
    [call] = await llm_calls(db, tenant["id"])
    assert (call["provider"], call["model"]) == ("tenant", "fake-small")

    resp = await byok_client.post("/api/v1/gpt", json={"prompt": "Theirs"}, headers=other_auth)
    assert resp.status == 200 and (await resp.json())["model"] == "gpt-4o-mini"
    assert len(fresh_llm.requests()) == 1 and len(own_llm.requests()) == 1
    assert fresh_llm.requests()[0]["authorization_prefix"] != TENANT_API_KEY[:8]

    await byok_client.post("/api/v1/gpt", json={"prompt": "Mine again"}, headers=auth)
    assert len(own_llm.requests()) == 2
    assert byok_client.app[llm_key].client_count == 2  # the server's and the tenant's, each made once

    # Back to the server's provider.
    await byok_client.delete("/api/v1/settings/llm", headers=auth)
    await byok_client.post("/api/v1/gpt", json={"prompt": "Mine, later"}, headers=auth)
    assert len(fresh_llm.requests()) == 2 and len(own_llm.requests()) == 2


async def test_a_failing_own_provider_does_not_fall_back_to_the_servers(make_client, factory, own_llm, fresh_llm):
    own_llm.reset()
    client = await make_client(APP_ENCRYPTION_KEY=KEY_1, LLM_MAX_RETRIES="0", **LOOPBACK_ALLOWED,
                               LLM_FALLBACK_BASE_URL=fresh_llm.base_url, LLM_FALLBACK_API_KEY="sk-fallback-0000")
    _, auth = await factory.tenant_with_key()
    await put_own_provider(client, auth, own_llm)
    own_llm.script({"status": 500})
    resp = await client.post("/api/v1/gpt", json={"prompt": "Hi"}, headers=auth)
    assert resp.status == 502
    assert fresh_llm.requests() == []  # the operator's providers are not billed for a BYOK tenant


async def test_the_key_is_encrypted_at_rest_and_absent_from_a_database_dump(byok_client, auth, own_llm, db, pg,
                                                                            database_url, capsys):
    await put_own_provider(byok_client, auth, own_llm)
    await byok_client.post("/api/v1/gpt", json={"prompt": "Hi"}, headers=auth)
    stored = await db.fetchval("SELECT api_key_encrypted FROM tenant_llm_settings WHERE api_key_prefix = 'sk-tenan' "
                               "ORDER BY updated_at DESC LIMIT 1")
    assert TENANT_API_KEY.encode() not in bytes(stored)
    assert Fernet(KEY_1).decrypt(bytes(stored)).decode() == TENANT_API_KEY
    dump = subprocess.run([str(pg.bin / "pg_dump"), database_url], capture_output=True, check=True).stdout
    assert b"tenant_llm_settings" in dump and TENANT_API_KEY.encode() not in dump
    captured = capsys.readouterr()
    assert TENANT_API_KEY not in captured.out + captured.err  # nor in the logs


async def test_without_an_encryption_key_byok_is_refused(client, auth):
    resp = await client.put("/api/v1/settings/llm", json={"base_url": "https://llm.example.com/v1",
                                                          "api_key": TENANT_API_KEY}, headers=auth)
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "encryption_unavailable"


@pytest.mark.parametrize("body, field", [
    ({"base_url": "ftp://example.com", "api_key": "k"}, "base_url"),
    ({"base_url": "not a url", "api_key": "k"}, "base_url"),
    ({"base_url": "https://example.com:99999/v1", "api_key": "k"}, "base_url"),
    ({"base_url": "https://example.com:0/v1", "api_key": "k"}, "base_url"),
    ({"base_url": "https://[1:2]/v1", "api_key": "k"}, "base_url"),
    ({"base_url": "https://example.com/v1", "api_key": "sk-\u00e9"}, "api_key"),  # was accepted; every call a 500
    ({"base_url": "https://example.com/v1", "api_key": "sk-a\r\nX-Evil: 1"}, "api_key"),
    ({"base_url": "https://example.com/v1", "api_key": "sk a"}, "api_key"),
    ({"base_url": "https://example.com/v1"}, "api_key"),
    ({"base_url": "https://example.com/v1", "api_key": "k", "model": "bad model"}, "model"),
    # Found by probing: a trailing newline passed both patterns (re.match's "$").
    ({"base_url": "https://example.com/v1", "api_key": "k", "model": "gpt-4o\n"}, "model"),
    ({"base_url": "https://example.com/v1", "api_key": "sk-abc\n"}, "api_key"),
    ({"base_url": "https://example.com/v1", "api_key": "k", "organization": "x"}, "organization"),
])
async def test_bad_settings_are_422(byok_client, auth, body, field):
    resp = await byok_client.put("/api/v1/settings/llm", json=body, headers=auth)
    assert resp.status == 422
    assert field in (await resp.json())["error"]["details"]


async def test_settings_are_per_tenant(byok_client, factory, own_llm):
    _, auth = await factory.tenant_with_key()
    _, other = await factory.tenant_with_key()
    await put_own_provider(byok_client, auth, own_llm)
    assert (await (await byok_client.get("/api/v1/settings/llm", headers=other)).json())["base_url"] is None
    await byok_client.delete("/api/v1/settings/llm", headers=other)
    assert (await (await byok_client.get("/api/v1/settings/llm", headers=auth)).json())["base_url"] is not None


async def test_key_rotation_re_encrypts_with_the_new_key(byok_client, make_client, auth, own_llm, db, app_env,
                                                         monkeypatch, capsys):
    await put_own_provider(byok_client, auth, own_llm)
    monkeypatch.setenv("DATABASE_URL", app_env["DATABASE_URL"])
    monkeypatch.setenv("APP_ENCRYPTION_KEY", f"{KEY_2},{KEY_1}")
    assert await asyncio.to_thread(admin.main, ["encryption", "rotate", "--json"]) == 0
    assert '"rotated":' in capsys.readouterr().out
    for stored in await db.fetch("SELECT api_key_encrypted FROM tenant_llm_settings"):
        Fernet(KEY_2).decrypt(bytes(stored["api_key_encrypted"]))  # every key now under the new one
    rotated = await make_client(APP_ENCRYPTION_KEY=KEY_2, **LOOPBACK_ALLOWED)  # the old key is gone from the server
    resp = await rotated.post("/api/v1/gpt", json={"prompt": "Still mine"}, headers=auth)
    assert resp.status == 200
    assert own_llm.requests()[-1]["authorization_prefix"] == TENANT_API_KEY[:8]


async def test_a_lost_encryption_key_is_a_clear_503(make_client, byok_client, auth, own_llm):
    await put_own_provider(byok_client, auth, own_llm)
    stranger = await make_client(APP_ENCRYPTION_KEY=KEY_2, **LOOPBACK_ALLOWED)
    resp = await stranger.post("/api/v1/gpt", json={"prompt": "Hi"}, headers=auth)
    assert resp.status == 503
    assert (await resp.json())["error"]["code"] == "encryption_unavailable"


@pytest.mark.parametrize("base_url", [
    "http://127.0.0.1:8000/v1",             # the app itself, behind nginx
    "http://localhost:5432",                # PostgreSQL, by name
    "http://10.77.0.1:19999",               # a private network (Netdata's port)
    "http://169.254.169.254/latest",        # a cloud metadata service
    "http://[::1]:8000",                    # IPv6 loopback
    "http://0x7f000001:8000",               # loopback, spelt as one hex number
    "https://does-not-resolve.invalid/v1",  # no address at all
])
async def test_a_tenant_provider_on_a_non_public_address_is_refused(make_client, auth, base_url):
    client = await make_client(APP_ENCRYPTION_KEY=KEY_1)
    resp = await client.put("/api/v1/settings/llm", json={"base_url": base_url, "api_key": TENANT_API_KEY},
                            headers=auth)
    assert resp.status == 422, await resp.text()
    error = (await resp.json())["error"]
    assert error["code"] == "validation_failed" and "public address" in error["details"]["base_url"][0]
    assert await (await client.get("/api/v1/settings/llm", headers=auth)).json() == {
        "base_url": None, "model": None, "api_key_prefix": None}


async def test_the_address_is_checked_again_on_every_call(byok_client, make_client, factory, own_llm, db):
    """Stored while the operator allowed loopback; once that allowance is gone (as when a
    name starts resolving to a private address) no request reaches the provider."""
    tenant, auth = await factory.tenant_with_key()
    await put_own_provider(byok_client, auth, own_llm)
    strict = await make_client(APP_ENCRYPTION_KEY=KEY_1, LLM_MAX_RETRIES="2")
    resp = await strict.post("/api/v1/gpt", json={"prompt": "Hi"}, headers=auth)
    assert resp.status == 502, await resp.text()
    assert "address refused" in (await resp.json())["error"]["message"]
    assert own_llm.requests() == []
    [call] = await llm_calls(db, tenant["id"])
    assert (call["outcome"], call["provider"]) == ("provider_error", "tenant")


async def test_a_redirect_to_a_non_public_address_is_not_followed(make_client, factory, own_llm, fresh_llm, db):
    """The provider is allowed (the operator lists 127.0.0.1), but it answers with a
    redirect to another loopback address: that hop is checked too, and refused."""
    own_llm.reset()
    client = await make_client(APP_ENCRYPTION_KEY=KEY_1, LLM_BYOK_ALLOWED_NETWORKS="127.0.0.1/32")
    tenant, auth = await factory.tenant_with_key()
    await put_own_provider(client, auth, own_llm)
    own_llm.script({"redirect_to": fresh_llm.base_url.replace("127.0.0.1", "127.0.0.2") + "/chat/completions"})
    resp = await client.post("/api/v1/gpt", json={"prompt": "Hi"}, headers=auth)
    assert resp.status == 502, await resp.text()
    assert "address refused: 127.0.0.2 resolves to 127.0.0.2" in (await resp.json())["error"]["message"]
    assert len(own_llm.requests()) == 1 and fresh_llm.requests() == []


@pytest.mark.parametrize("address, allowed, refused", [
    ("8.8.8.8", (), False),
    ("2001:4860:4860::8888", (), False),
    ("127.0.0.1", (), True),
    ("::ffff:127.0.0.1", (), True),  # IPv4 loopback mapped into IPv6
    ("fe80::1%eth0", (), True),      # link-local, with a zone id
    ("100.64.0.1", (), True),        # carrier-grade NAT
    ("10.1.2.3", (ipaddress.ip_network("10.0.0.0/8"),), False),
    ("10.1.2.3", (ipaddress.ip_network("192.168.0.0/16"),), True),
])
def test_which_addresses_are_refused(address, allowed, refused):
    assert byok._refused(address, allowed) is refused


class TwoAddressServer:
    """A tiny HTTP server on 127.0.0.1 and 127.0.0.2 (same port) that records which of
    its addresses each connection reached and the Host it asked for."""

    def __init__(self) -> None:
        self.hits: list[tuple[str, str]] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        host = next(line.split(":", 1)[1].strip() for line in head.split("\r\n") if line.lower().startswith("host:"))
        self.hits.append((writer.get_extra_info("sockname")[0], host))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    async def __aenter__(self) -> "TwoAddressServer":
        first = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = first.sockets[0].getsockname()[1]
        self.servers = [first, await asyncio.start_server(self._serve, "127.0.0.2", self.port)]
        return self

    async def __aexit__(self, *exc) -> None:
        for server in self.servers:
            server.close()
            await server.wait_closed()


async def test_a_connection_goes_to_the_address_that_was_checked():
    """DNS rebinding: the provider's name answers an allowed address, then a refused
    one. Each new connection resolves the name once, checks every address of that
    answer and connects to one of them, so the refused answer is never connected to
    (a check and a separate lookup for the connection could each get a different answer)."""
    answers = iter([["127.0.0.1"], ["127.0.0.2"], ["127.0.0.1", "127.0.0.2"]])
    asked: list[tuple[str, int]] = []

    async def resolver(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return next(answers)

    transport = byok.CheckedTransport([ipaddress.ip_network("127.0.0.1/32")], resolver=resolver)
    async with TwoAddressServer() as server, httpx2.AsyncClient(transport=transport) as http:
        url = f"http://provider.test:{server.port}/v1/models"
        resp = await http.get(url)
        assert (resp.status_code, resp.text) == (200, "ok")
        assert server.hits == [("127.0.0.1", f"provider.test:{server.port}")]  # the name is kept for Host
        for refused in ("127.0.0.2", "127.0.0.2"):  # alone, then beside an allowed address
            with pytest.raises(byok.RefusedConnection) as caught:
                await http.get(url)
            assert str(caught.value.refusal) == f"provider.test resolves to {refused}, which is not a public address"
        assert server.hits == [("127.0.0.1", f"provider.test:{server.port}")]
        assert asked == [("provider.test", server.port)] * 3  # once per connection, nothing else


async def test_a_name_that_does_not_resolve_is_a_connection_error():
    transport = byok.CheckedTransport()
    async with httpx2.AsyncClient(transport=transport) as http:
        with pytest.raises(httpx2.ConnectError, match="does-not-resolve.invalid does not resolve"):
            await http.get("https://does-not-resolve.invalid/v1")
