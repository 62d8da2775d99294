"""The machines: bookworm root filesystems booted with systemd-nspawn, each in its own network
namespace, reached over SSH. ``VPS`` is the local VPS; ``CLUSTER`` the local cluster's four."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from . import host
from .layout import (CACHE_DIR, CLUSTER_DIR, CLUSTER_HOSTS, CLUSTER_KNOWN_HOSTS, CLUSTER_SSH_CONFIG, KNOWN_HOSTS,
                     MACHINE_DIR, NAME, ROOTFS_PACKAGES, SSH_CONFIG, SSH_KEY, SUITE, VPS_ADDRESS)

ROOTFS_CACHE = CACHE_DIR / SUITE


@dataclass(frozen=True)
class Machine:
    name: str              # systemd-nspawn's machine name, its network namespace, its hostname
    alias: str             # its Host in the ssh config (and its inventory name)
    address: str
    directory: Path        # holds its root filesystem
    ssh_config: Path
    known_hosts: Path
    groups: tuple[str, ...] = ()

    @property
    def rootfs(self) -> Path:
        return self.directory / "rootfs"

    @property
    def process(self) -> str:
        """Its systemd-nspawn's name in the state file."""
        return "nspawn" if self.name == NAME else f"nspawn-{self.alias}"


VPS = Machine(NAME, "local-vps", VPS_ADDRESS, MACHINE_DIR, SSH_CONFIG, KNOWN_HOSTS)
CLUSTER = tuple(Machine(f"cs-{alias}", alias, address, CLUSTER_DIR / alias, CLUSTER_SSH_CONFIG, CLUSTER_KNOWN_HOSTS,
                        groups) for alias, groups, address in CLUSTER_HOSTS)


def ssh_command(machine: Machine = VPS) -> list[str]:
    """A complete ssh command line: root on the machine, no prompt, its host key pinned
    (the options live in its ssh config, which testinfra uses too)."""
    return ["ssh", "-F", str(machine.ssh_config), machine.alias]


def ssh(command: str, *, check: bool = True, timeout: float = 120, machine: Machine = VPS) -> subprocess.CompletedProcess:
    return subprocess.run([*ssh_command(machine), command], check=check, text=True, capture_output=True,
                          timeout=timeout)


def ensure_ssh_key() -> None:
    if not SSH_KEY.exists():
        SSH_KEY.parent.mkdir(parents=True, exist_ok=True)
        host.run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "local-vps-controller", "-f", str(SSH_KEY))
    write_ssh_config([VPS])


def write_ssh_config(machines: list[Machine] | tuple[Machine, ...]) -> None:
    """One Host entry per machine (all of them in the same ssh config file)."""
    config = machines[0].ssh_config
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text("".join(f"""Host {m.alias} {m.address}
    HostName {m.address}
    User root
    IdentityFile {SSH_KEY}
    IdentitiesOnly yes
    BatchMode yes
    UserKnownHostsFile {m.known_hosts}
    StrictHostKeyChecking yes
    ConnectTimeout 5
""" for m in machines))


