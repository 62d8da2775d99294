"""The local cluster (tests/cluster/conftest.py): one web host in front of two app hosts, one
database host, provisioned by playbooks/site.yml from inventory/local-cluster.

Each test states the rule it checks; the cluster is shared, so each leaves it serving."""

from __future__ import annotations

import asyncio
import collections
import json
import socket
import ssl
import time

import aiohttp
import pytest

from app import __version__
from tests.localvps import host as localhost
from tests.localvps import machine as localmachine
from tests.localvps.layout import CLUSTER_S3_BUCKET
from tests.localvps.playbook import CLUSTER_SITE, ansible_playbook
from tests.support.keys import unlimited_key_command
from tests.support.load import Load
from tests.support.pg import FINGERPRINT_SQL
from tests.support.releases import changed_tree
from tests.support.vps import psql, s3_client

ADMIN = "course-supporter-admin"
APP_PLAY = "Deploy the app on the app hosts, one at a time"  # playbooks/site.yml
# The load's clients: enough to keep both app hosts busy, few enough that the four machines
# and Ansible still share these two cores.
LOAD_CONCURRENCY = 3
INVENTORY = ["-i", "inventory/local-cluster"]


def _address(cluster: dict, name: str) -> str:
    return next(h["address"] for h in cluster["hosts"] if h["name"] == name)


def _json(host, command: str):
    return json.loads(host.check_output(command))


@pytest.fixture(scope="module")
def load_key(hosts) -> str:
    """A key whose limits the load cannot reach (a 429 would count as a failure)."""
    tenant = _json(hosts["app1"], f"{ADMIN} tenant create 'Cluster load' --json")
    return _json(hosts["app1"], unlimited_key_command(tenant["id"], "cluster-load"))["key"]


def _served_since(host, since: float, key_prefix: str) -> int:
    """Requests with this key the app on ``host`` logged since ``since`` (Unix time)."""
    out = host.run(f"journalctl -u course-supporter.service --since @{since:.0f} -o cat --no-pager "
                   f"| grep -c '\"key_prefix\":\"{key_prefix}\"'")
    return int(out.stdout.strip() or 0)


def _wait_until_served(host, since: float, key_prefix: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _served_since(host, since, key_prefix) == 0:
        assert time.monotonic() < deadline, f"{host.backend.host} took no request within {timeout:.0f} s"
        time.sleep(1)


def _reachable(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=2):
            return True
    except OSError:
        return False


def _version_on(hosts, address: str) -> str:
    """The release an app host runs, asked from the web host (the only one it admits)."""
    return _json(hosts["web1"], f"curl -sf --max-time 5 http://{address}:8000/api/docs/openapi.json")["info"]["version"]


# --- the private network ------------------------------------------------------------------

def test_the_app_admits_only_the_web_host_and_postgresql_only_the_app_hosts_over_tls(cluster, hosts):
    app1, app2, db1 = (_address(cluster, name) for name in ("app1", "app2", "db1"))
    # From the host side (the internet, as far as the machines can tell): only the web host answers.
    assert _reachable(cluster["address"], 443)
    assert not any(_reachable(a, p) for a, p in ((app1, 8000), (app2, 8000), (db1, 5432)))
    # From the web host: both apps, not the database.
    for address in (app1, app2):
        assert hosts["web1"].run(f"curl -sf --max-time 3 http://{address}:8000/health").rc == 0
    assert hosts["web1"].run(f"timeout 3 bash -c '</dev/tcp/{db1}/5432'").rc != 0
    # From an app host: the database, over TLS only (a login without it has no pg_hba.conf entry).
    assert hosts["app1"].run(f"pg_isready -q -h {db1} -t 3").rc == 0
    plain = hosts["app1"].run(f"PGSSLMODE=disable PGCONNECT_TIMEOUT=3 psql -w -h {db1} -U course_supporter "
                              "-d course_supporter -c 'SELECT 1'")
    assert plain.rc != 0 and "no pg_hba.conf entry" in plain.stderr and "no encryption" in plain.stderr
    # Every session of the app is encrypted, from both app hosts.
    sessions = psql(hosts["db1"], "SELECT host(a.client_addr) || ' ' || s.ssl FROM pg_stat_ssl s "
                                  "JOIN pg_stat_activity a USING (pid) WHERE a.usename = 'course_supporter'").split()
    pairs = list(zip(sessions[::2], sessions[1::2]))
    assert {addr for addr, _ in pairs} == {app1, app2} and all(tls == "true" for _, tls in pairs), pairs


# --- limits and revocation across hosts -----------------------------------------------------

async def _burst(cluster: dict, api_key: str, count: int) -> collections.Counter:
    context = ssl.create_default_context(cafile=cluster["ca_cert"])
    url = f"https://{cluster['address']}/api/v1/courses?limit=1"
    headers = {"Host": cluster["domain"], "X-API-Key": api_key}
    async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=60)) as session:
        async def one() -> int:
            async with session.get(url, ssl=context, server_hostname=cluster["domain"]) as response:
                await response.read()
                return response.status
        return collections.Counter(await asyncio.gather(*(one() for _ in range(count))))


