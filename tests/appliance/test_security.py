"""A security review of the provisioned appliance, as checks that send requests a client
would not (floods, malformed requests) or need the local VPS's own setup: where the secrets
are not, nginx's limits and JSON errors. TLS, file modes, banners and the units' sandboxes
are among the read-only checks of any deployment, in checks/."""

from __future__ import annotations

import asyncio
import collections
import json
import re
import secrets
import socket
import ssl
import time

import aiohttp
import pytest
import yaml

from tests.localvps.layout import MACHINE_DIR, ROOT, VPS_JSON
from tests.support.vps import configured_secrets

def test_no_secret_and_no_api_key_is_in_the_journal(host, vps, curl):
    status, _, _ = curl("/api/v1/courses", "-H", f"X-API-Key: {vps['api_key']}")  # a request the app logs
    assert status == 200
    journal = host.check_output("journalctl --no-pager -o cat --since '-1 day'")
    assert len(journal) > 10_000  # there is something to look at
    for secret in [*configured_secrets(host), vps["api_key"]]:
        assert secret not in journal
    assert vps["api_key"][:12] in journal  # the key's prefix is logged, nothing more


def test_the_local_vps_files_on_the_host_are_roots_alone():
    """Found by probing: without user namespaces the VPS's group ids are other groups on the
    host (its course-supporter group was the host's polkitd), which could read its env file."""
    assert MACHINE_DIR.stat().st_mode & 0o777 == 0o700
    assert VPS_JSON.stat().st_mode & 0o777 == 0o600  # it holds the demo key


def test_an_api_key_in_a_query_string_stays_out_of_nginx_access_log(host, curl, vps):
    """Found by probing: nginx logged whole request lines, so a key a client put in the
    query (which the app ignores: 401) stood in the access log that group adm reads."""
    marker = secrets.token_hex(8)
    status, _, _ = curl(f"/api/v1/courses/{marker}?api_key={vps['api_key']}&X-API-Key={vps['api_key']}")
    assert status == 401
    log = host.check_output("tail -n 500 /var/log/nginx/access.log")
    lines = [line for line in log.splitlines() if marker in line]
    assert lines and all(f"/api/v1/courses/{marker}?(query not logged)" in line for line in lines), lines
    assert vps["api_key"] not in log


def test_floods_without_a_valid_key_are_limited_per_address_by_nginx(vps, curl):
    """200 requests without a usable key from 20 connections at once: nginx answers most
    with a JSON 429 itself (a burst of 40 passes); keyed requests meanwhile are untouched.
    Once the burst has drained at the limit's rate, the address is served again (and the
    tests after this one start from an empty bucket)."""
    async def flood() -> tuple[collections.Counter, collections.Counter]:
        context = ssl.create_default_context(cafile=vps["ca_cert"])
        base, host = f"https://{vps['address']}", {"Host": vps["domain"]}
        unkeyed, keyed = collections.Counter(), collections.Counter()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=20, ssl=context)) as session:
            async def one(headers: dict, into: collections.Counter) -> None:
                async with session.get(f"{base}/api/v1/courses", headers={**host, **headers},
                                       server_hostname=vps["domain"]) as resp:
                    body = await resp.json()
                    into[resp.status, body.get("error", {}).get("code")] += 1
                    if resp.status == 429 and into is unkeyed:
                        assert resp.headers["Retry-After"] == "1" and "Strict-Transport-Security" in resp.headers
                    if into is unkeyed:  # nginx's 429 and the app's 401 alike
                        assert [resp.headers.get(f"X-RateLimit-{name}") for name in ("Limit", "Remaining", "Reset")] \
                            == ["0", "0", "0"], dict(resp.headers)
            garbage = [one({"X-API-Key": "not-a-key"} if n % 2 else {}, unkeyed) for n in range(200)]
            valid = [one({"X-API-Key": vps["api_key"]}, keyed) for _ in range(20)]
            await asyncio.wait_for(asyncio.gather(*garbage, *valid), timeout=120)
        return unkeyed, keyed

    unkeyed, keyed = asyncio.run(flood())
    limited = unkeyed[429, "rate_limited"]
    assert limited >= 100 and sum(unkeyed.values()) == 200, unkeyed
    assert set(unkeyed) <= {(429, "rate_limited"), (401, "missing_api_key"), (401, "invalid_api_key")}
    assert keyed == {(200, None): 20}
    print(f"\nunkeyed flood: {dict(unkeyed)}; keyed meanwhile: {dict(keyed)}")

    defaults = yaml.safe_load((ROOT / "roles/nginx/defaults/main.yml").read_text())
    rate_per_s = int(re.fullmatch(r"(\d+)r/s", defaults["nginx_unkeyed_rate"]).group(1))
    time.sleep(defaults["nginx_unkeyed_burst"] / rate_per_s + 0.5)
    status, body = curl.json("/api/v1/courses")
    assert (status, body["error"]["code"]) == (401, "missing_api_key")


