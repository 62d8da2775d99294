"""The provisioned VPS, checked from the inside over SSH (pytest-testinfra)."""

from __future__ import annotations

import json
import re
import socket

import pytest

from .conftest import psql, wait_for

SERVICES = ["course-supporter", "postgresql", "nginx", "netdata", "nftables", "ssh"]


@pytest.mark.parametrize("name", SERVICES)
def test_service_is_enabled_and_running(host, name):
    service = host.service(name)
    assert service.is_enabled
    assert service.is_running


def test_app_runs_as_its_own_user(host):
    processes = host.process.filter(comm="gunicorn")
    assert len(processes) >= 3  # the arbiter and its workers
    assert {p.user for p in processes} == {"course-supporter"}


def test_only_ssh_http_and_https_listen_beyond_loopback(host):
    exposed = set()
    for spec in host.socket.get_listening_sockets():
        proto, _, rest = spec.partition("://")
        if proto != "tcp":
            continue
        address, _, port = rest.rpartition(":")
        if address not in ("127.0.0.1", "::1"):
            exposed.add(int(port))
    assert exposed == {22, 80, 443}


def test_app_postgres_and_netdata_listen_on_loopback(host):
    for port in (8000, 5432, 19999):
        assert host.socket(f"tcp://127.0.0.1:{port}").is_listening
        assert not host.socket(f"tcp://0.0.0.0:{port}").is_listening


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
    ruleset = host.run("nft list chain inet filter input").stdout
    assert "policy drop" in ruleset
    assert re.search(r"tcp dport \{ 22, 80, 443 \} accept", ruleset)


def test_env_file_is_readable_by_the_app_only(host):
    env = host.file("/etc/course-supporter/env")
    assert (env.user, env.group, env.mode) == ("root", "course-supporter", 0o640)
    assert "DATABASE_URL=" in host.run("cat /etc/course-supporter/env").stdout


def test_release_layout_keeps_code_in_a_versioned_directory(host):
    current = host.file("/opt/course-supporter/current")
    assert current.is_symlink
    assert current.linked_to.startswith("/opt/course-supporter/releases/")
    assert host.file(f"{current.linked_to}/venv/bin/gunicorn").exists
    assert host.file(f"{current.linked_to}/app/main.py").user == "root"  # the app cannot rewrite its code


def test_sshd_allows_keys_only(host):
    settings = dict(line.split(" ", 1) for line in host.check_output("sshd -T").splitlines() if " " in line)
    assert settings["passwordauthentication"] == "no"
    assert settings["kbdinteractiveauthentication"] == "no"
    assert settings["permitrootlogin"] in ("without-password", "prohibit-password")
    assert settings["pubkeyauthentication"] == "yes"


def test_journal_is_persistent_and_capped(host):
    assert host.file("/var/log/journal").is_directory
    conf = host.file("/etc/systemd/journald.conf.d/50-course-supporter.conf").content_string
    assert "Storage=persistent" in conf and "SystemMaxUse=" in conf


def test_security_upgrades_run_unattended(host):
    assert host.package("unattended-upgrades").is_installed
    assert 'Unattended-Upgrade "1"' in host.file("/etc/apt/apt.conf.d/20auto-upgrades").content_string


def test_time_sync_is_enabled(host):
    assert host.service("systemd-timesyncd").is_enabled


def test_certbot_renews_from_the_timer_and_reloads_nginx(host, vps):
    assert host.service("certbot.timer").is_enabled
    assert host.service("certbot.timer").is_running
    assert host.file("/etc/letsencrypt/renewal-hooks/deploy/50-reload-nginx.sh").mode == 0o755
    live = host.file(f"/etc/letsencrypt/live/{vps['domain']}/fullchain.pem")
    assert live.exists
    assert host.file(f"/etc/nginx/tls/{vps['domain']}/fullchain.pem").linked_to == live.linked_to


def test_postgres_uses_scram_for_the_app_role(host):
    assert psql(host, "SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid "
                      "WHERE rolname = 'course_supporter'") == "t"


def test_netdata_alarms_are_loaded(host):
    alarms = json.loads(host.check_output("curl -s 'http://127.0.0.1:19999/api/v1/alarms?all'"))["alarms"]
    names = {alarm["name"] for alarm in alarms.values()}
    assert {"course_supporter_down", "course_supporter_restarts", "course_supporter_ram_in_use",
            "course_supporter_cpu_usage", "course_supporter_disk_space_free"} <= names
    down = next(a for a in alarms.values() if a["name"] == "course_supporter_down")
    assert down["status"] == "CLEAR"


def test_app_logs_json_lines_to_the_journal(host, curl):
    curl("/health")  # at least one fresh access-log line
    lines = host.check_output("journalctl _SYSTEMD_UNIT=course-supporter.service -o cat -n 200 --no-pager").splitlines()
    assert lines
    records = [json.loads(line) for line in lines]
    assert any(r.get("logger") == "app.access" and r.get("path") == "/health" for r in records)


def test_admin_cli_runs_as_the_app_with_its_environment(host):
    result = host.run("course-supporter-admin tenant list --json")
    assert result.rc == 0, result.stderr
    assert isinstance(json.loads(result.stdout), list)
    assert host.run("course-supporter-admin tenant deactivate not-a-uuid --json").rc in (1, 2)


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
