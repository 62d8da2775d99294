"""What the read-only checks check: the deployment `make check INVENTORY=<dir>` names, or,
in `make test`, the local VPS (brought up by the appliance suite's ``vps`` fixture) through
inventory/local, the same way."""

from __future__ import annotations

import os
import socket

import pytest

from tests.support.deployment import TARGET_ENV, Target, resolve
from tests.support.vps import Curl


@pytest.fixture(scope="session")
def target(request) -> Target:
    handoff = os.environ.get(TARGET_ENV)
    if handoff:
        with open(handoff) as f:
            return Target.from_json(f.read())
    request.getfixturevalue("vps")  # make test: the local VPS, up and provisioned
    return resolve("inventory/local")


@pytest.fixture(scope="session")
def hosts(target) -> list:
    """testinfra hosts, one per inventory host of the appliance."""
    return [h.testinfra() for h in target.hosts]


@pytest.fixture(scope="session")
def site(target) -> Curl:
    """HTTPS from here to the first host, as a client with the site's name (curl --resolve)."""
    address = socket.getaddrinfo(target.hosts[0].address, 443, type=socket.SOCK_STREAM)[0][4][0]
    return Curl(target.domain, address, target.ca_file)
