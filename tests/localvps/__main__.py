"""``python -m tests.localvps up|cluster|upgrade|backup|restore|down|status`` (``make vps``,
``make vps-cluster``, ``make vps-upgrade``, ``make vps-backup``, ``make vps-restore``, ``make vps-down``)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time

from . import host, machine, servers
from .layout import (CLUSTER_DEMO_KEY_FILE, CLUSTER_DIR, CLUSTER_DOMAIN, CLUSTER_JSON, CLUSTER_S3_BUCKET,
                     DEMO_KEY_FILE, DOMAIN, NAME, SITE_CA, STATE_DIR, TELEGRAM_LOG, VPS_ADDRESS, VPS_JSON)
from .machine import CLUSTER, VPS, Machine
from .playbook import CLUSTER_SITE, SITE, ansible_playbook


def demo_key(on: Machine = VPS, saved_in=DEMO_KEY_FILE) -> dict:
    """A prep+check key of a demo tenant, issued once (on an app host) and re-issued if the
    database lost it."""
    if saved_in.exists():
        saved = json.loads(saved_in.read_text())
        listed = machine.ssh(f"course-supporter-admin key list {shlex.quote(saved['tenant_id'])} --json",
                             check=False, machine=on)
        if listed.returncode == 0 and any(k["id"] == saved["id"] and k.get("is_active", True)
                                          for k in json.loads(listed.stdout)):
            return saved
    tenant = json.loads(machine.ssh("course-supporter-admin tenant create 'Local demo' --json", machine=on).stdout)
    key = json.loads(machine.ssh(
        f"course-supporter-admin key issue {tenant['id']} --scopes prep,check --label 'make vps demo' --json",
        machine=on).stdout)
    saved_in.write_text(json.dumps(key))
    saved_in.chmod(0o600)
    return key


def _write_description(path, domain: str, site: Machine, api_key: str, **more) -> dict:
    """vps.json or cluster.json: how to reach the site (through ``site``) and its machines."""
    description = {
        "url": f"https://{domain}",
        "domain": domain,
        "address": site.address,
        "ca_cert": str(SITE_CA),
        "api_key": api_key,
        "ssh": shlex.join(machine.ssh_command(site)),
        "telegram_log": str(TELEGRAM_LOG),
        **more,
    }
    path.write_text(json.dumps(description, indent=2) + "\n")
    path.chmod(0o600)  # it holds the demo key
    return description


def write_vps_json(api_key: str) -> dict:
    return _write_description(VPS_JSON, DOMAIN, VPS, api_key)


def _remove(*paths) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _first_in(group: str) -> Machine:
    return next(m for m in CLUSTER if group in m.groups)


def boot() -> dict:
    """Everything but the playbook: host tooling, servers, network, the booted machine."""
    with host.locked():
        return _boot()


def _host_side() -> dict:
    """What the VPS and the cluster both need on the host: tooling, the image, the VPS's network
    (the servers' address) and the servers; the state."""
    state = host.load_state()
    if host.netns_exists() and not state.get("network"):
        raise SystemExit(f"error: a network namespace {NAME!r} exists that this checkout did not create "
                         f"(a local VPS from another checkout?). Run `make vps-down` there first.")
    host.ensure_inaccessible_nodes()
    machine.ensure_ssh_key()
    machine.ensure_rootfs_cache()
    host.network_up(state)
    servers.start_all(state)
    servers.record_site_ca()  # before the playbook: the machines trust these roots
    return state


def _boot() -> dict:
    state = _host_side()
    machine.ensure_machine_rootfs()
    machine.boot(state)
    machine.wait_until_ready(state)
    return state


def up() -> int:
    started = time.monotonic()
    boot()
    host.log("provisioning: ansible-playbook " + " ".join(SITE))
    if ansible_playbook(*SITE).returncode != 0:
        host.log("the playbook failed (see above); the VPS stays up: fix and run `make vps` again")
        return 1
    description = write_vps_json(demo_key()["key"])
    elapsed = time.monotonic() - started
    url, key = description["url"], description["api_key"]
    curl = f"curl --resolve {DOMAIN}:443:{VPS_ADDRESS} --cacert {SITE_CA}"
    print(f"""
Course Supporter local VPS is up ({elapsed:.0f} s).
  URL:         {url}   (resolves to {VPS_ADDRESS} with --resolve; CA: {SITE_CA})
  Swagger UI:  {url}/docs
  Netdata:     {url}/netdata/   (user: admin, password in .vps/secrets/netdata_password)
  Demo key:    {key}
  Try:         {curl} -H 'X-API-Key: {key}' {url}/api/v1/courses
  SSH:         {description['ssh']}
  Details:     {VPS_JSON}; stop it all with `make vps-down`.
""", flush=True)
    return 0


def cluster_boot() -> dict:
    """The local cluster's machines booted on their bridge, with the VPS's host-side servers."""
    with host.locked():
        return _cluster_boot()


def _cluster_boot() -> dict:
    state = _host_side()
    servers.ensure_bucket(CLUSTER_S3_BUCKET)
    servers.point_name(CLUSTER_DOMAIN, _first_in("web").address)
    host.cluster_network_up(state, CLUSTER)
    machine.write_ssh_config(CLUSTER)
    for m in CLUSTER:
        machine.ensure_machine_rootfs(m)
        machine.boot(state, m)
    for m in CLUSTER:
        machine.wait_until_ready(state, machine=m)
    return state


def write_cluster_json(api_key: str) -> dict:
    return _write_description(CLUSTER_JSON, CLUSTER_DOMAIN, _first_in("web"), api_key, hosts=[
        {"name": m.alias, "groups": list(m.groups), "address": m.address, "ssh": shlex.join(machine.ssh_command(m))}
        for m in CLUSTER])


def cluster_up(extra_args: list[str] = ()) -> int:
    started = time.monotonic()
    cluster_boot()
    host.log("provisioning: ansible-playbook " + " ".join([*CLUSTER_SITE, *extra_args]))
    if ansible_playbook(*CLUSTER_SITE, *extra_args).returncode != 0:
        host.log("the playbook failed (see above); the cluster stays up: fix and run `make vps-cluster` again")
        return 1
    description = write_cluster_json(demo_key(_first_in("app"), CLUSTER_DEMO_KEY_FILE)["key"])
    elapsed = time.monotonic() - started
    url, key = description["url"], description["api_key"]
    curl = f"curl --resolve {CLUSTER_DOMAIN}:443:{description['address']} --cacert {SITE_CA}"
    hosts = "\n".join(f"    {h['name']:5} {','.join(h['groups']):4} {h['address']:11} {h['ssh']}"
                      for h in description["hosts"])
    print(f"""
Course Supporter local cluster is up ({elapsed:.0f} s).
  URL:         {url}   (the web host, {description['address']}, with --resolve; CA: {SITE_CA})
  Swagger UI:  {url}/docs
  Demo key:    {key}
  Try:         {curl} -H 'X-API-Key: {key}' {url}/api/v1/courses
  Hosts:
{hosts}
  Details:     {CLUSTER_JSON}; stop it all with `make vps-down`.
""", flush=True)
    return 0


def upgrade(source: str | None, extra_args: list[str]) -> int:
    """Re-apply the playbook to the running VPS: a new release goes live with no
    request dropped (socket activation), or the old one stays if it fails."""
    if not _running():
        return 1
    extra = (["-e", f"app_source_dir={os.path.abspath(source)}"] if source else []) + extra_args
    started = time.monotonic()
    host.log("upgrading: ansible-playbook " + " ".join([*SITE, *extra]))
    code = ansible_playbook(*SITE, *extra).returncode
    host.log(f"upgrade {'failed' if code else 'done'} in {time.monotonic() - started:.0f} s")
    return 1 if code else 0


def _running() -> bool:
    if VPS_JSON.exists() and machine.ssh("true", check=False, timeout=30).returncode == 0:
        return True
    print("error: no local VPS is running: `make vps` first", file=sys.stderr)
    return False


def backup() -> int:
    """Take a database backup on the running VPS now (playbooks/backup.yml)."""
    if not _running():
        return 1
    return 1 if ansible_playbook("-i", "inventory/local", "playbooks/backup.yml").returncode else 0


def restore(name: str | None) -> int:
    """Restore the running VPS's database from a backup in its bucket (playbooks/restore.yml)."""
    if not name:
        print("error: say which backup: `make vps-restore BACKUP=latest` (or BACKUP=backups/…dump)",
              file=sys.stderr)
        return 2
    if not _running():
        return 1
    started = time.monotonic()
    code = ansible_playbook("-i", "inventory/local", "playbooks/restore.yml", "-e", f"backup={name}").returncode
    host.log(f"restore {'failed' if code else 'done'} in {time.monotonic() - started:.0f} s")
    return 1 if code else 0


def down() -> int:
    with host.locked():
        return _down()


def _down() -> int:
    state = host.load_state()
    machine.shutdown(state)
    for m in CLUSTER:
        machine.shutdown(state, m)
    servers.stop_all(state)
    host.cluster_network_down(state, CLUSTER)
    host.network_down(state)
    machine.remove()
    _remove(VPS_JSON, CLUSTER_JSON, CLUSTER_DIR, DEMO_KEY_FILE, SITE_CA, TELEGRAM_LOG, STATE_DIR / "secrets",
            STATE_DIR / "state.json")
    host.log("the local VPS, the local cluster and their host-side servers are gone "
             "(the image cache in .vps/cache stays)")
    return 0


def cluster_down() -> int:
    """The local cluster alone; the host-side servers stay while the local VPS runs."""
    with host.locked():
        return _cluster_down()


def _cluster_down() -> int:
    state = host.load_state()
    for m in CLUSTER:
        machine.shutdown(state, m)
        machine.remove(m)
    host.cluster_network_down(state, CLUSTER)
    _remove(CLUSTER_JSON, CLUSTER_DIR)
    if not host.is_running(state["processes"].get(VPS.process)):
        servers.stop_all(state)
        host.network_down(state)
    host.log("the local cluster is gone")
    return 0


def status() -> int:
    state = host.load_state()
    for name, entry in sorted(state.get("processes", {}).items()):
        print(f"{name:14} pid {entry['pid']:>7}  {'running' if host.is_running(entry) else 'gone'}")
    print(f"network        {'up' if host.netns_exists() else 'down'}")
    print(f"cluster net    {'up' if state.get('cluster_network') else 'down'}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.localvps", description="The local VPS.")
    parser.add_argument("command", choices=["up", "cluster", "cluster-down", "upgrade", "backup", "restore", "down",
                                            "status", "boot"])
    parser.add_argument("--source", help="upgrade: deploy this tree instead of the checkout")
    parser.add_argument("--backup", help='restore: "latest" or an object key under backups/')
    # upgrade, cluster: after "--", further ansible-playbook arguments. Split here: argparse
    # drops the "--" in some positions and keeps it in others.
    argv = sys.argv[1:]
    own, rest = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = parser.parse_args(own)
    if rest and args.command not in ("upgrade", "cluster"):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    command = args.command
    if os.geteuid() != 0:
        print("error: the local VPS needs root (network namespaces, systemd-nspawn)", file=sys.stderr)
        return 1
    if command == "boot":
        boot()
        return 0
    if command == "upgrade":
        return upgrade(args.source, rest)
    if command == "cluster":
        return cluster_up(rest)
    if command == "restore":
        return restore(args.backup)
    return {"up": up, "backup": backup, "down": down, "cluster-down": cluster_down, "status": status}[command]()


if __name__ == "__main__":
    sys.exit(main())
