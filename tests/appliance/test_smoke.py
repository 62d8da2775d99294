"""The API over real HTTPS, verified against the local ACME server's CA (never -k)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def test_vps_json_has_every_contract_field(vps):
    assert set(vps) >= {"url", "domain", "address", "ca_cert", "api_key", "ssh", "telegram_log"}
    assert vps["url"] == f"https://{vps['domain']}"
    assert Path(vps["ca_cert"]).is_file()
    assert os.path.isabs(vps["telegram_log"])


def test_health_is_ok_over_https(curl):
    status, body = curl.json("/health")
    assert (status, body["status"]) == (200, "ok")


def test_security_headers(curl):
    status, headers, _ = curl("/health")
    assert headers["strict-transport-security"].startswith("max-age=")
    assert headers["x-content-type-options"] == "nosniff"
    assert "x-request-id" in headers


def test_demo_key_creates_and_reads_a_course(curl, vps):
    title = f"Smoke course {uuid.uuid4().hex[:8]}"
    status, created = curl.json("/api/v1/courses", "-H", f"X-API-Key: {vps['api_key']}",
                                "-H", "Content-Type: application/json", "--data", f'{{"title": "{title}"}}')
    assert status == 201, created
    status, fetched = curl.json(f"/api/v1/courses/{created['id']}", "-H", f"X-API-Key: {vps['api_key']}")
    assert (status, fetched["title"]) == (200, title)


def test_no_key_is_401(curl):
    status, body = curl.json("/api/v1/courses")
    assert status == 401
    assert body["error"]["code"] == "missing_api_key"


def test_http_redirects_to_https(curl, vps):
    status, headers, _ = curl("/api/v1/courses?x=1", scheme="http")
    assert status == 301
    assert headers["location"] == f"https://{vps['domain']}/api/v1/courses?x=1"


def test_netdata_needs_credentials(curl):
    status, _, _ = curl("/netdata/")
    assert status == 401


def test_netdata_with_credentials(curl, vps):
    password = (Path(vps["ca_cert"]).parent / "secrets" / "netdata_password").read_text().strip()
    status, _, body = curl("/netdata/api/v1/info", "-u", f"admin:{password}")
    assert status == 200
    assert '"version"' in body
    status, _, _ = curl("/netdata/", "-u", f"admin:{password}")
    assert status == 200


def test_swagger_ui_is_served(curl):
    status, _, body = curl("/docs")
    assert status == 200 and "swagger" in body.lower()


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
