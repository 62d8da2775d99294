"""The README's five-minute tour works as written, against the local VPS."""

from __future__ import annotations

import json
import re
import subprocess

from tests.localvps.layout import ROOT


def test_the_readme_tour_runs_as_written(vps):
    readme = (ROOT / "README.md").read_text()
    tour = re.search(r"^## A five-minute tour\n.*?^```sh\n(.*?)^```", readme, re.S | re.M).group(1)
    result = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", tour], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    material, attempt, report = (json.loads(line) for line in result.stdout.splitlines())
    assert material["filename"] == "notes.md" and material["size_bytes"] > 0
    assert 0 <= attempt["score"] <= 100 and isinstance(attempt["passed"], bool) and attempt["feedback"]
    assert report["group_by"] == "endpoint"
    assert {"structure", "check-homework"} <= {group["key"] for group in report["groups"]}
