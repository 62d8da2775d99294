"""A throwaway PostgreSQL cluster: initdb in a temp dir, a free loopback port.

initdb refuses to run as root, so as root the cluster belongs to the
unprivileged system user ``cs-test`` (``make test`` creates it).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from .net import Service, free_port, stop_process, wait_for_port

TEST_USER = "cs-test"

# One line per table of the public schema ("name rows md5-of-its-sorted-rows") and per
# sequence ("name last_value"): two databases with the same lines hold the same data.
FINGERPRINT_SQL = r"""
SELECT table_name || ' ' || (xpath('/row/f/text()', query_to_xml(format(
         'SELECT count(*) || '' '' || md5(coalesce(string_agg(t::text, chr(10) ORDER BY t::text), '''')) AS f'
         ' FROM %I.%I t', table_schema, table_name), false, true, '')))[1]::text
  FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE'
UNION ALL
SELECT sequencename || ' ' || coalesce(last_value::text, '-') FROM pg_sequences WHERE schemaname = 'public'
ORDER BY 1
"""


def pg_bin_dir() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if not candidates:
        raise RuntimeError("PostgreSQL server binaries not found under /usr/lib/postgresql; run `make deps`")
    return Path(candidates[-1]).parent


class PostgresCluster(Service):
    """``tls=(certificate PEM, key PEM)``: the server speaks TLS with that certificate and, as
    the postgresql role configures a database host, admits other logins over TLS only with
    scram-sha-256 (``postgres`` keeps trust, for the tests' own psql)."""

    def __init__(self, *, fast: bool = True, tls: tuple[bytes, bytes] | None = None) -> None:
        self.bin = pg_bin_dir()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="cs-pg-"))
        self.datadir = self.root / "data"
        self.sockdir = self.root / "sock"
        self.fast = fast
        self.tls = tls
        self.proc: subprocess.Popen | None = None
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam(TEST_USER)
            except KeyError:
                raise RuntimeError(f"running as root needs the system user {TEST_USER!r}; run `make deps`") from None
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self._as_user = ["runuser", "-u", TEST_USER, "--"]

    def _run(self, *cmd: str) -> None:
        subprocess.run([*self._as_user, *cmd], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self) -> "PostgresCluster":
        self._run(str(self.bin / "initdb"), "-D", str(self.datadir), "-U", "postgres", "--auth=trust",
                  "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync")
        self._run("mkdir", "-p", str(self.sockdir))
        if self.tls:
            self._configure_tls()
        self._launch()
        return self

    def _configure_tls(self) -> None:
        for name, pem in zip(("server.crt", "server.key"), self.tls):
            path = self.datadir / name
            path.write_bytes(pem)
            path.chmod(0o600)
            if self._as_user:  # the server reads its key only if it owns it
                shutil.chown(path, TEST_USER, TEST_USER)
        (self.datadir / "pg_hba.conf").write_text(
            "local all all trust\n"
            "hostssl all postgres 127.0.0.1/32 trust\n"
            "hostssl all all 127.0.0.1/32 scram-sha-256\n"
            "host all all 0.0.0.0/0 reject\n")

    def _launch(self) -> None:
        options = ["-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.sockdir}",
                   "-c", "max_connections=200", "-c", "shared_buffers=128MB"]
        if self.tls:
            options += ["-c", "ssl=on"]
        if self.fast:  # durability is pointless for a throwaway cluster
            options += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        self.proc = subprocess.Popen(
            [*self._as_user, str(self.bin / "postgres"), "-D", str(self.datadir), "-p", str(self.port), *options],
            stdout=subprocess.DEVNULL, stderr=open(self.root / "server.log", "ab"),
        )
        wait_for_port(self.port, proc=self.proc)
        self._wait_accepting()

    def restart(self, down_s: float = 0.0) -> None:
        """A fast shutdown (SIGINT: open sessions are terminated, as `systemctl restart
        postgresql` does), ``down_s`` seconds down, then the same cluster on the same port."""
        postmaster = int((self.datadir / "postmaster.pid").read_text().split()[0])
        os.kill(postmaster, signal.SIGINT)  # itself: runuser, its parent as root, does not pass SIGINT on
        self.proc.wait(30)
        time.sleep(down_s)
        self._launch()

    def _wait_accepting(self, timeout: float = 30) -> None:
        """The port opens before recovery ends ("the database system is starting up")."""
        deadline = time.monotonic() + timeout
        while subprocess.run([str(self.bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)]).returncode:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"PostgreSQL did not accept connections; see {self.root / 'server.log'}")
            time.sleep(0.05)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        out = subprocess.run([str(self.bin / "psql"), "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", self.url(dbname), "-c", sql],
                             check=True, capture_output=True, text=True)
        return out.stdout.strip()

    def create_database(self, name: str, owner: str = "postgres") -> str:
        self.psql(f'CREATE DATABASE "{name}" OWNER "{owner}" TEMPLATE template0')
        return self.url(name)

    def fingerprint(self, dbname: str) -> list[str]:
        return self.psql(FINGERPRINT_SQL, dbname).splitlines()

    def stop(self) -> None:
        stop_process(self.proc, 15)
        shutil.rmtree(self.root, ignore_errors=True)
