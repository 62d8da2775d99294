"""The playbooks and roles pass ansible-lint's production profile and Ansible's syntax check."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.localvps.layout import ROOT
from tests.localvps.playbook import ansible_playbook

BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "ANSIBLE_FORCE_COLOR": "0", "NO_COLOR": "1"}


def test_ansible_lint_production_profile():
    result = subprocess.run([str(BIN / "ansible-lint"), "--profile", "production", "playbooks/", "roles/",
                             "inventory/"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Profile 'production' was required, and it passed" in result.stderr + result.stdout


def test_playbooks_pass_the_syntax_check():
    for inventory in ("inventory/local", "inventory/local-cluster", "inventory/production.example"):
        for playbook in ("site.yml", "backup.yml", "restore.yml", "rollback.yml"):
            result = ansible_playbook("-i", inventory, "--syntax-check", f"playbooks/{playbook}", capture=True,
                                      timeout=120)
            assert result.returncode == 0, result.stdout + result.stderr
