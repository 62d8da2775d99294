"""The error shape, request ids, 500s that leak nothing, CORS, the OpenAPI document."""

from __future__ import annotations

import gzip
import logging

import pytest
from multidict import CIMultiDict

from app.main import create_app


async def test_unknown_route_and_method_are_json(client, auth):
    resp = await client.get("/api/v1/nothing-here", headers=auth)
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"
    resp = await client.post("/health")
    assert resp.status == 405 and (await resp.json())["error"]["code"] == "method_not_allowed"
    assert "GET" in resp.headers["Allow"]


async def test_every_response_has_a_request_id(client, auth):
    for resp in (await client.get("/health"), await client.get("/api/v1/courses"),
                 await client.get("/api/v1/courses", headers=auth), await client.get("/nope")):
        assert len(resp.headers["X-Request-ID"]) >= 8
    resp = await client.get("/health", headers={"X-Request-ID": "trace-abc-123"})
    assert resp.headers["X-Request-ID"] == "trace-abc-123"
    resp = await client.get("/health", headers={"X-Request-ID": "bad id\twith junk"})
    assert resp.headers["X-Request-ID"] != "bad id\twith junk"


async def test_unexpected_fault_is_500_with_request_id_and_no_traceback(aiohttp_client, settings, caplog):
    app = await create_app(settings)

    async def boom(request):
        raise RuntimeError("secret internals")

    app.router.add_get("/boom", boom)
    client = await aiohttp_client(app)
    with caplog.at_level(logging.ERROR):
        resp = await client.get("/boom")
    assert resp.status == 500
    body = await resp.json()
    assert body["error"]["code"] == "internal_error"
    assert body["error"]["request_id"] == resp.headers["X-Request-ID"]
    assert "secret internals" not in await resp.text() and "Traceback" not in await resp.text()
    assert any("secret internals" in (r.exc_text or "") or r.exc_info for r in caplog.records)