def ensure_rootfs_cache() -> None:
    """Debian bookworm, built once with mmdebstrap and kept under .vps/cache/."""
    if ROOTFS_CACHE.exists():
        return
    tmp = ROOTFS_CACHE.with_name(SUITE + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    host.log(f"building the {SUITE} root filesystem (once; cached in {ROOTFS_CACHE})")
    host.run("mmdebstrap", "--quiet", "--variant=important", f"--include={','.join(ROOTFS_PACKAGES)}",
             SUITE, str(tmp))
    tmp.rename(ROOTFS_CACHE)


def ensure_machine_rootfs(machine: Machine = VPS) -> None:
    """The machine's own copy of the cached image, with its identity: host keys, our SSH key, DNS.
    Root's alone on the host: without user namespaces the machine's group ids are other groups
    here, and would let those read its secrets (found by probing)."""
    machine.directory.mkdir(parents=True, exist_ok=True)
    machine.directory.chmod(0o700)
    if machine.rootfs.exists():
        return
    host.log(f"creating the root filesystem of {machine.alias}")
    tmp = machine.directory / "rootfs.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    host.run("cp", "-a", "--reflink=auto", str(ROOTFS_CACHE), str(tmp))
    for old in (tmp / "etc/ssh").glob("ssh_host_*"):
        old.unlink()
    host.run("ssh-keygen", "-q", "-A", "-f", str(tmp))
    ssh_dir = tmp / "root/.ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text(SSH_KEY.with_suffix(".pub").read_text())
    (ssh_dir / "authorized_keys").chmod(0o600)
    resolv = tmp / "etc/resolv.conf"
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    resolv.write_text(Path("/etc/resolv.conf").read_text())
    (tmp / "etc/hostname").write_text(f"{machine.name}\n")
    (tmp / "etc/hosts").write_text(
        f"127.0.0.1\tlocalhost\n127.0.1.1\t{machine.name}\n::1\tlocalhost ip6-localhost\n")
    # Its host keys replace whatever the known hosts file said about its address.
    known = machine.known_hosts.read_text().splitlines(keepends=True) if machine.known_hosts.exists() else []
    machine.known_hosts.write_text("".join(line for line in known if line.split(" ", 1)[0] != machine.address)
                                   + "".join(f"{machine.address} {' '.join(p.read_text().split()[:2])}\n"
                                             for p in sorted((tmp / "etc/ssh").glob("ssh_host_*_key.pub"))))
    tmp.rename(machine.rootfs)


def boot(state: dict, machine: Machine = VPS) -> None:
    if host.is_running(state["processes"].get(machine.process)):
        return
    host.log(f"booting {machine.alias} (systemd-nspawn -b)")
    host.spawn(state, machine.process, [
        "systemd-nspawn", "--quiet", "-D", str(machine.rootfs), "-M", machine.name, "--register=no", "--keep-unit",
        f"--network-namespace-path=/run/netns/{machine.name}", "--capability=CAP_NET_ADMIN",
        "--console=passive", "-b",
    ])


def wait_until_ready(state: dict, timeout: float = 120, machine: Machine = VPS) -> None:
    """sshd answers and systemd has finished booting."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not host.is_running(state["processes"].get(machine.process)):
            raise RuntimeError(f"{machine.alias} stopped while booting: see .vps/logs/{machine.process}.log")
        try:
            with socket.create_connection((machine.address, 22), timeout=1):
                pass
        except OSError:
            time.sleep(0.3)
            continue
        result = ssh("systemctl is-system-running --wait", check=False, timeout=max(5, deadline - time.monotonic()),
                     machine=machine)
        if result.stdout.strip() in ("running", "degraded"):
            if result.stdout.strip() == "degraded":
                failed = ssh("systemctl --failed --no-legend --plain", check=False, machine=machine).stdout.strip()
                host.log(f"{machine.alias} booted degraded; failed units: {failed}")
            return
        time.sleep(0.5)
    raise TimeoutError(f"{machine.alias} did not become reachable over SSH within {timeout:.0f}s")


def shutdown(state: dict, machine: Machine = VPS) -> None:
    host.stop(state, machine.process, timeout=60)


def remove(machine: Machine = VPS) -> None:
    shutil.rmtree(machine.directory, ignore_errors=True)


def pull_the_plug(state: dict, machine: Machine) -> None:
    """Power the machine off at once: SIGKILL to its systemd-nspawn, which takes every process
    in it down with it (nothing shuts down in order). Its network namespace stays: the kernel
    answers for its address, resetting the connections its processes held."""
    entry = state["processes"].get(machine.process)
    if host.is_running(entry):
        host.kill(entry["pid"])
    state["processes"].pop(machine.process, None)
    host.save_state(state)