def _raw_https(vps: dict, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Bytes sent as they are over TLS (HTTP/1.1), for requests no client library would make."""
    context = ssl.create_default_context(cafile=vps["ca_cert"])
    context.set_alpn_protocols(["http/1.1"])
    with socket.create_connection((vps["address"], 443), timeout=20) as raw:
        with context.wrap_socket(raw, server_hostname=vps["domain"]) as tls:
            tls.sendall(request)
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize("request_bytes, status, code", [
    (b"NONSENSE\r\n\r\n", 400, "bad_request"),
    (b"GET /api/v1/courses HTTP/1.1\r\nHost: {domain}\r\nX-Big: " + b"a" * 40_000 + b"\r\nConnection: close\r\n\r\n",
     400, "bad_request"),
    (b"GET /api/v1/courses?x=" + b"a" * 40_000 + b" HTTP/1.1\r\nHost: {domain}\r\nConnection: close\r\n\r\n",
     414, "uri_too_long"),
])
def test_requests_nginx_cannot_take_get_json_errors(vps, request_bytes, status, code):
    _assert_json_from_nginx(vps, request_bytes, status, code)


@pytest.mark.parametrize("request_bytes, status, code", [
    # Found by probing: these were nginx's HTML pages, or (FOO) aiohttp's plain text echoing the request line.
    (b"TRACE /api/v1/courses HTTP/1.1\r\nHost: {domain}\r\nConnection: close\r\n\r\n", 405, "method_not_allowed"),
    (b"FOO /api/v1/courses HTTP/1.1\r\nHost: {domain}\r\nConnection: close\r\n\r\n", 501, "not_implemented"),
    (b"POST /api/v1/courses HTTP/1.1\r\nHost: {domain}\r\nTransfer-Encoding: identity\r\nConnection: close\r\n\r\n",
     501, "not_implemented"),
    (b"GET /api/v1/courses HTTP/2.0\r\nHost: {domain}\r\nConnection: close\r\n\r\n", 505,
     "http_version_not_supported"),
])
def test_methods_and_versions_nginx_refuses_get_json_errors(vps, request_bytes, status, code):
    _assert_json_from_nginx(vps, request_bytes, status, code)


def _assert_json_from_nginx(vps, request_bytes: bytes, status: int, code: str) -> dict[str, str]:
    got, headers, body = _raw_https(vps, request_bytes.replace(b"{domain}", vps["domain"].encode()))
    assert (got, headers["content-type"]) == (status, "application/json"), body[:300]
    error = json.loads(body)["error"]
    assert error["code"] == code and "strict-transport-security" in headers
    # Like the app's errors, nginx's say which request they answer.
    assert re.fullmatch(r"[A-Za-z0-9._-]{8,64}", headers["x-request-id"])
    assert error["request_id"] == headers["x-request-id"]
    if status == 405:
        assert "GET" in headers["allow"]
    return headers


def test_nginx_errors_keep_a_sane_incoming_request_id(vps):
    for sent, kept in (("trace-abc-123", True), ("bad id\"x", False)):
        headers = _assert_json_from_nginx(
            vps, f"TRACE /api/v1/courses HTTP/1.1\r\nHost: {{domain}}\r\nX-Request-ID: {sent}\r\n"
                 "Connection: close\r\n\r\n".encode(), 405, "method_not_allowed")
        assert (headers["x-request-id"] == sent) == kept


@pytest.mark.parametrize("request_bytes, status, code", [
    (b"GET /api/v1/courses/\xc3\xa9 HTTP/1.1\r\n", 400, "bad_request"),
    (b"GET /api/v1/courses?limit=\xff HTTP/1.1\r\n", 400, "bad_request"),
    (b"POST /api/v1/courses HTTP/1.1\r\nContent-Type: application/json\r\nContent-Encoding: br\r\n"
     b"Content-Length: 2\r\n", 415, "unsupported_media_type"),
    (b"POST /api/v1/courses HTTP/1.1\r\nContent-Type: application/json\r\nContent-Encoding: ZSTD\r\n"
     b"Content-Length: 2\r\n", 415, "unsupported_media_type"),
])
def test_requests_the_apps_parser_refuses_get_json_errors_from_nginx(vps, request_bytes, status, code):
    """aiohttp refuses these in plain text, before any of the app's middlewares."""
    request = request_bytes + b"Host: " + vps["domain"].encode() + b"\r\nConnection: close\r\n\r\n"
    got, headers, body = _raw_https(vps, request + (b"{}" if request.startswith(b"POST") else b""))
    assert (got, headers["content-type"]) == (status, "application/json"), body[:300]
    assert json.loads(body)["error"]["code"] == code and "strict-transport-security" in headers


def test_the_content_codings_the_app_decodes_pass_nginx(curl):
    for coding in ("identity", "GZIP"):
        status, _, body = curl("/api/v1/courses", "-X", "POST", "-H", "Content-Type: application/json",
                               "-H", f"Content-Encoding: {coding}", "--data-binary", "{}")
        # Past nginx: the app's own answers (no key; with one, a 422 or a 400 for a body not in gzip).
        assert (status, json.loads(body)["error"]["code"]) == (401, "missing_api_key"), (coding, body[:300])


@pytest.mark.parametrize("http", ["--http1.1", "--http2"])
def test_long_headers_up_to_32_kib_get_the_apps_json(curl, http):
    """nginx takes header fields up to 32 KiB (over HTTP/2 a longer one ends the whole
    connection with no answer): found by probing with a 12,000-character query."""
    for header in ("X-Big: " + "a" * 30_000, "X-Big: " + secrets.token_urlsafe(22_000)):
        status, headers, body = curl("/api/v1/courses", http, "-H", header)
        assert (status, headers["content-type"]) == (401, "application/json"), body[:300]
        assert json.loads(body)["error"]["code"] == "missing_api_key"
    status, _, body = curl("/api/v1/courses?pad=" + secrets.token_urlsafe(22_000), http)
    assert (status, json.loads(body)["error"]["code"]) == (401, "missing_api_key")
