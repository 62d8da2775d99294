"""The API over real HTTPS, verified against the local ACME server's CA (never -k)."""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import uuid
from pathlib import Path


def test_vps_json_has_every_contract_field(vps):
    assert set(vps) >= {"url", "domain", "address", "ca_cert", "api_key", "ssh", "telegram_log"}
    assert vps["url"] == f"https://{vps['domain']}"
    assert Path(vps["ca_cert"]).is_file()
    assert os.path.isabs(vps["telegram_log"])


def test_demo_key_creates_and_reads_a_course(curl, vps):
    title = f"Smoke course {uuid.uuid4().hex[:8]}"
    status, created = curl.json("/api/v1/courses", "-H", f"X-API-Key: {vps['api_key']}",
                                "-H", "Content-Type: application/json", "--data", f'{{"title": "{title}"}}')
    assert status == 201, created
    status, fetched = curl.json(f"/api/v1/courses/{created['id']}", "-H", f"X-API-Key: {vps['api_key']}")
    assert (status, fetched["title"]) == (200, title)


def test_netdata_with_credentials(curl, vps):
    password = (Path(vps["ca_cert"]).parent / "secrets" / "netdata_password").read_text().strip()
    status, _, body = curl("/netdata/api/v1/info", "-u", f"admin:{password}")
    assert status == 200
    assert '"version"' in body
    status, _, _ = curl("/netdata/", "-u", f"admin:{password}")
    assert status == 200


def test_200_mib_upload_streams_through_nginx(curl, vps, tmp_path):
    """A big file over real HTTPS (nginx does not buffer it) arrives whole, checksum and all."""
    import hashlib

    path, digest, size = tmp_path / "lecture.bin", hashlib.sha256(), 200 * (1 << 20)
    with open(path, "wb") as out:
        for _ in range(size // (1 << 20)):
            block = os.urandom(1 << 20)
            digest.update(block)
            out.write(block)
    key = ["-H", f"X-API-Key: {vps['api_key']}"]
    _, course = curl.json("/api/v1/courses", *key, "-H", "Content-Type: application/json",
                          "--data", '{"title": "Big upload"}')
    status, material = curl.json(f"/api/v1/courses/{course['id']}/materials", *key, "-F", f"file=@{path}",
                                 max_time=600)
    assert status == 201, material
    assert (material["size_bytes"], material["sha256"]) == (size, digest.hexdigest())
    status, _, _ = curl(f"/api/v1/courses/{course['id']}", *key, "-X", "DELETE")
    assert status == 204


def _declare_upload(vps: dict, path: str, content_length: int, content_type: str) -> tuple[int, dict, dict]:
    """Send only the headers of an upload of ``content_length`` bytes; the answer comes before any body."""
    context = ssl.create_default_context(cafile=vps["ca_cert"])
    connection = http.client.HTTPSConnection(vps["domain"], 443, context=context, timeout=30)
    connection.sock = context.wrap_socket(socket.create_connection((vps["address"], 443), timeout=30),
                                          server_hostname=vps["domain"])
    try:
        connection.putrequest("POST", path)
        for name, value in (("X-API-Key", vps["api_key"]), ("Content-Type", content_type),
                            ("Content-Length", str(content_length))):
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), json.loads(response.read())
    finally:
        connection.close()


def test_a_1_gib_multipart_upload_is_not_refused_by_nginx_and_too_large_is_json(curl, vps):
    """nginx lets a 1 GiB file plus its multipart framing through to the app, which checks the
    file's size exactly; what nginx refuses itself (over its own limit) is JSON like the app's."""
    _, course = curl.json("/api/v1/courses", "-H", f"X-API-Key: {vps['api_key']}", "-H",
                          "Content-Type: application/json", "--data", '{"title": "Upload limits"}')
    path = f"/api/v1/courses/{course['id']}/materials"
    # Over MAX_UPLOAD_BYTES by one byte: the app's 413 (it passed nginx), nothing read.
    status, _, body = _declare_upload(vps, f"{path}?filename=big.bin", (1 << 30) + 1, "application/octet-stream")
    assert (status, body["error"]["code"]) == (413, "payload_too_large")
    assert "1073741824 bytes allowed" in body["error"]["message"]
    # Far over anything: nginx's own 413, as JSON, with the security headers.
    status, headers, body = _declare_upload(vps, path, 4 << 30, "multipart/form-data; boundary=x")
    assert (status, body["error"]["code"]) == (413, "payload_too_large")
    assert "this server accepts" in body["error"]["message"]
    assert headers["Content-Type"] == "application/json" and "Strict-Transport-Security" in headers
