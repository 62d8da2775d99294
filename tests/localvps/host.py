"""Host-side plumbing: commands, the state file, background processes, the machines' networks."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from .layout import (CLUSTER_BRIDGE, CLUSTER_HOST_ADDRESS, CLUSTER_SUBNET, HOST_ADDRESS, HOST_IF, LOG_DIR, NAME,
                     STATE_FILE, SUBNET, VPS_ADDRESS)

NAT_TABLE = f"{NAME}_nat"


def run(*cmd: str, check: bool = True, capture: bool = False, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, text=True,
                          capture_output=capture, **kwargs)


def log(message: str) -> None:
    print(f"[vps] {message}", flush=True)


# -- state -----------------------------------------------------------------

@contextlib.contextmanager
def locked():
    """One command at a time changes the state file and the host's networks (`make vps` and
    `make vps-cluster` may run at once: the test session boots the cluster in the background)."""
    STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(STATE_FILE.with_name("lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def load_state() -> dict:
    try:
        return json.loads(STATE_FILE.read_text())
    except FileNotFoundError:
        return {"processes": {}}


def save_state(state: dict) -> None:
    STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
    tmp = STATE_FILE.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(STATE_FILE)


# -- background processes, tracked by PID ------------------------------------

def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except (FileNotFoundError, ProcessLookupError):
        return []


def is_running(entry: dict | None) -> bool:
    """The recorded process is alive and is still the same program (PIDs get reused)."""
    return bool(entry) and _cmdline(entry["pid"]) == entry["cmd"]


def spawn(state: dict, name: str, cmd: list[str], *, env: dict | None = None) -> int:
    """Start ``cmd`` detached from this process (it outlives `make vps`) and record it."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    with open(LOG_DIR / f"{name}.log", "ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})}, start_new_session=True)
    # Record the command line as the kernel reports it, to recognise the process later.
    for _ in range(50):
        cmdline = _cmdline(proc.pid)
        if cmdline:
            break
        time.sleep(0.02)
    state["processes"][name] = {"pid": proc.pid, "cmd": cmdline}
    save_state(state)
    return proc.pid


def stop(state: dict, name: str, timeout: float = 30.0) -> None:
    entry = state["processes"].get(name)
    if is_running(entry):
        pid = entry["pid"]
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _cmdline(pid):
            _reap(pid)
            time.sleep(0.1)
        if _cmdline(pid):
            os.kill(pid, signal.SIGKILL)
    state["processes"].pop(name, None)
    save_state(state)


def kill(pid: int, timeout: float = 30.0) -> None:
    """SIGKILL, and wait until the process is gone."""
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _cmdline(pid):
        _reap(pid)
        time.sleep(0.05)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


# -- prerequisites nspawn has on these machines ------------------------------

def ensure_inaccessible_nodes() -> None:
    """systemd inside the container bind-mounts these to hide paths; the host
    lacks them when its own init is not systemd."""
    base = Path("/run/systemd/inaccessible")
    base.mkdir(parents=True, exist_ok=True)
    nodes = {"reg": lambda p: p.touch(), "dir": lambda p: p.mkdir(),
             "chr": lambda p: os.mknod(p, 0o000 | 0o020000, os.makedev(0, 0)),
             "blk": lambda p: os.mknod(p, 0o000 | 0o060000, os.makedev(0, 0)),
             "fifo": lambda p: os.mkfifo(p), "sock": _make_socket}
    for name, make in nodes.items():
        path = base / name
        if not path.exists():
            make(path)
        path.chmod(0)


def _make_socket(path: Path) -> None:
    import socket
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()


# -- the VPS's network: a namespace, a veth pair, NAT to the outside ---------

def netns_exists() -> bool:
    return Path(f"/run/netns/{NAME}").exists()


def network_up(state: dict) -> None:
    if not netns_exists():
        log(f"network: namespace {NAME}, {HOST_IF} {HOST_ADDRESS} <-> {VPS_ADDRESS}")
        run("ip", "netns", "add", NAME)
        run("ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", "eth0", "netns", NAME)
        run("ip", "addr", "add", f"{HOST_ADDRESS}/24", "dev", HOST_IF)
        run("ip", "link", "set", HOST_IF, "up")
        run("ip", "-n", NAME, "link", "set", "lo", "up")
        run("ip", "-n", NAME, "addr", "add", f"{VPS_ADDRESS}/24", "dev", "eth0")
        run("ip", "-n", NAME, "link", "set", "eth0", "up")
        run("ip", "-n", NAME, "route", "add", "default", "via", HOST_ADDRESS)
        state["network"] = True
        save_state(state)
    if "ip_forward" not in state:
        state["ip_forward"] = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
        save_state(state)
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1")
    masquerade(NAT_TABLE, SUBNET, HOST_IF)


