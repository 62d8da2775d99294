"""The site as a client sees it, from outside the host: HTTPS only, modern TLS with a valid
certificate, the security headers, the API refusing a request without a key, and nothing
but SSH, HTTP and HTTPS reachable. Read-only: the requests create nothing."""

from __future__ import annotations

import datetime
import re
import socket
import ssl
import subprocess
import threading

import pytest

# A renewal is due 30 days before expiry (certbot's default) and retried twice a day: a
# certificate this close to its end is one that renewal has stopped renewing.
MIN_CERTIFICATE_DAYS_LEFT = 14
# Ports that listen on the host but must not be reachable from outside: PostgreSQL, the
# app, Netdata; and one where nothing listens, which the firewall drops all the same.
CLOSED_PORTS = (5432, 8000, 19999, 9999)


def _handshake(address: tuple[str, int], name: str, cafile: str | None, version: ssl.TLSVersion) -> str:
    """A TLS handshake allowing only ``version`` (the client's own policy relaxed as far as it goes)."""
    context = ssl.create_default_context(cafile=cafile)
    context.minimum_version = context.maximum_version = version
    context.set_ciphers("ALL:@SECLEVEL=0")
    with socket.create_connection(address, timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=name) as tls:
            return tls.version()


def _site_handshake(target, version: ssl.TLSVersion) -> str:
    return _handshake((target.hosts[0].address, 443), target.domain, target.ca_file, version)


def test_health_is_ok_and_names_the_live_release(site, hosts):
    status, body = site.json("/health")
    assert (status, body["status"], body["db"], body["s3"]) == (200, "ok", "ok", "ok")
    live = hosts[0].file("/opt/course-supporter/current").linked_to.rsplit("/", 1)[1]
    assert body["release"] == live and body["uptime_s"] >= 0


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_tls_older_than_1_2_is_refused(target, version, tmp_path):
    # The control: this client still speaks the old version to a server that does.
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", tmp_path / "key.pem", "-out", tmp_path / "cert.pem"], check=True, capture_output=True)
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    old.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    old.minimum_version = version
    old.set_ciphers("ALL:@SECLEVEL=0")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        accept = threading.Thread(target=lambda: old.wrap_socket(listener.accept()[0], server_side=True).close())
        accept.start()
        assert _handshake(listener.getsockname(), "localhost", str(tmp_path / "cert.pem"), version) in ("TLSv1", "TLSv1.1")
        accept.join(10)
    # The site refuses it.
    with pytest.raises(ssl.SSLError):
        _site_handshake(target, version)


@pytest.mark.parametrize("version, name", [(ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")])
def test_tls_1_2_and_1_3_are_served(target, version, name):
    assert _site_handshake(target, version) == name


def test_the_certificate_is_valid_for_the_domain_and_not_about_to_expire(target):
    context = ssl.create_default_context(cafile=target.ca_file)  # verifies the chain and the name
    with socket.create_connection((target.hosts[0].address, 443), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=target.domain) as tls:
            certificate = tls.getpeercert()
    expires = datetime.datetime.fromtimestamp(ssl.cert_time_to_seconds(certificate["notAfter"]), datetime.timezone.utc)
    days_left = (expires - datetime.datetime.now(datetime.timezone.utc)).days
    assert days_left >= MIN_CERTIFICATE_DAYS_LEFT, f"the certificate expires on {expires:%Y-%m-%d}"


@pytest.mark.parametrize("path", ["/health", "/api/v1/courses"])
def test_security_headers_are_on_answers_and_errors(site, path):
    _, headers, _ = site(path)
    assert re.fullmatch(r"max-age=\d{7,}; includeSubDomains", headers["strict-transport-security"])
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
    assert re.fullmatch(r"[A-Za-z0-9._-]{8,64}", headers["x-request-id"])


def test_no_key_is_a_json_401(site):
    status, headers, body = site("/api/v1/courses")
    assert status == 401 and headers["content-type"].startswith("application/json")
    assert '"missing_api_key"' in body
    assert headers["www-authenticate"] == 'ApiKey header="X-API-Key"'
    assert (headers["x-ratelimit-limit"], headers["x-ratelimit-remaining"]) == ("0", "0")


def test_http_redirects_to_https(site, target):
    status, headers, _ = site("/api/v1/courses?x=1", scheme="http")
    assert status == 301
    assert headers["location"] == f"https://{target.domain}/api/v1/courses?x=1"


@pytest.mark.parametrize("path, args", [
    ("/health", ()),
    ("/api/v1/courses", ()),                                      # the app's 401
    ("/no/such/page", ("-H", "X-API-Key: cs_live_" + "0" * 32)),  # the app's 401 for an unknown key
    ("/netdata/", ()),                                            # nginx's own 401
])
def test_no_server_software_or_version_is_told(site, path, args):
    _, headers, body = site(path, *args)
    assert headers.get("server") == "nginx" and "x-powered-by" not in headers, headers
    assert not re.search(r"nginx/\d|aiohttp|Python/\d|gunicorn", body, re.I), body[:300]


def test_the_dashboard_needs_credentials(site):
    status, _, _ = site("/netdata/")
    assert status == 401


def test_the_api_document_and_its_ui_are_served(site):
    status, _, body = site("/docs")
    assert status == 200 and "swagger" in body.lower()
    status, document = site.json("/api/docs/openapi.json")
    assert status == 200 and document["openapi"] == "3.1.0" and "/api/v1/courses" in document["paths"]


def test_the_metrics_are_not_served_from_outside(site):
    status, headers, body = site("/metrics")
    assert status in (401, 404) and "course_supporter_" not in body  # 401: the operator enabled a scraper
    if status == 404:
        assert headers["content-type"].startswith("application/json")


@pytest.mark.parametrize("port", CLOSED_PORTS)
def test_internal_ports_are_closed_from_outside(target, port):
    for host in target.hosts:
        with pytest.raises(OSError):
            socket.create_connection((host.address, port), timeout=3).close()
