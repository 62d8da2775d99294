"""The CI/CD workflows pass actionlint (syntax, expressions, runner labels, shell) and zizmor
(security: permissions, pinned actions, credentials, injection), offline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.paths import REPO_ROOT

BIN = Path(sys.executable).parent
WORKFLOWS = sorted(str(p) for p in (Path(REPO_ROOT) / ".github" / "workflows").glob("*.yml"))


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def test_there_are_a_ci_and_a_deploy_workflow():
    assert [Path(p).name for p in WORKFLOWS] == ["ci.yml", "deploy.yml"]


def test_actionlint_is_clean():
    result = _run(str(BIN / "actionlint"), "-no-color", *WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_zizmor_is_clean():
    result = _run(str(BIN / "zizmor"), "--offline", "--strict-collection", "--no-progress", *WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr
