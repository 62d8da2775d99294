"""Each host of the appliance, checked from the inside over SSH (pytest-testinfra): the
services run, only SSH, HTTP and HTTPS listen beyond loopback, secrets are kept close,
the live release is in place, and the monitoring is loaded. Read-only: every command
here only reads."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.support.metrics import samples as scrape_samples
from tests.support.paths import REPO_ROOT
from tests.support.vps import configured_secrets, wait_for

SERVICES = ["course-supporter.socket", "course-supporter", "postgresql", "nginx", "netdata", "nftables", "ssh"]
TIMERS = ["certbot.timer", "course-supporter-backup.timer", "course-supporter-restore-drill.timer"]
SECRET_FILES = ["/etc/course-supporter/env", "/etc/nginx/netdata.htpasswd", "/etc/netdata/health_alarm_notify.conf"]
# The units the playbooks add; each runs sandboxed (systemd-analyze's 0-10 exposure scale).
OUR_SERVICES = ["course-supporter.service", "course-supporter-backup.service", "course-supporter-restore-drill.service"]
MAX_EXPOSURE = 2.0
# Every alarm the netdata role installs.
ALARMS = set(re.findall(r"^\s*(?:alarm|template): (\w+)$",
                        Path(REPO_ROOT, "roles/netdata/templates/health.conf.j2").read_text(), re.M))


@pytest.mark.parametrize("name", SERVICES + TIMERS)
def test_services_and_timers_are_enabled_and_running(hosts, name):
    for host in hosts:
        service = host.service(name)
        assert service.is_enabled and service.is_running, (host.backend.hostname, name)


def test_the_app_runs_as_its_own_user(hosts):
    for host in hosts:
        processes = host.process.filter(comm="gunicorn")
        assert len(processes) >= 3  # the arbiter and its workers
        assert {p.user for p in processes} == {"course-supporter"}


def test_only_ssh_http_and_https_listen_beyond_loopback(hosts):
    for host in hosts:
        exposed = set()
        for spec in host.socket.get_listening_sockets():
            proto, _, rest = spec.partition("://")
            if proto != "tcp":
                continue
            address, _, port = rest.rpartition(":")
            if address not in ("127.0.0.1", "::1"):
                exposed.add(int(port))
        assert exposed == {22, 80, 443}, host.backend.hostname


def test_the_app_postgresql_and_netdata_listen_on_loopback(hosts):
    for host in hosts:
        for port in (8000, 5432, 19999):
            assert host.socket(f"tcp://127.0.0.1:{port}").is_listening
            assert not host.socket(f"tcp://0.0.0.0:{port}").is_listening


def test_the_firewall_drops_what_it_does_not_admit(hosts):
    for host in hosts:
        ruleset = host.check_output("nft list chain inet filter input")
        assert "policy drop" in ruleset
        assert re.search(r"tcp dport \{ 22, 80, 443 \} accept", ruleset)


def test_the_env_file_is_readable_by_the_app_only(hosts):
    for host in hosts:
        env = host.file("/etc/course-supporter/env")
        assert (env.user, env.group, env.mode) == ("root", "course-supporter", 0o640)


@pytest.mark.parametrize("path", SECRET_FILES)
def test_secret_files_are_not_world_readable(hosts, path):
    for host in hosts:
        assert host.file(path).mode & 0o007 == 0


def test_tls_private_keys_are_not_world_readable(hosts):
    """The site's key, through the link nginx reads (certbot's, or the snakeoil placeholder's)."""
    for host in hosts:
        keys = host.check_output("readlink -f /etc/nginx/tls/*/privkey.pem; "
                                 "find /etc/letsencrypt/archive -name 'privkey*.pem' 2>/dev/null || true").split()
        assert keys
        for key in keys:
            assert host.file(key).user == "root" and host.file(key).mode & 0o007 == 0, key


def test_the_dashboard_password_is_stored_hashed(hosts):
    for host in hosts:
        _, _, stored = host.check_output("cat /etc/nginx/netdata.htpasswd").partition(":")
        assert re.match(r"^\$(apr1|2[aby]|5|6)\$", stored), stored[:6]


def test_no_secret_is_in_any_command_line(hosts):
    for host in hosts:
        command_lines = host.check_output("ps -eww -o args")
        assert not [secret for secret in configured_secrets(host) if secret in command_lines]


@pytest.mark.parametrize("unit", OUR_SERVICES)
def test_every_service_we_add_is_sandboxed(hosts, unit):
    for host in hosts:
        out = host.check_output(f"systemd-analyze security --no-pager {unit}")
        score = float(re.search(rf"Overall exposure level for {re.escape(unit)}: ([\d.]+)", out).group(1))
        assert score <= MAX_EXPOSURE, out