def masquerade(table: str, subnet: str, interface: str) -> None:
    """An nftables table of ours: the machines' traffic from ``subnet`` leaves through the host's address."""
    if run("nft", "list", "table", "ip", table, check=False, capture=True).returncode != 0:
        run("nft", "-f", "-", input=f"""
table ip {table} {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {subnet} oifname != "{interface}" masquerade
    }}
}}
""")


def network_down(state: dict) -> None:
    if run("nft", "list", "table", "ip", NAT_TABLE, check=False, capture=True).returncode == 0:
        run("nft", "delete", "table", "ip", NAT_TABLE)
    if state.get("network") and netns_exists():
        run("ip", "link", "del", HOST_IF, check=False)
        run("ip", "netns", "del", NAME)
    state.pop("network", None)
    if "ip_forward" in state:
        Path("/proc/sys/net/ipv4/ip_forward").write_text(state.pop("ip_forward"))
    save_state(state)


# -- the local cluster's network: a bridge, one namespace and veth pair per machine ---------

CLUSTER_NAT_TABLE = "cscl_nat"


def veth_name(machine) -> str:
    """The host end of a cluster machine's veth pair (on the bridge)."""
    return f"cscl-{machine.alias}"


def cluster_network_up(state: dict, machines) -> None:
    """Every machine on the bridge at its address, routed (and NATed to the outside) through
    the host; the host-side servers are the VPS's (network_up puts their address on the host)."""
    if run("ip", "link", "show", CLUSTER_BRIDGE, check=False, capture=True).returncode != 0:
        log(f"network: bridge {CLUSTER_BRIDGE} {CLUSTER_HOST_ADDRESS} for {CLUSTER_SUBNET}")
        run("ip", "link", "add", CLUSTER_BRIDGE, "type", "bridge")
        run("ip", "addr", "add", f"{CLUSTER_HOST_ADDRESS}/24", "dev", CLUSTER_BRIDGE)
        run("ip", "link", "set", CLUSTER_BRIDGE, "up")
        state["cluster_network"] = True
        save_state(state)
    for machine in machines:
        if Path(f"/run/netns/{machine.name}").exists():
            continue
        run("ip", "netns", "add", machine.name)
        run("ip", "link", "add", veth_name(machine), "type", "veth", "peer", "name", "eth0", "netns", machine.name)
        run("ip", "link", "set", veth_name(machine), "master", CLUSTER_BRIDGE)
        run("ip", "link", "set", veth_name(machine), "up")
        run("ip", "-n", machine.name, "link", "set", "lo", "up")
        run("ip", "-n", machine.name, "addr", "add", f"{machine.address}/24", "dev", "eth0")
        run("ip", "-n", machine.name, "link", "set", "eth0", "up")
        run("ip", "-n", machine.name, "route", "add", "default", "via", CLUSTER_HOST_ADDRESS)
    masquerade(CLUSTER_NAT_TABLE, CLUSTER_SUBNET, CLUSTER_BRIDGE)


def cluster_network_down(state: dict, machines) -> None:
    if run("nft", "list", "table", "ip", CLUSTER_NAT_TABLE, check=False, capture=True).returncode == 0:
        run("nft", "delete", "table", "ip", CLUSTER_NAT_TABLE)
    for machine in machines:
        if Path(f"/run/netns/{machine.name}").exists():
            run("ip", "link", "del", veth_name(machine), check=False)
            run("ip", "netns", "del", machine.name)
    if state.get("cluster_network"):
        run("ip", "link", "del", CLUSTER_BRIDGE, check=False)
    state.pop("cluster_network", None)
    save_state(state)


def set_link(machine, up: bool) -> None:
    """Plug or unplug a cluster machine's cable (the host end of its veth pair)."""
    run("ip", "link", "set", veth_name(machine), "up" if up else "down")
