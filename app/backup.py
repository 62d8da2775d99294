"""Database backups: ``pg_dump -Fc`` streamed straight into the S3 bucket under
``backups/`` (multipart upload as the dump is produced: no local copy), then
retention. Run by ``course-supporter-backup.timer`` and ``playbooks/backup.yml``
through ``python -m app.admin backup create``."""

from __future__ import annotations

import datetime
import os
import subprocess
import time
from urllib.parse import unquote, urlsplit

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from .config import Settings

PREFIX = "backups/"
# Parts of 16 MiB, two in flight: memory stays ~32 MiB whatever the database's size.
TRANSFER = TransferConfig(multipart_threshold=16 << 20, multipart_chunksize=16 << 20, max_concurrency=2)


class BackupFailed(Exception):
    pass


def _client(settings: Settings):
    return boto3.client("s3", endpoint_url=settings.s3_endpoint_url,
                        config=Config(retries={"max_attempts": 5, "mode": "standard"}))


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
    key = f"{PREFIX}course-supporter-{now:%Y%m%dT%H%M%SZ}.dump"
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


def list_backups(settings: Settings) -> list[dict]:
    client = _client(settings)
    found = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=settings.s3_bucket, Prefix=PREFIX):
        found += [{"key": o["Key"], "size_bytes": o["Size"], "last_modified": o["LastModified"]}
                  for o in page.get("Contents", []) if o["Key"].endswith(".dump")]
    return sorted(found, key=lambda b: b["key"])


def prune(client, bucket: str, keep_days: int, now: datetime.datetime, keep: str) -> list[str]:
    """Delete backups older than ``keep_days`` (by the time in their name); never ``keep``."""
    cutoff = now - datetime.timedelta(days=keep_days)
    old = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=PREFIX):
        for item in page.get("Contents", []):
            stamp = item["Key"].removeprefix(f"{PREFIX}course-supporter-").removesuffix(".dump")
            try:
                taken = datetime.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
            except ValueError:
                continue  # not ours: leave it
            if taken < cutoff and item["Key"] != keep:
                old.append(item["Key"])
    for name in old:
        client.delete_object(Bucket=bucket, Key=name)
    return old
