"""Database backups: ``pg_dump -Fc`` streamed straight into the S3 bucket under
``backups/`` (multipart upload as the dump is produced: no local copy), then
retention; and the way back, the archive streamed from the bucket into
``pg_restore`` in one transaction. Run by ``course-supporter-backup.timer``,
``playbooks/backup.yml`` and ``playbooks/restore.yml`` through
``python -m app.admin backup create|restore``."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import subprocess
import tempfile
import time
from typing import AsyncIterator, Iterator

import asyncpg
import boto3
from aiohttp import web
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from . import dburl, metrics
from .config import Settings
from .db import UNAVAILABLE
from .keys import db_pool_key, storage_key
from .storage import CHECKSUM_POLICY, Storage, StorageUnavailable

PREFIX = "backups/"
STAMP = "%Y%m%dT%H%M%SZ"  # a backup is backups/course-supporter-<the UTC time its dump started>.dump
# ... and its fingerprint backups/course-supporter-<the same time>.fingerprint.json
FINGERPRINT_SUFFIX = ".fingerprint.json"
CONNECT_TIMEOUT_S = 10
# Parts of 16 MiB, two in flight: memory stays ~32 MiB whatever the database's size.
TRANSFER = TransferConfig(multipart_threshold=16 << 20, multipart_chunksize=16 << 20, max_concurrency=2)
RESTORE_CHUNK_BYTES = 1 << 20


class BackupFailed(Exception):
    pass


def _client(settings: Settings):
    return boto3.client("s3", endpoint_url=settings.s3_endpoint_url,
                        config=Config(retries={"max_attempts": 5, "mode": "standard"}, **CHECKSUM_POLICY))


# --- fingerprints: what a restore must bring back -------------------------------------

# Per table of the public schema: its rows, and the md5 of its rows' md5s in order (so
# independent of the order they are stored in). PostgreSQL builds each table's query
# itself (format's %I quotes the name), and query_to_xml runs it in this transaction.
_FINGERPRINT_SQL = """
SELECT c.relname AS name,
       (xpath('/row/rows/text()', x))[1]::text::bigint AS rows,
       (xpath('/row/checksum/text()', x))[1]::text AS checksum
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace,
LATERAL query_to_xml(format(
    'SELECT count(*) AS rows, md5(coalesce(string_agg(md5(t::text), '','' ORDER BY md5(t::text) COLLATE "C"), ''''))'
    ' AS checksum FROM public.%I t', c.relname), false, true, '') AS x
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
ORDER BY c.relname COLLATE "C"
"""


async def fingerprint(conn: asyncpg.Connection) -> dict[str, dict]:
    """Per table of the database: its number of rows and a checksum of them."""
    return {row["name"]: {"rows": row["rows"], "checksum": row["checksum"]}
            for row in await conn.fetch(_FINGERPRINT_SQL)}


@contextlib.contextmanager
def _dump_snapshot(database_url: str) -> Iterator[tuple[str, dict[str, dict]]]:
    """A read-only repeatable-read transaction held open meanwhile: its exported snapshot
    (for ``pg_dump --snapshot``) and the fingerprint of exactly what that snapshot sees."""
    with asyncio.Runner() as runner:
        try:
            conn = runner.run(asyncpg.connect(database_url, timeout=CONNECT_TIMEOUT_S))
        except (OSError, asyncpg.PostgresError) as exc:
            raise BackupFailed(f"the database could not be read: {exc}") from None
        try:
            runner.run(conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"))
            snapshot = runner.run(conn.fetchval("SELECT pg_export_snapshot()"))
            yield snapshot, runner.run(fingerprint(conn))
        finally:
            runner.run(conn.close())


def fingerprint_key(key: str) -> str:
    """Where backup ``key``'s fingerprint is stored, beside it."""
    return key.removesuffix(".dump") + FINGERPRINT_SUFFIX


def create(settings: Settings, keep_days: int, *, now: datetime.datetime | None = None) -> dict:
    now = now or datetime.datetime.now(datetime.timezone.utc)
    key = f"{PREFIX}course-supporter-{now.strftime(STAMP)}.dump"
    client = _client(settings)
    started = time.monotonic()
    with _dump_snapshot(settings.database_url) as (snapshot, prints):
        dump = subprocess.Popen(["pg_dump", "--format=custom", "--no-owner", "--no-privileges",
                                 f"--snapshot={snapshot}"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={**os.environ, **dburl.libpq_env(settings.database_url)})
        try:
            client.upload_fileobj(dump.stdout, settings.s3_bucket, key, Config=TRANSFER,
                                  ExtraArgs={"ContentType": "application/octet-stream"})
        finally:
            dump.stdout.close()
            errors = dump.stderr.read().decode(errors="replace").strip()
            code = dump.wait()
    if code != 0:
        client.delete_object(Bucket=settings.s3_bucket, Key=key)
        raise BackupFailed(f"pg_dump exited with {code}: {errors}")
    client.put_object(Bucket=settings.s3_bucket, Key=fingerprint_key(key), ContentType="application/json",
                      Body=json.dumps({"key": key, "tables": prints}, sort_keys=True).encode())
    size = client.head_object(Bucket=settings.s3_bucket, Key=key)["ContentLength"]
    pruned = prune(client, settings.s3_bucket, keep_days, now, keep=key)
    return {"key": key, "size_bytes": size, "tables": len(prints), "seconds": round(time.monotonic() - started, 1),
            "pruned": pruned}


def _objects(client, bucket: str):
    """Every object under ``backups/``, page by page."""
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=PREFIX):
        yield from page.get("Contents", [])


def list_backups(settings: Settings, client=None) -> list[dict]:
    found = [{"key": o["Key"], "size_bytes": o["Size"], "last_modified": o["LastModified"]}
             for o in _objects(client or _client(settings), settings.s3_bucket) if o["Key"].endswith(".dump")]
    return sorted(found, key=lambda b: b["key"])


def find(settings: Settings, name: str, client=None) -> dict:
    """The backup ``name`` names: "latest", an object key, or a key without ``backups/``."""
    backups = list_backups(settings, client)
    if name == "latest":
        if not backups:
            raise BackupFailed(f"there is no backup in the bucket under {PREFIX}")
        return backups[-1]
    key = name if name.startswith(PREFIX) else PREFIX + name
    for found in backups:
        if found["key"] == key:
            return found
    raise BackupFailed(f"there is no backup {key!r} in the bucket (`backup list` shows them)")


def restore(settings: Settings, name: str, database: str) -> dict:
    """Stream backup ``name`` into ``pg_restore`` against the empty ``database`` (same
    server and login as DATABASE_URL). One transaction: it is restored whole or not at all."""
    client = _client(settings)
    found = find(settings, name, client)
    started = time.monotonic()
    body = client.get_object(Bucket=settings.s3_bucket, Key=found["key"])["Body"]
    with tempfile.TemporaryFile() as errors:
        load = subprocess.Popen(["pg_restore", "--no-owner", "--no-privileges", "--exit-on-error",
                                 "--single-transaction", f"--dbname={database}"],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors,
                                env={**os.environ, **dburl.libpq_env(settings.database_url), "PGDATABASE": database})
        try:
            for chunk in body.iter_chunks(RESTORE_CHUNK_BYTES):
                load.stdin.write(chunk)
        except BrokenPipeError:
            pass  # pg_restore gave up: its exit status and stderr say why
        except BaseException:
            load.kill()  # the download broke off: an incomplete archive must not commit
            raise
        finally:
            body.close()
            try:
                load.stdin.close()
            except BrokenPipeError:
                pass
        code = load.wait()
        errors.seek(0)
        message = errors.read().decode(errors="replace").strip()
    if code != 0:
        raise BackupFailed(f"pg_restore exited with {code}: {message}")
    return {"key": found["key"], "size_bytes": found["size_bytes"], "database": database,
            "seconds": round(time.monotonic() - started, 1)}


def drill(settings: Settings, name: str, database: str, *, create: bool = False) -> dict:
    """The restore drill: backup ``name`` restored into the empty scratch ``database`` as
    ``restore`` does it, its fingerprint compared with the one taken with the backup, and
    the result recorded in the live database (the metrics read it). ``ok`` says whether
    every table came back with the same rows; ``detail`` says what differed or failed.
    ``create``: the scratch database is made first (one left over is dropped) and dropped
    afterwards, by DATABASE_URL's login (a database on another host, where no local
    superuser can)."""
    client = _client(settings)
    started = time.monotonic()
    key = name
    try:
        if create:
            _scratch_database(settings, "dropdb", "--if-exists", "--force", database)
            _scratch_database(settings, "createdb", "--template=template0", database)
        key = find(settings, name, client)["key"]
        try:
            stored = client.get_object(Bucket=settings.s3_bucket, Key=fingerprint_key(key))["Body"].read()
        except client.exceptions.NoSuchKey:
            raise BackupFailed(f"{key} has no fingerprint ({fingerprint_key(key)}): it was taken before "
                               "backups recorded one, so a restore of it cannot be checked") from None
        expected = json.loads(stored)["tables"]
        restore(settings, key, database)
        restored = asyncio.run(_fingerprint_of(settings.database_url, database))
        differences = [f"{table}: {expected.get(table)} in the backup, {restored.get(table)} restored"
                       for table in sorted(set(expected) | set(restored)) if expected.get(table) != restored.get(table)]
        ok = not differences
        detail = (f"{len(expected)} tables, {sum(t['rows'] for t in expected.values())} rows restored as taken"
                  if ok else "; ".join(differences))
    except BackupFailed as exc:
        ok, detail = False, str(exc)
    finally:
        if create:
            _scratch_database(settings, "dropdb", "--if-exists", "--force", database, check=False)
    seconds = round(time.monotonic() - started, 1)
    asyncio.run(_record_drill(settings.database_url, key, ok, seconds, detail))
    return {"key": key, "ok": ok, "seconds": seconds, "database": database, "detail": detail}


def _scratch_database(settings: Settings, tool: str, *args: str, check: bool = True) -> None:
    """createdb/dropdb with DATABASE_URL's login, by way of the live database (the only one
    a remote database host may admit this login to besides the scratch ones)."""
    env = {**os.environ, **dburl.libpq_env(settings.database_url)}
    done = subprocess.run([tool, f"--maintenance-db={env['PGDATABASE']}", *args], env=env,
                          capture_output=True, text=True, timeout=CONNECT_TIMEOUT_S * 6)
    if check and done.returncode != 0:
        raise BackupFailed(f"{tool} exited with {done.returncode}: {done.stderr.strip()}")


async def _fingerprint_of(database_url: str, database: str) -> dict[str, dict]:
    conn = await asyncpg.connect(database_url, database=database, timeout=CONNECT_TIMEOUT_S)
    try:
        return await fingerprint(conn)
    finally:
        await conn.close()


async def _record_drill(database_url: str, key: str, ok: bool, seconds: float, detail: str) -> None:
    conn = await asyncpg.connect(database_url, timeout=CONNECT_TIMEOUT_S)
    try:
        await conn.execute("INSERT INTO restore_drills (backup_key, ok, seconds, detail) VALUES ($1, $2, $3, $4)",
                           key, ok, seconds, detail)
    finally:
        await conn.close()


def taken_at(key: str) -> datetime.datetime | None:
    """When the backup named ``key`` was taken (the time in its name); None if not a backup's name."""
    stamp = key.removeprefix(f"{PREFIX}course-supporter-").removesuffix(".dump")
    try:
        return datetime.datetime.strptime(stamp, STAMP).replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return None


def prune(client, bucket: str, keep_days: int, now: datetime.datetime, keep: str) -> list[str]:
    """Delete backups older than ``keep_days`` (by the time in their name); never ``keep``."""
    cutoff = now - datetime.timedelta(days=keep_days)
    old = []
    for item in _objects(client, bucket):
        taken = taken_at(item["Key"])
        if taken is None:
            continue  # not ours: leave it
        if taken < cutoff and item["Key"] != keep:
            old.append(item["Key"])
    for name in old:
        client.delete_object(Bucket=bucket, Key=name)
        client.delete_object(Bucket=bucket, Key=fingerprint_key(name))  # none there is fine too
    return old


# How often each worker looks for the newest backup and the last restore drill, for the metrics.
WATCH_INTERVAL_S = 60


async def newest_backup_time(storage: Storage) -> datetime.datetime | None:
    """When the newest backup in the bucket was taken, by the time in its name (a failed
    backup stores nothing; a copied-back backup keeps its age)."""
    taken = [taken_at(found["Key"]) async for objects in storage.object_pages(PREFIX) for found in objects]
    return max((when for when in taken if when is not None), default=None)


_LAST_DRILLS = """SELECT (SELECT extract(epoch FROM max(finished_at)) FROM restore_drills WHERE ok) AS last_good,
                         (SELECT ok FROM restore_drills ORDER BY finished_at DESC LIMIT 1) AS last_ok,
                         (SELECT seconds FROM restore_drills ORDER BY finished_at DESC LIMIT 1) AS last_seconds"""


async def _watch_drills(app: web.Application) -> None:
    try:
        async with app[db_pool_key].acquire(timeout=CONNECT_TIMEOUT_S) as conn:
            row = await conn.fetchrow(_LAST_DRILLS)
    except (*UNAVAILABLE, asyncpg.PostgresError):
        return  # the database is down or not migrated yet: the last values stay
    if row["last_good"] is not None:
        metrics.drill_last_success.set(float(row["last_good"]))
    if row["last_ok"] is not None:
        metrics.drill_last_ok.set(1 if row["last_ok"] else 0)
        metrics.drill_last_seconds.set(row["last_seconds"])


async def watch_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: keep the last-backup and last-drill metrics current (S3 or the database
    down: the last values stay)."""

    async def watch() -> None:
        while True:
            try:
                newest = await newest_backup_time(app[storage_key])
            except StorageUnavailable:
                newest = None
            if newest is not None:
                metrics.last_backup.set(newest.timestamp())
            await _watch_drills(app)
            await asyncio.sleep(WATCH_INTERVAL_S)

    task = asyncio.create_task(watch())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
