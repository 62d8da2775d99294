"""The weekly restore drill on the local VPS: the newest backup restored into a scratch
database, compared with the fingerprint taken with it, dropped; its result in the app's
metrics, and a failed drill alerting Telegram."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from tests.localvps.layout import S3_BUCKET
from tests.support.metrics import samples
from tests.support.telegram_log import ALERT_WAIT_S, alarm_messages, count_messages
from tests.support.vps import s3_client, wait_for

DRILL = "course-supporter-restore-drill.service"


def _last_drill_report(host) -> dict:
    lines = host.check_output(f"journalctl -u {DRILL} -o cat --no-pager").splitlines()
    return json.loads([line for line in lines if line.startswith('{"key"')][-1])


def _metric(host, name: str) -> float | None:
    found = [value for (sample, _), value in samples(host.check_output("curl -sS http://127.0.0.1:8000/metrics")).items()
             if sample == name]
    return found[0] if found else None


def test_the_drill_timer_is_weekly_with_a_random_delay(host):
    timer = host.run("systemctl show course-supporter-restore-drill.timer -p ActiveState -p RandomizedDelayUSec "
                     "-p TimersCalendar").stdout
    assert "ActiveState=active" in timer and "RandomizedDelayUSec=1h" in timer
    assert "OnCalendar=weekly" in timer or "Mon *-*-* 00:00:00" in timer


def test_a_drill_run_now_passes_reports_its_duration_and_leaves_no_scratch_database(host):
    host.run_expect([0], "systemctl start course-supporter-backup.service")
    host.run_expect([0], f"systemctl start {DRILL}")
    assert host.run(f"systemctl show {DRILL} -p Result").stdout.strip() == "Result=success"
    report = _last_drill_report(host)
    assert report["ok"] is True and report["seconds"] >= 0 and "restored as taken" in report["detail"]
    databases = host.check_output("runuser -u postgres -- psql -d postgres -Atc 'SELECT datname FROM pg_database'")
    assert report["database"] not in databases.split()
    # Each worker reads the last drill every minute.
    assert wait_for(lambda: _metric(host, "course_supporter_restore_drill_last_duration_seconds") == report["seconds"]
                    and _metric(host, "course_supporter_restore_drill_last_ok") == 1, 90)
    finished = _metric(host, "course_supporter_restore_drill_last_success_timestamp_seconds")
    assert abs(finished - datetime.datetime.now(datetime.timezone.utc).timestamp()) < 300


def test_a_corrupted_backup_fails_the_drill_alerts_telegram_and_a_good_one_recovers(host, vps):
    """The newest backup is a truncated copy of a good one (with the good one's fingerprint)."""
    log = Path(vps["telegram_log"])
    before = count_messages(log)
    s3 = s3_client()
    host.run_expect([0], "systemctl start course-supporter-backup.service")
    good = _last_key(s3)
    body = s3.get_object(Bucket=S3_BUCKET, Key=good)["Body"].read()
    ahead = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)).strftime("%Y%m%dT%H%M%SZ")
    corrupted = f"backups/course-supporter-{ahead}.dump"
    s3.put_object(Bucket=S3_BUCKET, Key=corrupted, Body=body[: len(body) // 2])
    s3.copy_object(Bucket=S3_BUCKET, Key=corrupted.removesuffix(".dump") + ".fingerprint.json",
                   CopySource={"Bucket": S3_BUCKET, "Key": good.removesuffix(".dump") + ".fingerprint.json"})
    try:
        assert host.run(f"systemctl start {DRILL}").rc != 0
        report = _last_drill_report(host)
        assert report["key"] == corrupted and report["ok"] is False and "pg_restore exited" in report["detail"]
        assert wait_for(lambda: alarm_messages(log, before, "course_supporter_restore_drill_failed", "CRITICAL"),
                        ALERT_WAIT_S), "no Telegram alert for the failed drill"
    finally:
        s3.delete_objects(Bucket=S3_BUCKET, Delete={"Objects": [
            {"Key": corrupted}, {"Key": corrupted.removesuffix(".dump") + ".fingerprint.json"}]})
    host.run_expect([0], f"systemctl start {DRILL}")
    assert _last_drill_report(host)["ok"] is True
    assert wait_for(lambda: alarm_messages(log, before, "course_supporter_restore_drill_failed", "CLEAR"),
                    ALERT_WAIT_S), "no recovery message after a good drill"


def _last_key(s3) -> str:
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=S3_BUCKET, Prefix="backups/").get("Contents", [])]
    return max(key for key in keys if key.endswith(".dump"))
