"""Backups: pg_dump streamed into the (moto) S3 bucket, restorable, pruned by age."""

from __future__ import annotations

import datetime
import json
import subprocess

import pytest

from app import backup
from app.config import Settings
from app.storage import Storage
from tests.support.admin_cli import admin
from tests.support.names import unique


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


def _restore_target(pg, name: str) -> str:
    """An empty database owned by a login role that is no superuser, as on the VPS; its URL."""
    if not pg.psql("SELECT 1 FROM pg_roles WHERE rolname = 'cs_restore_owner'"):
        pg.psql("CREATE ROLE cs_restore_owner LOGIN")
    pg.create_database(name, owner="cs_restore_owner")
    return pg.url(name).replace("postgres@", "cs_restore_owner@", 1)


def test_restore_brings_back_exactly_the_backed_up_data(settings, pg, database_url, app_env):
    source = database_url.rsplit("/", 1)[1]
    pg.psql(f"INSERT INTO tenants (name) VALUES ('{unique('restore-probe')}')", source)
    before = pg.fingerprint(source)
    key = backup.create(settings, keep_days=14)["key"]
    assert pg.fingerprint(source) == before  # nothing wrote in between: the archive holds `before`
    pg.psql(f"INSERT INTO tenants (name) VALUES ('{unique('after-the-backup')}')", source)
    pg.psql("UPDATE tenants SET is_active = NOT is_active", source)
    assert pg.fingerprint(source) != before

    target = unique("restored").replace("-", "_")
    owner_url = _restore_target(pg, target)
    run = admin("backup", "restore", key, "--database", target, "--json", env={**app_env, "DATABASE_URL": owner_url})
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["key"] == key and report["database"] == target and report["seconds"] >= 0
    assert pg.fingerprint(target) == before
    assert any(line.startswith("tenants ") for line in before) and any(" " in line for line in before)


def test_backups_are_named_by_key_or_latest(settings, app_env):
    made = backup.create(settings, keep_days=3650)
    keys = [b["key"] for b in backup.list_backups(settings)]
    assert backup.find(settings, "latest")["key"] == max(keys)
    found = backup.find(settings, made["key"].removeprefix("backups/"))
    assert found["key"] == made["key"] and found["size_bytes"] == made["size_bytes"]
    shown = admin("backup", "show", made["key"], "--json", env=app_env)
    assert shown.returncode == 0 and json.loads(shown.stdout)["key"] == made["key"]
    missing = admin("backup", "show", "nope.dump", env=app_env)
    assert missing.returncode == 1 and "no backup 'backups/nope.dump'" in missing.stderr


def test_backup_text_output_shows_object_keys_as_fields_not_as_secrets(settings, app_env):
    """Only a new API or encryption key is "shown once"; a backup's object key is a plain field."""
    made = backup.create(settings, keep_days=3650)
    shown = admin("backup", "show", made["key"], env=app_env)
    assert shown.returncode == 0
    assert f"key={made['key']}  size_bytes={made['size_bytes']}" in shown.stdout
    assert "never shown again" not in shown.stdout
    listed = admin("backup", "list", env=app_env)
    assert f"key={made['key']}" in listed.stdout and "never shown again" not in listed.stdout