def test_the_live_release_is_a_versioned_directory(hosts):
    for host in hosts:
        current = host.file("/opt/course-supporter/current")
        assert current.is_symlink
        assert current.linked_to.startswith("/opt/course-supporter/releases/")
        assert host.file(f"{current.linked_to}/venv/bin/gunicorn").exists
        assert host.file(f"{current.linked_to}/.complete").exists
        assert host.file(f"{current.linked_to}/app/main.py").user == "root"  # the app cannot rewrite its code


def test_sshd_allows_keys_only(hosts):
    for host in hosts:
        settings = dict(line.split(" ", 1) for line in host.check_output("sshd -T").splitlines() if " " in line)
        assert settings["passwordauthentication"] == "no"
        assert settings["kbdinteractiveauthentication"] == "no"
        assert settings["permitrootlogin"] in ("without-password", "prohibit-password")
        assert settings["pubkeyauthentication"] == "yes"


def test_the_journal_is_persistent_and_capped(hosts):
    for host in hosts:
        assert host.file("/var/log/journal").is_directory
        conf = host.file("/etc/systemd/journald.conf.d/50-course-supporter.conf").content_string
        assert "Storage=persistent" in conf and "SystemMaxUse=" in conf


def test_security_upgrades_run_unattended_and_time_is_synchronised(hosts):
    for host in hosts:
        assert host.package("unattended-upgrades").is_installed
        assert 'Unattended-Upgrade "1"' in host.file("/etc/apt/apt.conf.d/20auto-upgrades").content_string
        assert host.service("systemd-timesyncd").is_enabled


def test_certbot_renews_the_certificate_nginx_serves(hosts, target):
    for host in hosts:
        assert host.file("/etc/letsencrypt/renewal-hooks/deploy/50-reload-nginx.sh").mode == 0o755
        live = host.file(f"/etc/letsencrypt/live/{target.domain}/fullchain.pem")
        assert live.exists
        assert host.file(f"/etc/nginx/tls/{target.domain}/fullchain.pem").linked_to == live.linked_to


def test_postgresql_stores_the_app_password_as_scram(hosts):
    for host in hosts:
        stored = host.check_output("runuser -u postgres -- psql -X -q -t -A -c %s",
                                   "SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid "
                                   "WHERE rolname = 'course_supporter'")
        assert stored == "t"


def test_the_alarms_are_loaded_and_the_app_is_up(hosts):
    """Netdata attaches an alarm once its chart exists: the app check's charts appear with
    its first runs after Netdata (re)starts."""
    for host in hosts:
        def loaded() -> dict:
            alarms = json.loads(host.check_output("curl -sS 'http://127.0.0.1:19999/api/v1/alarms?all'"))["alarms"]
            return {alarm["name"]: alarm for alarm in alarms.values()}

        assert wait_for(lambda: ALARMS <= set(loaded()), 90), sorted(ALARMS - set(loaded()))
        assert wait_for(lambda: loaded()["course_supporter_down"]["status"] == "CLEAR", 60)


def test_the_app_answers_on_loopback_and_logs_json_lines(hosts):
    for host in hosts:
        assert host.check_output("curl -sS -o /dev/null -w '%{http_code}' http://127.0.0.1:8000/health") == "200"
        lines = host.check_output("journalctl _SYSTEMD_UNIT=course-supporter.service -o cat -n 200 --no-pager")
        records = [json.loads(line) for line in lines.splitlines()]
        assert any(r.get("logger") == "app.access" and r.get("path") == "/health" for r in records)


def test_the_metrics_are_served_on_loopback_for_every_worker(hosts):
    for host in hosts:
        samples = scrape_samples(host.check_output("curl -sS http://127.0.0.1:8000/metrics"))
        health = ("course_supporter_http_requests_total", (("method", "GET"), ("route", "/health"), ("status", "200")))
        assert samples.get(health, 0) > 0  # Netdata's checks
        workers = len(host.process.filter(comm="gunicorn")) - 1  # without the arbiter
        assert samples[("course_supporter_db_pool_max_connections", ())] == 10 * workers  # the live workers' pools


def test_every_worker_listens_for_key_changes(hosts):
    """Each worker's key cache is trusted only while its listener connection is up: one
    per live worker, listening on the key-change channel."""
    for host in hosts:
        workers = len(host.process.filter(comm="gunicorn")) - 1  # without the arbiter

        def listening() -> str:
            return host.check_output(
                "runuser -u postgres -- psql -X -q -t -A -c %s",
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'course-supporter-listener'")
        assert wait_for(lambda: int(listening()) == workers, 30), (listening(), workers)


def test_the_admin_cli_runs_as_the_app_with_its_environment(hosts):
    for host in hosts:
        result = host.run("course-supporter-admin tenant list --json")
        assert result.rc == 0, result.stderr
        assert isinstance(json.loads(result.stdout), list)
