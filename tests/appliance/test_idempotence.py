"""Re-applying the playbook to the provisioned VPS changes nothing."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.localvps.layout import ROOT


def test_second_run_reports_no_change(vps):
    exe = str(Path(sys.executable).parent / "ansible-playbook")
    result = subprocess.run([exe, "-i", "inventory/local", "playbooks/site.yml"], cwd=ROOT, capture_output=True,
                            text=True, timeout=900, env={"PATH": f"{Path(exe).parent}:/usr/bin:/bin",
                                                        "ANSIBLE_FORCE_COLOR": "0", "HOME": "/root"})
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr
    recap = re.search(r"^local-vps\s+:\s+(.*)$", result.stdout, re.M).group(1)
    counts = dict((k, int(v)) for k, v in re.findall(r"(\w+)=(\d+)", recap))
    assert counts["changed"] == 0, recap + "\n" + "\n".join(
        line for line in result.stdout.splitlines() if line.startswith("changed:"))
    assert counts["failed"] == 0 and counts["unreachable"] == 0
