"""The provisioned local VPS for the appliance checks.

``make test`` brings the VPS up itself (as ``make vps`` does) and takes it
down afterwards; a VPS that was already up is re-provisioned with the current
checkout and left running.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import testinfra

from tests.localvps import machine
from tests.localvps.layout import ROOT, SSH_CONFIG, VPS_JSON
from tests.support.vps import Curl

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


@pytest.fixture(scope="session")
def curl(vps) -> Curl:
    """HTTPS to the VPS as a client: its domain, resolved to its address, its CA."""
    return Curl(vps["domain"], vps["address"], vps["ca_cert"])