def test_a_broken_archive_restores_nothing(settings, s3, bucket, pg, app_env):
    good = backup.create(settings, keep_days=3650)["key"]
    body = s3.client().get_object(Bucket=bucket, Key=good)["Body"].read()
    broken = "backups/course-supporter-19991231T000000Z.dump"  # never "latest"
    s3.client().put_object(Bucket=bucket, Key=broken, Body=body[: len(body) * 2 // 3])
    target = unique("half").replace("-", "_")
    owner_url = _restore_target(pg, target)
    run = admin("backup", "restore", broken, "--database", target, env={**app_env, "DATABASE_URL": owner_url})
    assert run.returncode == 1 and "pg_restore exited" in run.stderr
    # One transaction: not a single table of the half archive stayed.
    assert pg.psql("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'", target) == "0"


async def test_the_newest_backup_is_dated_by_the_time_in_its_name(s3, bucket):
    """The metric's source: a backup copied back into the bucket keeps its age, and objects
    that are not backups' are not counted."""
    client = s3.client()
    newest = "backups/course-supporter-20991231T235959Z.dump"  # newer than any the tests take
    client.put_object(Bucket=bucket, Key=newest, Body=b"x")
    client.put_object(Bucket=bucket, Key="backups/course-supporter-latest.dump", Body=b"x")
    store = Storage(bucket, s3.endpoint_url)
    try:
        when = await backup.newest_backup_time(store)
    finally:
        store.close()
        client.delete_objects(Bucket=bucket, Delete={"Objects": [
            {"Key": newest}, {"Key": "backups/course-supporter-latest.dump"}]})
    assert when == datetime.datetime(2099, 12, 31, 23, 59, 59, tzinfo=datetime.timezone.utc)
    assert backup.taken_at("backups/notes.txt") is None


def _drill(app_env, key: str, pg, name: str):
    target = unique(name).replace("-", "_")
    pg.create_database(target)
    return admin("backup", "drill", key, "--database", target, "--json", env=app_env), target


def test_a_drill_restores_a_backup_and_finds_every_table_as_it_was_taken(settings, pg, database_url, app_env):
    source = database_url.rsplit("/", 1)[1]
    pg.psql(f"INSERT INTO tenants (name) VALUES ('{unique('drill-probe')}')", source)
    key = backup.create(settings, keep_days=3650)["key"]
    pg.psql(f"INSERT INTO tenants (name) VALUES ('{unique('after-the-backup')}')", source)  # not in the backup
    run, target = _drill(app_env, key, pg, "drill")
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(run.stdout)
    assert report["ok"] is True and report["key"] == key and report["database"] == target and report["seconds"] >= 0
    assert "restored as taken" in report["detail"]
    assert pg.psql("SELECT count(*) FROM tenants", target) != pg.psql("SELECT count(*) FROM tenants", source)
    recorded = pg.psql("SELECT backup_key || ' ' || ok FROM restore_drills ORDER BY id DESC LIMIT 1", source)
    assert recorded == f"{key} true"


def test_a_drill_with_create_makes_its_scratch_database_and_drops_it_afterwards(settings, pg, app_env):
    """`backup drill --create` (a database on another host, where no local superuser can make
    the scratch database): the app's login makes it, a leftover one is replaced, and it is gone after."""
    key = backup.create(settings, keep_days=3650)["key"]
    target = unique("drill_create").replace("-", "_")
    pg.create_database(target)  # left over by a drill that was killed
    run = admin("backup", "drill", key, "--database", target, "--create", "--json", env=app_env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert json.loads(run.stdout)["ok"] is True
    assert pg.psql(f"SELECT count(*) FROM pg_database WHERE datname = '{target}'") == "0"


def test_a_drill_of_a_backup_that_does_not_hold_what_was_taken_fails_and_says_which_table(
        settings, s3, bucket, pg, database_url, app_env):
    """A dump replaced by another one (later data) under the same name: it restores, but
    its rows differ from the fingerprint taken with the original."""
    source = database_url.rsplit("/", 1)[1]
    key = backup.create(settings, keep_days=3650)["key"]
    pg.psql(f"INSERT INTO tenants (name) VALUES ('{unique('changed')}')", source)
    later = backup.create(settings, keep_days=40000, now=datetime.datetime(2099, 1, 1, tzinfo=datetime.timezone.utc))
    client = s3.client()
    client.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": later["key"]})
    client.delete_objects(Bucket=bucket, Delete={"Objects": [
        {"Key": later["key"]}, {"Key": backup.fingerprint_key(later["key"])}]})
    run, _ = _drill(app_env, key, pg, "drill_bad")
    assert run.returncode == 1
    report = json.loads(run.stdout)
    assert report["ok"] is False and "tenants: " in report["detail"]
    assert pg.psql("SELECT ok FROM restore_drills ORDER BY id DESC LIMIT 1", source) == "f"


def test_a_drill_of_a_broken_archive_or_one_without_a_fingerprint_fails(settings, s3, bucket, pg, app_env):
    good = backup.create(settings, keep_days=3650)["key"]
    client = s3.client()
    body = client.get_object(Bucket=bucket, Key=good)["Body"].read()
    broken = "backups/course-supporter-19991230T000000Z.dump"
    client.put_object(Bucket=bucket, Key=broken, Body=body[: len(body) // 2])
    client.copy_object(Bucket=bucket, Key=backup.fingerprint_key(broken),
                       CopySource={"Bucket": bucket, "Key": backup.fingerprint_key(good)})
    run, _ = _drill(app_env, broken, pg, "drill_broken")
    assert run.returncode == 1 and "pg_restore exited" in json.loads(run.stdout)["detail"]
    bare = "backups/course-supporter-19991229T000000Z.dump"
    client.put_object(Bucket=bucket, Key=bare, Body=body)
    run, _ = _drill(app_env, bare, pg, "drill_bare")
    assert run.returncode == 1 and "has no fingerprint" in json.loads(run.stdout)["detail"]
    client.delete_objects(Bucket=bucket, Delete={"Objects": [
        {"Key": broken}, {"Key": backup.fingerprint_key(broken)}, {"Key": bare}]})


def test_pruning_a_backup_deletes_its_fingerprint(settings, s3, bucket):
    old = backup.create(settings, keep_days=3650, now=datetime.datetime(2001, 1, 1, tzinfo=datetime.timezone.utc))
    assert s3.client().head_object(Bucket=bucket, Key=backup.fingerprint_key(old["key"]))
    new = backup.create(settings, keep_days=3650, now=datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc))
    keys = {o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket, Prefix="backups/")["Contents"]}
    assert old["key"] not in keys and backup.fingerprint_key(old["key"]) not in keys
    s3.client().delete_objects(Bucket=bucket, Delete={"Objects": [
        {"Key": new["key"]}, {"Key": backup.fingerprint_key(new["key"])}]})