def test_a_rate_limit_and_a_revocation_hold_across_both_app_hosts(cluster, hosts):
    """A key allowed 20 requests a minute gets exactly 20 of a burst of 60 that nginx spreads
    over both app hosts; revoked on one host, it is refused by both as soon as the command returns."""
    tenant = _json(hosts["app1"], f"{ADMIN} tenant create 'Cluster limits' --json")
    key = _json(hosts["app1"], f"{ADMIN} key issue {tenant['id']} --scopes prep --rate-limit-prep 20 "
                               "--rate-limit-check 20 --json")
    since = time.time() - 1
    statuses = asyncio.run(_burst(cluster, key["key"], 60))
    assert statuses == {200: 20, 429: 40}, statuses
    prefix = key["key"][:12]
    assert _served_since(hosts["app1"], since, prefix) > 0 and _served_since(hosts["app2"], since, prefix) > 0

    fresh = _json(hosts["app1"], f"{ADMIN} key issue {tenant['id']} --scopes prep --json")
    assert asyncio.run(_burst(cluster, fresh["key"], 4)) == {200: 4}
    hosts["app2"].check_output(f"{ADMIN} key revoke {fresh['id']} --json")
    revoked_at = time.monotonic()
    statuses = asyncio.run(_burst(cluster, fresh["key"], 20))  # sent at once, spread over both hosts
    assert statuses == {401: 20}, statuses
    assert time.monotonic() - revoked_at < 1


# --- host failures --------------------------------------------------------------------------

def test_an_app_host_stopped_or_powered_off_costs_no_request_but_those_in_flight_on_it(
        cluster, hosts, machines, load_key):
    """Under a load of reads and writes through nginx: stopping app2's service (it drains) fails
    none; powering app2 off at once fails at most the requests in flight on it at that moment
    (a write nginx cannot send twice), none started after; back up, it takes traffic again."""
    prefix = load_key[:12]
    with Load(cluster, load_key, concurrency=LOAD_CONCURRENCY, request_timeout_s=30) as load:
        hosts["app2"].check_output("systemctl stop course-supporter.socket course-supporter.service")
        time.sleep(3)
        stopped_failures = list(load.failed)
        since = time.time()
        hosts["app2"].check_output("systemctl start course-supporter.socket course-supporter.service")
        _wait_until_served(hosts["app2"], since, prefix)

        state = localhost.load_state()
        before_power_off = load.requests
        powered_off = time.monotonic()
        localmachine.pull_the_plug(state, machines["app2"])
        time.sleep(6)
        served_meanwhile = load.requests - before_power_off  # by app1 alone
        localmachine.boot(state, machines["app2"])
        localmachine.wait_until_ready(state, machine=machines["app2"])
        since = time.time()
        _wait_until_served(hosts["app2"], since, prefix)
    result = load.result
    print(f"\nstop and power-off of app2: {result['requests']} requests, statuses {result['statuses']}")
    assert stopped_failures == [], stopped_failures
    assert served_meanwhile > 50
    after = [f for f in load.failures if f[0] >= powered_off]
    assert after == [], after
    assert len(load.failures) <= load.concurrency, load.failures


# --- rolling upgrades -------------------------------------------------------------------------

def _current_release(host) -> str:
    return host.check_output("readlink /opt/course-supporter/current")


