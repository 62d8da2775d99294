"""Running ansible-playbook from the checkout (its ansible.cfg) with the venv's Ansible."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .layout import ROOT

SITE = ["-i", "inventory/local", "playbooks/site.yml"]
CLUSTER_SITE = ["-i", "inventory/local-cluster", "playbooks/site.yml"]


def ansible_playbook(*args: str, capture: bool = False, timeout: float | None = None) -> subprocess.CompletedProcess:
    exe = str(Path(sys.executable).parent / "ansible-playbook")
    env = {**os.environ, "ANSIBLE_FORCE_COLOR": "0" if capture else os.environ.get("ANSIBLE_FORCE_COLOR", "1")}
    return subprocess.run([exe, *args], cwd=ROOT, env=env, text=True, capture_output=capture, timeout=timeout)
