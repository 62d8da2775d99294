"""Restore on the local VPS: back up, change the data, `make vps-restore BACKUP=latest`,
and exactly the backed-up data is back with the app healthy. While the app is down
for it, nginx answers JSON 503s with Retry-After, not HTML."""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import threading
import time
import urllib.request

from tests.localvps.layout import ROOT, S3_BUCKET
from tests.support.pg import FINGERPRINT_SQL

from tests.support.vps import psql, s3_client

PROBE_INTERVAL_S = 0.25
PROBE_MAX = 4000  # bounded: ~17 minutes of probing at most


def fingerprint(host, database: str = "course_supporter") -> list[str]:
    return psql(host, FINGERPRINT_SQL, database).splitlines()


def encoding_and_locale(host, database: str) -> str:
    return psql(host, "SELECT pg_encoding_to_char(encoding), datcollate, datctype FROM pg_database "
                      f"WHERE datname = '{database}'")


class HealthProbe:
    """GET /health over HTTPS every PROBE_INTERVAL_S in a thread: what answered, and when."""

    def __init__(self, vps: dict) -> None:
        self.vps = vps
        self.answers: list[tuple[float, int, str, dict]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-probe", daemon=True)

    def __enter__(self) -> "HealthProbe":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        context = ssl.create_default_context(cafile=self.vps["ca_cert"])
        context.check_hostname = False  # by address; the certificate is checked against its CA
        for _ in range(PROBE_MAX):
            if self._stop.is_set():
                return
            request = urllib.request.Request(f"https://{self.vps['address']}/health",
                                             headers={"Host": self.vps["domain"]})
            try:
                with urllib.request.urlopen(request, context=context, timeout=10) as response:
                    status, headers, body = response.status, response.headers, response.read()
            except urllib.error.HTTPError as error:
                status, headers, body = error.code, error.headers, error.read()
            self.answers.append((time.monotonic(), status, headers.get("Content-Type", ""),
                                 {"retry-after": headers.get("Retry-After"), "body": json.loads(body)}))
            time.sleep(PROBE_INTERVAL_S)


def test_restore_latest_brings_back_exactly_the_backed_up_data(host, vps, curl):
    key = ["-H", f"X-API-Key: {vps['api_key']}"]
    status, kept = curl.json("/api/v1/courses", *key, "-H", "Content-Type: application/json",
                             "--data", '{"title": "In the backup"}')
    assert status == 201
    before = fingerprint(host)

    started = time.monotonic()
    backup = subprocess.run(["make", "-s", "vps-backup"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    backup_s = time.monotonic() - started
    assert backup.returncode == 0, backup.stdout[-3000:] + backup.stderr[-2000:]
    backup_key = re.search(r"key: (backups/course-supporter-\d{8}T\d{6}Z\.dump)", backup.stdout).group(1)
    assert fingerprint(host) == before  # nothing wrote meanwhile: the archive holds `before`

    # Change the data: a course goes, another comes.
    assert curl(f"/api/v1/courses/{kept['id']}", *key, "-X", "DELETE")[0] == 204
    status, added = curl.json("/api/v1/courses", *key, "-H", "Content-Type: application/json",
                              "--data", '{"title": "After the backup"}')
    assert status == 201
    assert fingerprint(host) != before

    started = time.monotonic()
    with HealthProbe(vps) as probe:
        restore = subprocess.run(["make", "-s", "vps-restore", "BACKUP=latest"], cwd=ROOT, capture_output=True,
                                 text=True, timeout=900)
        time.sleep(1)
    restore_s = time.monotonic() - started
    assert restore.returncode == 0, restore.stdout[-4000:] + restore.stderr[-2000:]
    assert f"Restored {backup_key}" in restore.stdout

    assert fingerprint(host) == before  # every row, every sequence, as backed up
    assert fingerprint(host, "course_supporter_before_restore") != before  # what it replaced is kept
    # The fresh database was made like the one it replaced.
    assert encoding_and_locale(host, "course_supporter") == "UTF8|C.UTF-8|C.UTF-8"
    assert encoding_and_locale(host, "course_supporter_before_restore") == "UTF8|C.UTF-8|C.UTF-8"
    assert curl.json("/health")[0] == 200
    status, fetched = curl.json(f"/api/v1/courses/{kept['id']}", *key)
    assert status == 200 and {name: fetched[name] for name in kept} == kept
    assert curl.json(f"/api/v1/courses/{added['id']}", *key)[0] == 404

    down = [a for a in probe.answers if a[1] != 200]
    assert down, "the probe never saw the app stopped"
    for _, status, content_type, extra in down:  # nginx's own error page while the app is stopped
        assert (status, content_type) == (503, "application/json"), (status, content_type, extra)
        assert extra["body"]["error"]["code"] == "service_unavailable" and extra["retry-after"] == "10"
    assert probe.answers[-1][1] == 200
    downtime = down[-1][0] - down[0][0] + PROBE_INTERVAL_S
    print(f"\nbackup: make vps-backup {backup_s:.1f} s; restore: make vps-restore {restore_s:.1f} s, "
          f"app answering 503 for ~{downtime:.1f} s ({len(down)} of {len(probe.answers)} probes)")


def make_restore(backup: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-s", "vps-restore", f"BACKUP={backup}"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def said(run: subprocess.CompletedProcess) -> str:
    """What the playbook printed, without colours and with Ansible's line wrapping undone."""
    return " ".join(re.sub(r"\x1b\[[0-9;]*m", "", run.stdout + run.stderr).split())


def test_restoring_a_backup_that_does_not_exist_stops_nothing(host, curl):
    before = fingerprint(host)
    since = host.check_output("systemctl show course-supporter.service -p ActiveEnterTimestampMonotonic")
    restore = make_restore("backups/no-such-backup.dump")
    assert restore.returncode != 0
    assert "there is no backup ''backups/no-such-backup.dump'' in the bucket" in said(restore)
    # Found missing before anything stopped: the same service run, the same data.
    assert host.check_output("systemctl show course-supporter.service -p ActiveEnterTimestampMonotonic") == since
    assert curl.json("/health")[0] == 200 and fingerprint(host) == before


def test_a_broken_backup_fails_loudly_and_leaves_the_live_data(host, curl):
    """A truncated archive: pg_restore fails inside its transaction, the app restarts on
    the database it had, and the playbook fails."""
    s3 = s3_client()
    latest = max(o["Key"] for o in s3.list_objects_v2(Bucket=S3_BUCKET, Prefix="backups/")["Contents"]
                 if o["Key"].endswith(".dump"))
    body = s3.get_object(Bucket=S3_BUCKET, Key=latest)["Body"].read()
    broken = "backups/course-supporter-19991231T000000Z.dump"  # never "latest"
    s3.put_object(Bucket=S3_BUCKET, Key=broken, Body=body[: len(body) // 2])
    before = fingerprint(host)
    try:
        restore = make_restore(broken)
    finally:
        s3.delete_object(Bucket=S3_BUCKET, Key=broken)
    assert restore.returncode != 0
    assert f"Restoring {broken} failed; the app runs on the database it had" in said(restore)
    assert "pg_restore exited" in said(restore)
    assert host.service("course-supporter").is_running and curl.json("/health")[0] == 200
    assert fingerprint(host) == before


def test_a_restore_failing_after_the_swap_swaps_the_live_database_back(host, curl):
    """The backup loads, but the live release's migrations fail on it: the database that was
    live goes back under its name, the app starts on it, and the playbook fails."""
    migration = "/opt/course-supporter/current/migrations/9999.fails-on-purpose.sql"
    before = fingerprint(host)
    host.run_expect([0], f"echo 'SELECT * FROM no_such_table;' > {migration}")
    try:
        restore = make_restore("latest")
    finally:
        host.run_expect([0], f"rm -f {migration}")
    assert restore.returncode != 0
    assert "the app runs on the database it had" in said(restore) and "no_such_table" in said(restore)
    assert host.service("course-supporter").is_running and curl.json("/health")[0] == 200
    assert fingerprint(host) == before
