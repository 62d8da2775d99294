"""The provisioned local cluster (`make vps-cluster`): a web host, two app hosts and a database
host. ``make test`` boots it once (as ``make vps-cluster`` does) and takes it down afterwards;
a cluster that was already up is re-provisioned with the current checkout and left running.

The boot starts in the background as soon as the session has collected a cluster test, at a
low CPU and I/O priority (its machines keep it), so that it overlaps the tests before it
instead of adding its minutes to the run."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import testinfra

from tests.localvps import machine
from tests.localvps.layout import CLUSTER_JSON, CLUSTER_SSH_CONFIG, LOG_DIR, ROOT
from tests.support.vps import Curl

LOCALVPS = [sys.executable, "-m", "tests.localvps"]
# The first cluster test also waits for the four machines to be built and provisioned.
CLUSTER_TIMEOUT_S = 1200
BOOT_LOG = LOG_DIR / "cluster-boot.log"
_boot: dict = {}


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/cluster/" in item.nodeid:
            item.add_marker(pytest.mark.timeout(CLUSTER_TIMEOUT_S))


def pytest_collection_finish(session):
    if any("tests/cluster/" in item.nodeid for item in session.items):
        _boot["started_here"] = not _cluster_running()
        BOOT_LOG.parent.mkdir(parents=True, exist_ok=True)
        with open(BOOT_LOG, "w") as log:
            _boot["process"] = subprocess.Popen(["nice", "-n", "10", "ionice", "-c", "3", *LOCALVPS, "cluster"],
                                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        _boot["started"] = time.monotonic()


def _cluster_running() -> bool:
    return CLUSTER_JSON.exists() and all(
        machine.ssh("true", check=False, timeout=30, machine=m).returncode == 0 for m in machine.CLUSTER)


@pytest.fixture(scope="session")
def cluster() -> dict:
    process = _boot.get("process")
    if process is None:  # not started at collection (a plugin deselected and reselected?)
        _boot["started_here"] = not _cluster_running()
        process = subprocess.Popen([*LOCALVPS, "cluster"], cwd=ROOT)
        _boot["started"] = time.monotonic()
    started_here = _boot["started_here"]
    code = process.wait(timeout=max(60, 1500 - (time.monotonic() - _boot["started"])))
    if code != 0:
        tail = BOOT_LOG.read_text()[-6000:] if BOOT_LOG.exists() else ""
        if started_here:
            subprocess.run([*LOCALVPS, "cluster-down"], cwd=ROOT, check=False, timeout=300)
        pytest.fail(f"make vps-cluster failed ({code}); the end of {BOOT_LOG}:\n{tail}")
    try:
        yield json.loads(CLUSTER_JSON.read_text())
    finally:
        if started_here:
            subprocess.run([*LOCALVPS, "cluster-down"], cwd=ROOT, check=False, timeout=300)


@pytest.fixture(scope="session")
def hosts(cluster) -> dict:
    """testinfra over SSH to every machine, by name (web1, app1, app2, db1)."""
    return {h["name"]: testinfra.get_host(f"ssh://{h['name']}", ssh_config=str(CLUSTER_SSH_CONFIG))
            for h in cluster["hosts"]}


@pytest.fixture(scope="session")
def machines(cluster) -> dict:
    return {m.alias: m for m in machine.CLUSTER}


@pytest.fixture(scope="session")
def curl(cluster) -> Curl:
    """HTTPS to the cluster's web host as a client: its domain, resolved to its address, its CA."""
    return Curl(cluster["domain"], cluster["address"], cluster["ca_cert"])
