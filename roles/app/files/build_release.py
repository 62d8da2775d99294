#!/usr/bin/env python3
"""Package the app from a checkout's working tree (uncommitted changes included).

Prints JSON: {"id": <content hash>, "requirements_id": <hash of requirements.txt>,
"archive": <path of a .tar.gz>}. The id depends only on the files' paths and
contents, so deploying an unchanged tree finds the release already in place.
Runs on the Ansible controller.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
import tempfile
from pathlib import Path

INCLUDE = ["app", "migrations", "gunicorn.conf.py", "requirements.txt"]
SKIP_DIRS = {"__pycache__"}
SKIP_SUFFIXES = {".pyc", ".pyo"}


def release_files(source: Path) -> list[Path]:
    files = []
    for name in INCLUDE:
        top = source / name
        if top.is_file():
            files.append(top)
            continue
        if not top.is_dir():
            raise SystemExit(f"build_release: {top} is missing")
        for path in top.rglob("*"):
            if path.is_file() and not SKIP_DIRS & set(path.relative_to(source).parts) \
                    and path.suffix not in SKIP_SUFFIXES:
                files.append(path)
    return sorted(files)


def main() -> None:
    source = Path(sys.argv[1]).resolve()
    files = release_files(source)
    digest = hashlib.sha256()
    for path in files:
        data = path.read_bytes()
        digest.update(f"{path.relative_to(source)}\0{len(data)}\0".encode())
        digest.update(data)
    release_id = digest.hexdigest()[:16]
    requirements_id = hashlib.sha256((source / "requirements.txt").read_bytes()).hexdigest()[:16]
    out_dir = Path(tempfile.gettempdir()) / "course-supporter-releases"
    out_dir.mkdir(exist_ok=True)
    archive = out_dir / f"{release_id}.tar.gz"
    if not archive.exists():
        tmp = archive.with_suffix(".tmp")
        with tarfile.open(tmp, "w:gz") as tar:
            for path in files:
                info = tarfile.TarInfo(str(path.relative_to(source)))
                data = path.read_bytes()
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                tar.addfile(info, io.BytesIO(data))
        tmp.rename(archive)
    print(json.dumps({"id": release_id, "requirements_id": requirements_id, "archive": str(archive)}))


if __name__ == "__main__":
    main()
