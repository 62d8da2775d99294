"""Backups on the local VPS: the daily timer, and `make vps-backup` putting a
restorable pg_dump archive into the S3 bucket under backups/."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from tests.localvps.layout import ROOT, S3_BUCKET
from tests.support.telegram_log import ALERT_WAIT_S, count_messages, messages_since
from tests.support.vps import s3_client, wait_for


def test_the_backup_timer_is_daily_with_a_random_delay(host):
    timer = host.run("systemctl show course-supporter-backup.timer -p ActiveState -p RandomizedDelayUSec "
                     "-p TimersCalendar").stdout
    assert "ActiveState=active" in timer and "RandomizedDelayUSec=1h" in timer
    assert "OnCalendar=daily" in timer or "*-*-* 00:00:00" in timer


def test_make_vps_backup_stores_a_restorable_dump(host):
    run = subprocess.run(["make", "-s", "vps-backup"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    key = re.search(r"key: (backups/course-supporter-\d{8}T\d{6}Z\.dump)", run.stdout).group(1)
    assert host.run("systemctl show course-supporter-backup.service -p Result").stdout.strip() == "Result=success"
    body = s3_client().get_object(Bucket=S3_BUCKET, Key=key)["Body"].read()
    listing = subprocess.run(["pg_restore", "--list"], input=body, capture_output=True, check=True).stdout
    assert b"TABLE public api_keys" in listing and b"TABLE DATA public courses" in listing
    # The service's own report (JSON in the journal) names the same object.
    report = [json.loads(line) for line in host.check_output(
        "journalctl -u course-supporter-backup.service -o cat --no-pager").splitlines() if line.startswith('{"key"')]
    assert report[-1]["key"] == key and report[-1]["size_bytes"] == len(body)


def test_a_failed_backup_alerts_telegram_and_recovers(host, vps):
    log = Path(vps["telegram_log"])
    before = count_messages(log)

    def messages(word: str) -> list[dict]:
        return [m for m in messages_since(log, before) if "backup" in m["text"] and word in m["text"].lower()]

    dropin = "/run/systemd/system/course-supporter-backup.service.d"
    host.run_expect([0], f"mkdir -p {dropin} && printf '[Service]\\nExecStart=\\nExecStart=/bin/sh -c "
                         f"\"echo simulated backup failure >&2; exit 1\"\\n' > {dropin}/fail.conf "
                         "&& systemctl daemon-reload")
    try:
        assert host.run("systemctl start course-supporter-backup.service").rc != 0
        assert wait_for(lambda: messages("critical"), ALERT_WAIT_S), "no Telegram alert for the failed backup"
    finally:
        host.run_expect([0], f"rm -rf {dropin} && systemctl daemon-reload")
    host.run_expect([0], "systemctl start course-supporter-backup.service")
    assert wait_for(lambda: messages("recovered"), ALERT_WAIT_S), "no recovery message after a good backup"
