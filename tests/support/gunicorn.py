"""The app under a real gunicorn master, from the repository root (so gunicorn.conf.py applies)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

from .net import Service, free_port, stop_process, wait_for_port
from .paths import REPO_ROOT


class Gunicorn(Service):
    def __init__(self, env: dict[str, str], *, workers: int = 2, app: str = "app.main:create_app",
                 extra_args: tuple[str, ...] = (), ready_path: str = "/health", port: int | None = None) -> None:
        self.env = {**os.environ, **env}
        self.workers = workers
        self.app = app
        self.extra_args = extra_args
        self.ready_path = ready_path
        self.port = port or free_port()
        self.log_path = tempfile.mktemp(prefix="cs-gunicorn-", suffix=".log")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Gunicorn":
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", self.app, "--worker-class", "aiohttp.GunicornWebWorker",
             "--bind", f"127.0.0.1:{self.port}", "--workers", str(self.workers),
             "--no-control-socket", *self.extra_args],
            cwd=REPO_ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=open(self.log_path, "wb"),
        )
        wait_for_port(self.port, proc=self.proc, timeout=60)
        self.wait_healthy()
        self.wait_for_workers()
        return self

    def wait_for_workers(self, timeout: float = 60) -> None:
        """Until every worker is forked (one answering /health does not mean all are up)."""
        deadline = time.monotonic() + timeout
        while len(self.worker_pids()) < self.workers:
            if time.monotonic() > deadline:
                raise TimeoutError(f"gunicorn has {len(self.worker_pids())} of {self.workers} workers")
            time.sleep(0.1)

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + self.ready_path, timeout=5) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError("gunicorn did not become healthy")

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def worker_with_connection(self, port: int, *, serving: bool) -> int:
        """The one worker with a TCP connection established to ``port`` (a provider, say), or
        with ``serving`` one from a client on ``port`` (the server's own)."""
        side = "sport" if serving else "dport"
        out = subprocess.run(["ss", "-Htnp", "state", "established", side, f"= :{port}"], capture_output=True,
                             text=True, check=True).stdout
        pids = {int(pid) for pid in re.findall(r"pid=(\d+)", out)} & set(self.worker_pids())
        assert len(pids) == 1, out
        return pids.pop()

    def log_lines(self) -> list[str]:
        with open(self.log_path, encoding="utf-8") as f:
            return [line for line in f.read().splitlines() if line.strip()]

    def stop(self) -> None:
        stop_process(self.proc, 30)
        try:
            os.unlink(self.log_path)
        except FileNotFoundError:
            pass
