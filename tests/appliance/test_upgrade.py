"""Day-2 operations on the local VPS: deploys and reloads under load drop no request;
a deploy that cannot migrate leaves the old release serving.

Each check deploys a copy of the checkout with a changed version (what the OpenAPI
document reports) through `make vps-upgrade SOURCE=<copy>`, while the load client
hammers the API over HTTPS; the last one deploys the checkout itself again. The first
deploy re-applies the whole playbook; the others are app-only upgrades (`--tags app`,
what an operator runs to roll out a release), the failures among them the app role's."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from app import __version__
from tests.localvps.layout import ROOT
from tests.support.keys import unlimited_key_command

from tests.support.load import Load
from tests.support.releases import changed_tree

MIN_REQUESTS = 200


@pytest.fixture(scope="module")
def load_key(host) -> str:
    """A key whose limits the load cannot reach (a 429 would count as a failure)."""
    tenant = json.loads(host.check_output("course-supporter-admin tenant create 'Load test' --json"))
    key = json.loads(host.check_output(unlimited_key_command(tenant["id"], "load")))
    return key["key"]


def live_version(curl) -> str:
    status, spec = curl.json("/api/docs/openapi.json")
    assert status == 200
    return spec["info"]["version"]


def make_upgrade(source: Path | None = None, args: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-s", "vps-upgrade", *([f"SOURCE={source}"] if source else []), f"ARGS={args}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)


def report(what: str, load: Load, seconds: float) -> None:
    result = load.result
    print(f"\n{what}: {result['requests']} requests in {seconds:.0f} s, {len(result['failed'])} failed, "
          f"statuses {result['statuses']}")


def test_a_deploy_under_load_drops_no_request_and_goes_live(vps, curl, load_key, tmp_path):
    version = f"{__version__}+upgrade.{uuid.uuid4().hex[:8]}"
    tree = changed_tree(tmp_path, version)
    started = time.monotonic()
    with Load(vps, load_key) as load:
        upgrade = make_upgrade(tree)
        time.sleep(2)  # still hammering the new release
    report("deploy", load, time.monotonic() - started)
    assert upgrade.returncode == 0, upgrade.stdout[-4000:] + upgrade.stderr[-2000:]
    assert load.result["failed"] == [], load.result
    assert load.result["requests"] >= MIN_REQUESTS
    assert live_version(curl) == version


def test_a_reload_under_load_drops_no_request(host, vps, load_key):
    before = host.check_output("pgrep -f 'gunicorn.*create_app' | sort | tr '\\n' ' '")
    started = time.monotonic()
    with Load(vps, load_key) as load:
        host.run_expect([0], "systemctl reload course-supporter")
        time.sleep(8)  # new workers up, old ones gone
    report("reload", load, time.monotonic() - started)
    assert load.result["failed"] == [], load.result
    assert load.result["requests"] >= MIN_REQUESTS
    assert host.check_output("pgrep -f 'gunicorn.*create_app' | sort | tr '\\n' ' '") != before


def test_a_deploy_whose_migration_fails_leaves_the_old_release_serving(vps, curl, load_key, tmp_path):
    before = live_version(curl)
    tree = changed_tree(tmp_path, f"{__version__}+doomed", failing_migration=True)
    started = time.monotonic()
    with Load(vps, load_key) as load:
        upgrade = make_upgrade(tree, "--tags app")
    report("failed deploy", load, time.monotonic() - started)
    assert upgrade.returncode != 0
    assert "no_such_table" in upgrade.stdout
    assert load.result["failed"] == [], load.result
    assert live_version(curl) == before


def test_a_release_that_does_not_become_healthy_is_rolled_back(host, vps, curl, load_key, tmp_path):
    before = live_version(curl)
    tree = changed_tree(tmp_path, f"{__version__}+broken", broken_app=True)
    started = time.monotonic()
    with Load(vps, load_key) as load:
        upgrade = make_upgrade(tree, "--tags app -e app_health_timeout_s=20")
    report("unhealthy deploy", load, time.monotonic() - started)
    assert upgrade.returncode != 0
    assert "did not become healthy within 20 s; rolled back to" in upgrade.stdout
    assert load.result["failed"] == [], load.result  # requests waited in the socket's backlog meanwhile
    assert live_version(curl) == before
    assert host.service("course-supporter").is_running


def test_deploying_the_checkout_again_under_load(vps, curl, load_key):
    started = time.monotonic()
    with Load(vps, load_key) as load:
        upgrade = make_upgrade(args="--tags app")
        time.sleep(2)
    report("deploy of the checkout", load, time.monotonic() - started)
    assert upgrade.returncode == 0, upgrade.stdout[-4000:]
    assert load.result["failed"] == [], load.result
    assert live_version(curl) == __version__
