"""The provisioned local VPS for the appliance checks.

``make test`` brings the VPS up itself (as ``make vps`` does) and takes it
down afterwards; a VPS that was already up is re-provisioned with the current
checkout and left running.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import boto3
import pytest
import testinfra

from tests.localvps import machine
from tests.localvps.layout import HOST_ADDRESS, ROOT, S3_CREDENTIALS, S3_PORT, SSH_CONFIG, VPS_JSON

LOCALVPS = [sys.executable, "-m", "tests.localvps"]
# The first appliance test also waits for the VPS to be built and provisioned.
APPLIANCE_TIMEOUT_S = 1200


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/appliance/" in item.nodeid:
            item.add_marker(pytest.mark.timeout(APPLIANCE_TIMEOUT_S))


def _vps_running() -> bool:
    if not VPS_JSON.exists():
        return False
    return machine.ssh("true", check=False, timeout=30).returncode == 0


@pytest.fixture(scope="session")
def vps() -> dict:
    started_here = not _vps_running()
    subprocess.run([*LOCALVPS, "up"], cwd=ROOT, check=True, timeout=900)
    try:
        yield json.loads(VPS_JSON.read_text())
    finally:
        if started_here:
            subprocess.run([*LOCALVPS, "down"], cwd=ROOT, check=False, timeout=300)


@pytest.fixture(scope="session")
def host(vps):
    """testinfra over SSH, with the VPS's pinned host key."""
    return testinfra.get_host("ssh://local-vps", ssh_config=str(SSH_CONFIG))


class Curl:
    """curl against the VPS the way the contract says: --resolve to its address, its CA, no -k."""

    def __init__(self, vps: dict) -> None:
        self.vps = vps

    def __call__(self, path: str, *args: str, scheme: str = "https",
                 max_time: int = 30) -> tuple[int, dict[str, str], str]:
        port = 443 if scheme == "https" else 80
        out = subprocess.run(
            ["curl", "-sS", "--max-time", str(max_time), "--resolve", f"{self.vps['domain']}:{port}:{self.vps['address']}",
             "--cacert", self.vps["ca_cert"], "-D", "-", *args, f"{scheme}://{self.vps['domain']}{path}"],
            capture_output=True, text=True, timeout=max_time + 30, check=True).stdout
        head, _, body = out.partition("\n\n")  # text mode has turned CRLF into LF
        status_line, *header_lines = head.splitlines()
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
        return int(status_line.split()[1]), headers, body

    def json(self, path: str, *args: str, **options) -> tuple[int, object]:
        status, _, body = self(path, *args, **options)
        return status, json.loads(body)


@pytest.fixture(scope="session")
def curl(vps) -> Curl:
    return Curl(vps)


def s3_client():
    """boto3 at the host-side S3 server the VPS stores its materials and backups in."""
    return boto3.client("s3", endpoint_url=f"http://{HOST_ADDRESS}:{S3_PORT}", region_name="us-east-1",
                        aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])


def psql(host, sql: str, database: str = "postgres") -> str:
    """One statement's rows on the VPS, as psql's unaligned output, run as the postgres user."""
    return host.check_output("runuser -u postgres -- psql -X -q -t -A -d %s -c %s", database, sql)


def wait_for(predicate, timeout: float, interval: float = 2.0):
    """Poll until ``predicate()`` is truthy (returned) or ``timeout`` seconds pass (None)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    return None
