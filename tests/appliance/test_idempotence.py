"""Re-applying the playbook to the provisioned VPS changes nothing."""

from __future__ import annotations

import re

from tests.localvps.playbook import SITE, ansible_playbook


def test_second_run_reports_no_change(vps):
    # The same environment `make vps` ran with (inventory/local reads OPENAI_* from it).
    result = ansible_playbook(*SITE, capture=True, timeout=900)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr
    recap = re.search(r"^local-vps\s+:\s+(.*)$", result.stdout, re.M).group(1)
    counts = dict((k, int(v)) for k, v in re.findall(r"(\w+)=(\d+)", recap))
    assert counts["changed"] == 0, recap + "\n" + "\n".join(
        line for line in result.stdout.splitlines() if line.startswith("changed:"))
    assert counts["failed"] == 0 and counts["unreachable"] == 0