async def test_cors(aiohttp_client, app_env, auth):
    from app.config import Settings

    client = await aiohttp_client(await create_app(Settings.from_env({**app_env, "CORS_ORIGINS": "https://app.example"})))
    resp = await client.get("/api/v1/courses", headers={**auth, "Origin": "https://app.example"})
    assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "X-RateLimit-Remaining" in resp.headers["Access-Control-Expose-Headers"]
    resp = await client.options("/api/v1/courses", headers={"Origin": "https://app.example",
                                                             "Access-Control-Request-Method": "POST"})
    assert resp.status == 204
    assert "X-API-Key" in resp.headers["Access-Control-Allow-Headers"]
    resp = await client.get("/api/v1/courses", headers={**auth, "Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in resp.headers


async def test_no_cors_headers_by_default(client, auth):
    resp = await client.get("/api/v1/courses", headers={**auth, "Origin": "https://app.example"})
    assert "Access-Control-Allow-Origin" not in resp.headers


async def test_an_oversized_json_body_is_a_documented_413(client, auth, make_course):
    """Found by the fuzzer: a JSON body over the app's 8 MiB limit answered 413, which the
    operations taking a body did not document."""
    course = await make_course("Big")
    body = b'{"modules": [{"title": "' + b"x" * (9 << 20) + b'"}]}'
    resp = await client.put(f"/api/v1/courses/{course['id']}/structure", data=body,
                            headers={**auth, "Content-Type": "application/json"})
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "payload_too_large"
    paths = (await (await client.get("/api/docs/openapi.json")).json())["paths"]
    with_bodies = [(path, method) for path, ops in paths.items() for method, op in ops.items()
                   if "415" in op.get("responses", {})]
    assert ("/api/v1/courses/{course_id}/structure", "put") in with_bodies
    assert [(p, m) for p, m in with_bodies if "413" not in paths[p][m]["responses"]] == []


async def test_a_body_not_in_its_declared_content_encoding_is_400(client, auth, caplog, json_log):
    json_type = {**auth, "Content-Type": "application/json"}
    for encoding in ("gzip", "deflate"):
        resp = await client.post("/api/v1/courses", data=b'{"title": "plain, not compressed"}',
                                 headers={**json_type, "Content-Encoding": encoding})
        assert resp.status == 400, await resp.text()
        error = (await resp.json())["error"]
        assert error["code"] == "malformed_body" and encoding in error["message"] and error["request_id"]
        assert resp.headers["Connection"].lower() == "close"  # the rest of the body cannot be skipped
    # Really compressed, the same body is read as it should be.
    resp = await client.post("/api/v1/courses", data=gzip.compress(b'{"title": "compressed"}'),
                             headers={**json_type, "Content-Encoding": "gzip"})
    assert resp.status == 201 and (await resp.json())["title"] == "compressed"
    # A streamed upload with a broken encoding stores nothing.
    course_id = (await resp.json())["id"]
    resp = await client.post(f"/api/v1/courses/{course_id}/materials?filename=a.txt", data=b"plain bytes" * 1000,
                             headers={**auth, "Content-Type": "text/plain", "Content-Encoding": "gzip"})
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "malformed_body"
    listing = await (await client.get(f"/api/v1/courses/{course_id}/materials", headers=auth)).json()
    assert listing["items"] == []
    # aiohttp, discarding the rest of such a body after the answer, hits the decoding error
    # again: no "Unhandled exception" traceback for a request already answered and logged.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert [r["status"] for r in json_log() if r["logger"] == "app.access"][-2:] == [400, 200]


async def test_a_body_in_a_content_coding_the_app_does_not_decode_is_415(client, auth, make_course):
    """aiohttp passes codings it does not know through undecoded: such a body would be read
    as JSON or stored as the file. (br and zstd it refuses itself, before any middleware;
    nginx answers those, see tests/appliance/test_security.py.)"""
    course = await make_course("codings")
    targets = [("/api/v1/courses", "application/json", b'{"title": "t"}'),
               (f"/api/v1/courses/{course['id']}/materials?filename=a.txt", "text/plain", b"plain bytes")]
    for path, content_type, body in targets:
        for coding in ("compress", "x-gzip", "gzip, gzip", "foo"):
            resp = await client.post(path, data=body,
                                     headers={**auth, "Content-Type": content_type, "Content-Encoding": coding})
            assert resp.status == 415, (path, coding, await resp.text())
            error = (await resp.json())["error"]
            assert error["code"] == "unsupported_media_type" and f'"{coding}"' in error["message"]
            assert resp.headers["X-RateLimit-Limit"] != "0"  # counted like any other request
    listing = await (await client.get(f"/api/v1/courses/{course['id']}/materials", headers=auth)).json()
    assert listing["items"] == []
    paths = (await (await client.get("/api/docs/openapi.json")).json())["paths"]
    with_bodies = [(path, method) for path, ops in paths.items() for method, op in ops.items()
                   if path.startswith("/api/v1/") and method in ("post", "put", "patch")]
    assert [(p, m) for p, m in with_bodies if "415" not in paths[p][m]["responses"]] == []
    # identity (any case) and no coding at all are the plain body.
    for headers in ({"Content-Encoding": "Identity"}, {"Content-Encoding": ""}, {}):
        resp = await client.post("/api/v1/courses", data=b'{"title": "plain"}',
                                 headers={**auth, "Content-Type": "application/json", **headers})
        assert resp.status == 201, (headers, await resp.text())


async def test_long_headers_that_nginx_forwards_reach_the_app(client, auth):
    """nginx passes header fields of up to 8 KiB compressed over HTTP/2, longer than aiohttp's
    own 8190-byte limit, which would answer plain text past every middleware."""
    resp = await client.get("/api/v1/courses", headers={**auth, "X-Trace-Context": "a" * 20_000})
    assert resp.status == 200, await resp.text()
    resp = await client.get("/api/v1/courses", params={"note": "b" * 20_000}, headers=auth)
    assert resp.status == 200, await resp.text()


async def test_deeply_nested_json_is_422_not_a_crash(client, auth):
    """Found by probing: ~350 levels of arrays exhausted the NUL check's recursion, ~950 the
    validators' own JSON parser (orjson accepts up to 1024)."""
    for depth in (33, 400, 1000):
        nested = "[" * depth + "]" * depth
        resp = await client.post("/api/v1/courses", data=f'{{"title": {nested}}}',
                                 headers={**auth, "Content-Type": "application/json"})
        assert resp.status == 422, (depth, await resp.text())
        assert "nested deeper than 32" in (await resp.json())["error"]["message"]
    resp = await client.post("/api/v1/courses", data='{"title": ' + "[" * 30 + "]" * 30 + "}",
                             headers={**auth, "Content-Type": "application/json"})
    assert resp.status == 422 and "title" in (await resp.json())["error"]["details"]  # deep enough to validate


@pytest.mark.parametrize("content_type", ["application/json; charset=bogus", "application/json; charset=utf-7",
                                          "application/json; charset=unicode_escape", "application/json; charset=\xff"])
async def test_a_json_body_in_another_charset_is_415(client, auth, content_type):
    """Found by probing: the validators decoded the body again by the declared charset (an
    unknown one was a 500; utf-7 smuggled lone surrogates past the JSON check into PostgreSQL)."""
    resp = await client.post("/api/v1/courses", data=b'{"title": "+2AA-"}',
                             headers={**auth, "Content-Type": content_type})
    assert resp.status == 415, await resp.text()
    assert (await resp.json())["error"]["code"] == "unsupported_media_type"
    for fine in ("application/json; charset=utf-8", "application/json; charset=UTF8"):
        resp = await client.post("/api/v1/courses", data=b'{"title": "ok"}', headers={**auth, "Content-Type": fine})
        assert resp.status == 201


async def test_http_semantics_a_client_relies_on(client, auth):
    """Found by probing through nginx (RFC 9110/9111): a 401 names its scheme, every GET
    answers HEAD (the docs pages did not), a tenant's data is never stored by a cache, a
    201 says where the new resource is, and a request with two keys is not guessed at."""
    for resp in (await client.get("/api/v1/courses"), await client.get("/api/v1/courses", headers={"X-API-Key": "x"})):
        assert resp.status == 401 and resp.headers["WWW-Authenticate"] == 'ApiKey header="X-API-Key"'
    for path in ("/docs", "/api/docs/openapi.json", "/health"):
        head, get = await client.head(path), await client.get(path)
        assert (head.status, head.headers["Content-Length"]) == (200, get.headers["Content-Length"]), path
        assert await head.read() == b""
    created = await client.post("/api/v1/courses", json={"title": "Located"}, headers=auth)
    course = await created.json()
    assert created.headers["Location"] == f"/api/v1/courses/{course['id']}"
    for resp in (created, await client.get(created.headers["Location"], headers=auth),
                 await client.get("/api/v1/nothing", headers=auth), await client.get("/api/v1/courses")):
        assert resp.headers["Cache-Control"] == "no-store", resp.url
    assert "Cache-Control" not in (await client.get("/health")).headers
    uploaded = await client.post(f"/api/v1/courses/{course['id']}/materials?filename=a.txt", data=b"a", headers=auth)
    assert uploaded.headers["Location"] == f"/api/v1/courses/{course['id']}/materials/{(await uploaded.json())['id']}"
    mapped = await client.post(f"/api/v1/courses/{course['id']}/slide-mapping", json={"items": []}, headers=auth)
    assert mapped.status == 201 and mapped.headers["Location"] == f"/api/v1/courses/{course['id']}/slide-mapping"
    two_keys = CIMultiDict([("X-API-Key", auth["X-API-Key"]), ("X-API-Key", auth["X-API-Key"])])
    resp = await client.get("/api/v1/courses", headers=two_keys)
    assert resp.status == 401 and "one X-API-Key" in (await resp.json())["error"]["message"]