def test_a_rolling_upgrade_under_load_fails_nothing_and_a_failing_release_stops_the_roll(
        cluster, hosts, load_key, tmp_path):
    """site.yml's app play (`--tags app`: the boot ran the whole playbook) upgrades one app host at
    a time under load with no failed request; a release that fails its health check on the first
    host is rolled back there and stops the roll, leaving the second on the release it had."""
    app1, app2 = _address(cluster, "app1"), _address(cluster, "app2")
    version = f"{__version__}+rolling"
    tree = changed_tree(tmp_path / "good", version)
    with Load(cluster, load_key, concurrency=LOAD_CONCURRENCY) as load:
        upgrade = ansible_playbook(*CLUSTER_SITE, "--tags", "app", "-e", f"app_source_dir={tree}", capture=True,
                                   timeout=900)
        time.sleep(2)
    print(f"\nrolling upgrade: {load.result['requests']} requests, statuses {load.result['statuses']}")
    assert upgrade.returncode == 0, upgrade.stdout[-4000:]
    assert load.result["failed"] == [], load.result
    assert _version_on(hosts, app1) == _version_on(hosts, app2) == version
    assert upgrade.stdout.count(f"PLAY [{APP_PLAY}]") == 2  # one app host at a time (serial: 1)

    releases_on_app2 = hosts["app2"].check_output("ls /opt/course-supporter/releases")
    before = _current_release(hosts["app1"]), _current_release(hosts["app2"])
    broken = changed_tree(tmp_path / "broken", f"{__version__}+broken", broken_app=True)
    with Load(cluster, load_key, concurrency=LOAD_CONCURRENCY) as load:
        failed = ansible_playbook(*CLUSTER_SITE, "--tags", "app", "-e", f"app_source_dir={broken}",
                                  "-e", "app_health_timeout_s=20", capture=True, timeout=900)
    assert failed.returncode != 0
    assert "did not become healthy within 20 s; rolled back to" in failed.stdout
    assert failed.stdout.count(f"PLAY [{APP_PLAY}]") == 1  # the roll stopped after the first host
    assert load.result["failed"] == [], load.result
    # app1 is back on the release it had; app2 never saw the broken one.
    assert (_current_release(hosts["app1"]), _current_release(hosts["app2"])) == before
    assert hosts["app2"].check_output("ls /opt/course-supporter/releases") == releases_on_app2
    assert _version_on(hosts, app1) == _version_on(hosts, app2) == version


# --- backups ----------------------------------------------------------------------------------

def _fingerprint(hosts) -> list[str]:
    return psql(hosts["db1"], FINGERPRINT_SQL, "course_supporter").splitlines()


def test_a_backup_taken_on_the_cluster_restores_the_same_data(cluster, hosts, curl):
    """Backups are taken by one app host (app1: its timer runs, app2's does not); restored, the
    database holds exactly what the backup did, and both app hosts serve it."""
    assert hosts["app1"].service("course-supporter-backup.timer").is_enabled
    assert not hosts["app2"].service("course-supporter-backup.timer").is_enabled
    key = ["-H", f"X-API-Key: {cluster['api_key']}"]
    status, kept = curl.json("/api/v1/courses", *key, "-H", "Content-Type: application/json",
                             "--data", '{"title": "In the cluster backup"}')
    assert status == 201
    before = _fingerprint(hosts)
    backup = ansible_playbook(*INVENTORY, "playbooks/backup.yml", capture=True, timeout=600)
    assert backup.returncode == 0, backup.stdout[-3000:]
    listed = s3_client().list_objects_v2(Bucket=CLUSTER_S3_BUCKET, Prefix="backups/")["Contents"]
    assert any(o["Key"].endswith(".dump") for o in listed)

    assert curl(f"/api/v1/courses/{kept['id']}", *key, "-X", "DELETE")[0] == 204
    assert _fingerprint(hosts) != before
    restore = ansible_playbook(*INVENTORY, "playbooks/restore.yml", "-e", "backup=latest", capture=True, timeout=900)
    assert restore.returncode == 0, restore.stdout[-4000:]
    assert _fingerprint(hosts) == before
    for _ in range(4):  # both app hosts, by nginx's round robin
        assert curl.json(f"/api/v1/courses/{kept['id']}", *key)[0] == 200
