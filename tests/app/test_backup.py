"""Backups: pg_dump streamed into the (moto) S3 bucket, restorable, pruned by age."""

from __future__ import annotations

import datetime
import subprocess

import pytest

from app import backup
from app.config import Settings


@pytest.fixture
def settings(app_env) -> Settings:
    return Settings.from_env(app_env)


def test_a_backup_is_a_restorable_dump_in_the_bucket(settings, s3, bucket):
    result = backup.create(settings, keep_days=14)
    assert result["key"].startswith("backups/course-supporter-") and result["key"].endswith(".dump")
    body = s3.client().get_object(Bucket=bucket, Key=result["key"])["Body"].read()
    assert len(body) == result["size_bytes"] > 0
    listing = subprocess.run(["pg_restore", "--list"], input=body, capture_output=True, check=True).stdout
    assert b"TABLE public courses" in listing and b"TABLE public llm_calls" in listing
    assert result["key"] in [b["key"] for b in backup.list_backups(settings)]


def test_old_backups_are_pruned_and_foreign_objects_kept(settings, s3, bucket):
    client = s3.client()
    now = datetime.datetime(2026, 11, 23, 3, 0, tzinfo=datetime.timezone.utc)
    for name in ("course-supporter-20261101T030000Z.dump", "course-supporter-20261120T030000Z.dump", "notes.txt"):
        client.put_object(Bucket=bucket, Key=f"backups/{name}", Body=b"x")
    result = backup.create(settings, keep_days=14, now=now)
    assert result["pruned"] == ["backups/course-supporter-20261101T030000Z.dump"]
    left = {o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="backups/")["Contents"]}
    assert {"backups/course-supporter-20261120T030000Z.dump", "backups/notes.txt", result["key"]} <= left


def test_a_failed_dump_leaves_no_object(settings, s3, bucket, database_url):
    broken = Settings.from_env({"DATABASE_URL": database_url.rsplit("/", 1)[0] + "/no_such_database",
                                "S3_BUCKET": bucket, "S3_ENDPOINT_URL": s3.endpoint_url})
    before = {b["key"] for b in backup.list_backups(settings)}
    with pytest.raises(backup.BackupFailed, match="no_such_database"):
        backup.create(broken, keep_days=14, now=datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc))
    assert {b["key"] for b in backup.list_backups(settings)} == before
