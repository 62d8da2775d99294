"""`make check INVENTORY=<dir>`: the read-only checks of a deployment (tests/appliance/checks/),
against the hosts and domain an Ansible inventory names.

``python -m tests.support.deployment INVENTORY [ansible options]`` asks Ansible for what the
inventory says (with the vault password when asked: ``--ask-vault-pass``, or
``ANSIBLE_VAULT_PASSWORD_FILE``), then runs the checks with pytest. Nothing on the hosts is
changed: the checks only read, over SSH and HTTPS.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import testinfra

ROOT = Path(__file__).resolve().parents[2]
CHECKS = "tests/appliance/checks"
# Where make check hands the checks their target (JSON of a Target).
TARGET_ENV = "COURSE_SUPPORTER_CHECK_TARGET"
GROUP = "course_supporter"

# What each host's connection and the site are, as the inventory's variables say (rendered by
# Ansible itself: templates, group_vars and the vault all apply).
_FACTS = ("{{ {'address': ansible_host | default(inventory_hostname), 'user': ansible_user | default(''), "
          "'port': ansible_port | default(22) | int, 'identity_file': ansible_ssh_private_key_file | default(''), "
          "'ssh_args': [ansible_ssh_common_args | default(''), ansible_ssh_extra_args | default('')] | join(' '), "
          "'domain': nginx_server_name | default(course_supporter_domain), "
          "'ca_file': course_supporter_ca_file | default('')} | to_json }}")


@dataclasses.dataclass(frozen=True)
class TargetHost:
    name: str
    address: str
    user: str
    port: int
    identity_file: str
    ssh_args: str

    def testinfra(self):
        """testinfra over SSH, with sudo unless the inventory logs in as root."""
        spec = f"ssh://{self.user + '@' if self.user else ''}{self.address}:{self.port}"
        return testinfra.get_host(spec, ssh_identity_file=self.identity_file or None,
                                  ssh_extra_args=self.ssh_args.strip() or None, sudo=self.user not in ("", "root"))


@dataclasses.dataclass(frozen=True)
class Target:
    inventory: str
    domain: str
    ca_file: str | None  # None: the system's trusted CAs
    hosts: tuple[TargetHost, ...]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Target":
        data = json.loads(text)
        return cls(data["inventory"], data["domain"], data["ca_file"],
                   tuple(TargetHost(**h) for h in data["hosts"]))


def resolve(inventory: str, ansible_args: tuple[str, ...] = ()) -> Target:
    """The inventory's hosts of the appliance and its site, as Ansible renders them."""
    env = {**os.environ, "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1", "ANSIBLE_STDOUT_CALLBACK": "json",
           "ANSIBLE_FORCE_COLOR": "0"}
    command = [str(Path(sys.executable).parent / "ansible"), "-i", inventory, GROUP,
               "-m", "ansible.builtin.debug", "-a", f"msg={_FACTS}", *ansible_args]
    result = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, timeout=300)
    try:
        report = json.loads(result.stdout)
        answers = report["plays"][0]["tasks"][0]["hosts"]
    except (ValueError, KeyError, IndexError):
        raise SystemExit(f"error: Ansible could not read the inventory {inventory} (exit {result.returncode}); "
                         f"for a vault, add ARGS=--ask-vault-pass or set ANSIBLE_VAULT_PASSWORD_FILE") from None
    failed = {name: answer.get("msg") for name, answer in answers.items() if answer.get("failed")}
    if failed or not answers:
        raise SystemExit(f"error: the inventory {inventory} has no usable hosts in {GROUP}: {failed or 'none'}")
    facts = {name: json.loads(answer["msg"]) if isinstance(answer["msg"], str) else answer["msg"]
             for name, answer in answers.items()}
    domains = {f["domain"] for f in facts.values()}
    if len(domains) != 1 or not all(domains):
        raise SystemExit(f"error: the inventory {inventory} names no single domain (nginx_server_name): {domains}")
    ca_files = {f["ca_file"] for f in facts.values()}
    hosts = tuple(TargetHost(name, f["address"], f["user"], f["port"], f["identity_file"], f["ssh_args"])
                  for name, f in sorted(facts.items()))
    return Target(inventory, domains.pop(), ca_files.pop() or None, hosts)


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print("usage: python -m tests.support.deployment INVENTORY [ansible options, e.g. --ask-vault-pass]",
              file=sys.stderr)
        return 2
    target = resolve(argv[0], tuple(argv[1:]))
    print(f"checking {target.domain} on {', '.join(h.name for h in target.hosts)} (read-only)", flush=True)
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="check-target-") as handoff:
        handoff.write(target.to_json())
        handoff.flush()
        env = {**os.environ, TARGET_ENV: handoff.name}
        return subprocess.run([sys.executable, "-m", "pytest", CHECKS, "-p", "no:cacheprovider"], cwd=ROOT,
                              env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
