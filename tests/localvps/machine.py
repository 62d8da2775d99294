"""The VPS itself: a bookworm root filesystem booted with systemd-nspawn, reached over SSH."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from . import host
from .layout import (CACHE_DIR, KNOWN_HOSTS, MACHINE_DIR, NAME, ROOTFS_PACKAGES, SSH_CONFIG, SSH_KEY, SUITE,
                     VPS_ADDRESS)

ROOTFS_CACHE = CACHE_DIR / SUITE
ROOTFS = MACHINE_DIR / "rootfs"


def ssh_command() -> list[str]:
    """A complete ssh command line: root on the VPS, no prompt, its host key pinned
    (the options live in .vps/ssh_config, which testinfra uses too)."""
    return ["ssh", "-F", str(SSH_CONFIG), "local-vps"]


def ssh(command: str, *, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*ssh_command(), command], check=check, text=True, capture_output=True,
                          timeout=timeout)


def ensure_ssh_key() -> None:
    if not SSH_KEY.exists():
        SSH_KEY.parent.mkdir(parents=True, exist_ok=True)
        host.run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "local-vps-controller", "-f", str(SSH_KEY))
    SSH_CONFIG.write_text(f"""Host local-vps {VPS_ADDRESS}
    HostName {VPS_ADDRESS}
    User root
    IdentityFile {SSH_KEY}
    IdentitiesOnly yes
    BatchMode yes
    UserKnownHostsFile {KNOWN_HOSTS}
    StrictHostKeyChecking yes
    ConnectTimeout 5
""")


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


def ensure_machine_rootfs() -> None:
    """This VPS's own copy of the cached image, with its identity: host keys, our SSH key, DNS.
    Root's alone on the host: without user namespaces the VPS's group ids are other groups
    here, and would let those read the VPS's secrets (found by probing)."""
    MACHINE_DIR.mkdir(parents=True, exist_ok=True)
    MACHINE_DIR.chmod(0o700)
    if ROOTFS.exists():
        return
    host.log("creating the VPS's root filesystem")
    tmp = MACHINE_DIR / "rootfs.tmp"
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
    (tmp / "etc/hostname").write_text(f"{NAME}\n")
    (tmp / "etc/hosts").write_text(f"127.0.0.1\tlocalhost\n127.0.1.1\t{NAME}\n::1\tlocalhost ip6-localhost\n")
    KNOWN_HOSTS.write_text("".join(f"{VPS_ADDRESS} {' '.join(p.read_text().split()[:2])}\n"
                                   for p in sorted((tmp / "etc/ssh").glob("ssh_host_*_key.pub"))))
    tmp.rename(ROOTFS)


def boot(state: dict) -> None:
    if host.is_running(state["processes"].get("nspawn")):
        return
    host.log("booting the VPS (systemd-nspawn -b)")
    host.spawn(state, "nspawn", [
        "systemd-nspawn", "--quiet", "-D", str(ROOTFS), "-M", NAME, "--register=no", "--keep-unit",
        f"--network-namespace-path=/run/netns/{NAME}", "--capability=CAP_NET_ADMIN",
        "--console=passive", "-b",
    ])


def wait_until_ready(state: dict, timeout: float = 120) -> None:
    """sshd answers and systemd has finished booting."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not host.is_running(state["processes"].get("nspawn")):
            raise RuntimeError("the VPS stopped while booting: see .vps/logs/nspawn.log")
        try:
            with socket.create_connection((VPS_ADDRESS, 22), timeout=1):
                pass
        except OSError:
            time.sleep(0.3)
            continue
        result = ssh("systemctl is-system-running --wait", check=False, timeout=max(5, deadline - time.monotonic()))
        if result.stdout.strip() in ("running", "degraded"):
            if result.stdout.strip() == "degraded":
                failed = ssh("systemctl --failed --no-legend --plain", check=False).stdout.strip()
                host.log(f"the VPS booted degraded; failed units: {failed}")
            return
        time.sleep(0.5)
    raise TimeoutError(f"the VPS did not become reachable over SSH within {timeout:.0f}s")


def shutdown(state: dict) -> None:
    host.stop(state, "nspawn", timeout=60)


def remove() -> None:
    shutil.rmtree(MACHINE_DIR, ignore_errors=True)
