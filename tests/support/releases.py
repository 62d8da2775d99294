"""Trees to deploy in the upgrade tests: the checkout's deployed parts, copied, with another
version, and broken on purpose where asked."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from tests.localvps.layout import ROOT

# What a deploy takes from a tree (the release, the unit and site templates).
DEPLOYED = ["app", "migrations", "gunicorn.conf.py", "requirements.txt", "systemd", "nginx"]


def changed_tree(where: Path, version: str, *, failing_migration: bool = False, broken_app: bool = False) -> Path:
    tree = where / "tree"
    for name in DEPLOYED:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            tree.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, tree / name)
    init = tree / "app" / "__init__.py"
    init.write_text(re.sub(r'__version__ = "[^"]*"', f'__version__ = "{version}"', init.read_text()))
    if failing_migration:
        (tree / "migrations" / "9999.fails-on-purpose.sql").write_text("SELECT * FROM no_such_table;\n")
    if broken_app:  # migrates fine, but no worker can load the app
        with open(tree / "app" / "serve.py", "a") as f:
            f.write('\nraise RuntimeError("a release that cannot start, on purpose")\n')
    return tree
