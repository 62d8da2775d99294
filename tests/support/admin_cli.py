"""The admin CLI as operators run it: ``python -m app.admin`` in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys

from .paths import REPO_ROOT


def admin(*args: str, env: dict | None = None, database_url: str | None = None) -> subprocess.CompletedProcess:
    """Run the CLI with ``args`` and wait for it (60 s at most). The environment is this
    process's without DATABASE_URL, then ``database_url`` and ``env`` on top."""
    environment = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    if database_url:
        environment["DATABASE_URL"] = database_url
    environment.update(env or {})
    return subprocess.run([sys.executable, "-m", "app.admin", *args], cwd=REPO_ROOT, env=environment,
                          capture_output=True, text=True, timeout=60)
