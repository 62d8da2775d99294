"""The provisioned VPS, checked from the inside over SSH (pytest-testinfra), where a check
changes something (a probe server, a reload) or needs the local VPS's own setup. The
read-only checks of any deployment are in checks/."""

from __future__ import annotations

import json
import socket

import pytest

from tests.support.vps import wait_for


def test_firewall_drops_other_ports(host, vps):
    """A server listening on every address inside the VPS is still unreachable from outside."""
    host.run("systemd-run --unit=cs-firewall-probe --collect python3 -m http.server --bind 0.0.0.0 9999")
    try:
        assert host.run("curl -s -o /dev/null -w '%{http_code}' --retry 10 --retry-connrefused "
                        "--retry-delay 1 http://127.0.0.1:9999/").stdout == "200"
        with pytest.raises(OSError):
            socket.create_connection((vps["address"], 9999), timeout=3).close()
    finally:
        host.run("systemctl stop cs-firewall-probe")


def test_app_environment_names_a_reachable_llm_provider(host):
    env = dict(line.split("=", 1) for line in host.check_output("cat /etc/course-supporter/env").splitlines()
               if "=" in line and not line.startswith("#"))
    base_url = env["OPENAI_BASE_URL"].strip('"')
    key = env["OPENAI_API_KEY"].strip('"')
    models = json.loads(host.check_output(f"curl -sf -H 'Authorization: Bearer {key}' {base_url}/models"))
    assert models["data"]


def test_reload_replaces_workers_without_restarting_the_service(host):
    before = host.check_output("systemctl show -p MainPID --value course-supporter")
    host.run_expect([0], "systemctl reload course-supporter")
    probes = []

    def healthy() -> bool:
        probes.append(host.run("curl -s -w ' %{http_code}' http://127.0.0.1:8000/health").stdout)
        return probes[-1].endswith(" 200")

    assert wait_for(healthy, 30, interval=0.5), probes
    assert host.check_output("systemctl show -p MainPID --value course-supporter") == before
    assert host.service("course-supporter").is_running
