"""Servers on the host that the VPS talks to, bound to the host end of its veth pair.

- pebble (ACME) with pebble-challtestsrv as its DNS, which resolves every name
  to the VPS: certbot on the VPS gets a real certificate through a real HTTP-01
  challenge answered by the VPS's nginx;
- moto in server mode: the S3 bucket;
- a fake Telegram Bot API that records Netdata's alerts in .vps/telegram.jsonl;
- the OpenAI-compatible test server (tests/support/llm_server.py), the VPS's LLM
  provider unless the caller's environment names a real one (OPENAI_API_KEY), and a
  second one, its fallback provider.

Each runs detached (it outlives `make vps`) and is tracked by PID in .vps/state.json.
"""

from __future__ import annotations

import json
import ssl
import sys
import urllib.request

import boto3

from tests.support.net import wait_for_port

from . import host, pki
from .layout import (DNS_PORT, HOST_ADDRESS, LLM_FALLBACK_PORT, LLM_PORT, PEBBLE_MANAGEMENT_PORT, PEBBLE_PORT,
                     S3_BUCKET, S3_CREDENTIALS, S3_PORT, SITE_CA, STATE_DIR, TELEGRAM_LOG, TELEGRAM_PORT, VPS_ADDRESS)

ACME_DIRECTORY = f"https://{HOST_ADDRESS}:{PEBBLE_PORT}/dir"
DNS_MANAGEMENT_PORT = 8055
S3_ENDPOINT = f"http://{HOST_ADDRESS}:{S3_PORT}"
TELEGRAM_HOSTNAME = "api.telegram.org"


def _ensure(state: dict, name: str, cmd: list[str], port: int, env: dict | None = None) -> None:
    if host.is_running(state["processes"].get(name)):
        return
    host.log(f"starting {name} on {HOST_ADDRESS}:{port}")
    host.spawn(state, name, cmd, env=env)
    try:
        wait_for_port(port, host=HOST_ADDRESS, timeout=30)
    except TimeoutError:
        raise RuntimeError(f"{name} did not start: see .vps/logs/{name}.log") from None


def start_all(state: dict) -> None:
    _ensure(state, "challtestsrv", [
        "pebble-challtestsrv", "-defaultIPv4", VPS_ADDRESS, "-defaultIPv6", "",
        "-dns01", f"{HOST_ADDRESS}:{DNS_PORT}", "-http01", "", "-https01", "", "-tlsalpn01", "",
        "-management", f"{HOST_ADDRESS}:{DNS_MANAGEMENT_PORT}",
    ], DNS_PORT)
    cert, key = pki.ensure_server_cert("pebble", ips=[HOST_ADDRESS])
    config = STATE_DIR / "pebble.json"
    config.write_text(json.dumps({"pebble": {
        "listenAddress": f"{HOST_ADDRESS}:{PEBBLE_PORT}",
        "managementListenAddress": f"{HOST_ADDRESS}:{PEBBLE_MANAGEMENT_PORT}",
        "certificate": str(cert), "privateKey": str(key),
        "httpPort": 80, "tlsPort": 443, "ocspResponderURL": "", "externalAccountBindingRequired": False,
    }}, indent=2))
    _ensure(state, "pebble", ["pebble", "-config", str(config), "-dnsserver", f"{HOST_ADDRESS}:{DNS_PORT}"],
            PEBBLE_PORT, env={"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"})
    _ensure(state, "s3", [sys.executable, "-m", "moto.server", "-H", HOST_ADDRESS, "-p", str(S3_PORT)],
            S3_PORT, env=S3_CREDENTIALS)
    ensure_bucket(S3_BUCKET)
    # Netdata's curl reaches it as api.telegram.org (--connect-to), the app by its address.
    cert, key = pki.ensure_server_cert("telegram-api", dns=[TELEGRAM_HOSTNAME], ips=[HOST_ADDRESS])
    TELEGRAM_LOG.touch()
    _ensure(state, "telegram", [sys.executable, "-m", "tests.localvps.telegram",
                                "--listen", f"{HOST_ADDRESS}:{TELEGRAM_PORT}", "--cert", str(cert),
                                "--key", str(key), "--log", str(TELEGRAM_LOG)], TELEGRAM_PORT)
    _ensure(state, "llm", [sys.executable, "-m", "tests.support.llm_server", "--listen", f"{HOST_ADDRESS}:{LLM_PORT}"],
            LLM_PORT)
    _ensure(state, "llm-fallback", [sys.executable, "-m", "tests.support.llm_server",
                                    "--listen", f"{HOST_ADDRESS}:{LLM_FALLBACK_PORT}"], LLM_FALLBACK_PORT)


def ensure_bucket(name: str) -> None:
    s3 = boto3.client("s3", endpoint_url=S3_ENDPOINT, aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                      region_name=S3_CREDENTIALS["AWS_DEFAULT_REGION"])
    if name not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
        s3.create_bucket(Bucket=name)


def point_name(name: str, address: str) -> None:
    """Make the ACME server's DNS answer ``address`` for ``name`` (every other name: the VPS)."""
    request = urllib.request.Request(f"http://{HOST_ADDRESS}:{DNS_MANAGEMENT_PORT}/add-a", method="POST",
                                     data=json.dumps({"host": name + ".", "addresses": [address]}).encode())
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def stop_all(state: dict) -> None:
    for name in ("llm-fallback", "llm", "telegram", "s3", "pebble", "challtestsrv"):
        host.stop(state, name)


def record_site_ca() -> None:
    """Keep every root pebble has used (a restarted pebble makes a new one) in .vps/site-ca.pem."""
    context = ssl.create_default_context(cafile=str(pki.CA_CERT))
    known = SITE_CA.read_text() if SITE_CA.exists() else ""
    with urllib.request.urlopen(f"https://{HOST_ADDRESS}:{PEBBLE_MANAGEMENT_PORT}/roots/0",
                                context=context, timeout=10) as response:
        root = response.read().decode()
    if root.strip() not in known:
        SITE_CA.write_text(known + root.strip() + "\n")
