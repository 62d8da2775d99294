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
import os
import subprocess
import tempfile
import time
from typing import AsyncIterator
from urllib.parse import unquote, urlsplit

import boto3
from aiohttp import web
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from . import metrics
from .config import Settings
from .keys import storage_key
from .storage import CHECKSUM_POLICY, Storage, StorageUnavailable

PREFIX = "backups/"
STAMP = "%Y%m%dT%H%M%SZ"  # a backup is backups/course-supporter-<the UTC time its dump started>.dump
# Parts of 16 MiB, two in flight: memory stays ~32 MiB whatever the database's size.
TRANSFER = TransferConfig(multipart_threshold=16 << 20, multipart_chunksize=16 << 20, max_concurrency=2)
RESTORE_CHUNK_BYTES = 1 << 20


class BackupFailed(Exception):
    pass


def _client(settings: Settings):
    return boto3.client("s3", endpoint_url=settings.s3_endpoint_url,
                        config=Config(retries={"max_attempts": 5, "mode": "standard"}, **CHECKSUM_POLICY))


def _libpq_env(database_url: str) -> dict[str, str]:
    """The connection as libpq variables: the password never appears in a command line."""
    url = urlsplit(database_url)
    env = {"PGHOST": url.hostname or "", "PGPORT": str(url.port or 5432), "PGUSER": unquote(url.username or ""),
           "PGDATABASE": url.path.lstrip("/")}
    if url.password:
        env["PGPASSWORD"] = unquote(url.password)
    return env


def create(settings: Settings, keep_days: int, *, now: datetime.datetime | None = None) -> dict:
    now = now or datetime.datetime.now(datetime.timezone.utc)
    key = f"{PREFIX}course-supporter-{now.strftime(STAMP)}.dump"
    client = _client(settings)
    started = time.monotonic()
    dump = subprocess.Popen(["pg_dump", "--format=custom", "--no-owner", "--no-privileges"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, **_libpq_env(settings.database_url)})
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
    size = client.head_object(Bucket=settings.s3_bucket, Key=key)["ContentLength"]
    pruned = prune(client, settings.s3_bucket, keep_days, now, keep=key)
    return {"key": key, "size_bytes": size, "seconds": round(time.monotonic() - started, 1), "pruned": pruned}


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
                                env={**os.environ, **_libpq_env(settings.database_url), "PGDATABASE": database})
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


def prune(client, bucket: str, keep_days: int, now: datetime.datetime, keep: str) -> list[str]:
    """Delete backups older than ``keep_days`` (by the time in their name); never ``keep``."""
    cutoff = now - datetime.timedelta(days=keep_days)
    old = []
    for item in _objects(client, bucket):
        stamp = item["Key"].removeprefix(f"{PREFIX}course-supporter-").removesuffix(".dump")
        try:
            taken = datetime.datetime.strptime(stamp, STAMP).replace(tzinfo=datetime.timezone.utc)
        except ValueError:
            continue  # not ours: leave it
        if taken < cutoff and item["Key"] != keep:
            old.append(item["Key"])
    for name in old:
        client.delete_object(Bucket=bucket, Key=name)
    return old


# How often each worker looks for the newest backup, for the metrics.
WATCH_INTERVAL_S = 300


async def newest_backup_time(storage: Storage) -> datetime.datetime | None:
    """When the newest backup in the bucket was stored (a failed backup leaves none)."""
    newest, more = None, {}
    while True:
        page = await storage.call("list_objects_v2", Prefix=PREFIX, **more)
        for found in page.get("Contents", []):
            if found["Key"].endswith(".dump") and (newest is None or found["LastModified"] > newest):
                newest = found["LastModified"]
        if not page.get("IsTruncated"):
            return newest
        more = {"ContinuationToken": page["NextContinuationToken"]}


async def watch_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: keep the last-backup metric current (storage down: the last value stays)."""

    async def watch() -> None:
        while True:
            try:
                newest = await newest_backup_time(app[storage_key])
            except StorageUnavailable:
                newest = None
            if newest is not None:
                metrics.last_backup.set(newest.timestamp())
            await asyncio.sleep(WATCH_INTERVAL_S)

    task = asyncio.create_task(watch())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
