"""Upload benchmark: a 1 GiB file streamed through the app (1 gunicorn worker) to S3.

Samples the worker's RSS while the upload runs and compares the wall time with
a direct boto3 ``upload_file`` of the same file to the same S3 server in the
same run, with the app's checksum policy (``app.storage.CHECKSUM_POLICY``), so
that both send S3 the same requests. Targets: peak RSS growth <= 64 MiB,
throughput ratio >= 0.8.

Then CONCURRENT_UPLOADS uploads of CONCURRENT_BYTES each (1 GiB in all) arrive at
one worker at once: the worker streams UPLOADS_PER_WORKER of them at a time and the
rest wait their turn, so its RSS growth stays bounded (target <= 256 MiB) rather
than growing with the number of uploads.

boto3's default policy is timed as well, for information: it sends a CRC32 per
part, and moto then combines those instead of copying the whole object once
more to checksum it at completion, so it is faster against moto. Backblaze B2,
the production store, lists those headers as unsupported.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import aiohttp
from botocore.config import Config

from app.migrate import apply_migrations
from app.storage import CHECKSUM_POLICY
from tests.support.gunicorn import Gunicorn
from tests.support.pg import PostgresCluster
from tests.support.s3 import S3Server, app_environment

from .seed import seed

SIZE = 1 << 30
MAX_RSS_GROWTH_MIB = 64
TARGET_RATIO = 0.8
CONCURRENT_UPLOADS = 64
CONCURRENT_BYTES = 16 << 20
MAX_CONCURRENT_RSS_GROWTH_MIB = 256
EXTRA_ENV = dict(item.split("=", 1) for item in os.environ.get("BENCH_APP_ENV", "").split() if item)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class RssSampler(threading.Thread):
    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.baseline = _rss_kib(pid)
        self.peak = self.baseline
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, _rss_kib(self.pid))
            time.sleep(self.interval)

    def stop(self) -> float:
        self._done.set()
        self.join()
        return (self.peak - self.baseline) / 1024


def _make_file(directory: str) -> tuple[Path, str]:
    path, digest = Path(directory) / "upload.bin", hashlib.sha256()
    with open(path, "wb") as out:
        for _ in range(SIZE // (8 << 20)):
            block = os.urandom(8 << 20)
            digest.update(block)
            out.write(block)
    return path, digest.hexdigest()


def _direct_upload(client, path: Path, bucket: str) -> float:
    started = time.monotonic()
    client.upload_file(str(path), bucket, "direct/upload.bin")
    elapsed = time.monotonic() - started
    client.delete_object(Bucket=bucket, Key="direct/upload.bin")
    return elapsed


def run() -> dict:
    with tempfile.TemporaryDirectory(prefix="cs-bench-") as tmp, PostgresCluster() as pg, S3Server() as s3:
        path, sha = _make_file(tmp)
        database_url = pg.create_database("bench_upload")
        apply_migrations(database_url)
        key, course_id = asyncio.run(seed(database_url))
        bucket = s3.create_bucket("bench-upload")

        direct_s = _direct_upload(s3.client(Config(**CHECKSUM_POLICY)), path, bucket)
        direct_default_s = _direct_upload(s3.client(), path, bucket)

        env = app_environment(database_url, s3, bucket, LOG_LEVEL="WARNING", **EXTRA_ENV)
        with Gunicorn(env, workers=1) as server:
            sampler = RssSampler(server.worker_pids()[0])
            sampler.start()
            started = time.monotonic()
            out = subprocess.run(
                ["curl", "-sS", "--fail-with-body", "-X", "POST", "-T", str(path),
                 "-H", f"X-API-Key: {key}", "-H", "Content-Type: application/octet-stream",
                 f"{server.url}/api/v1/courses/{course_id}/materials?filename=upload.bin"],
                capture_output=True, text=True, timeout=900, check=True).stdout
            app_s = time.monotonic() - started
            growth_mib = sampler.stop()
        material = json.loads(out)
        if (material["size_bytes"], material["sha256"]) != (SIZE, sha):
            raise RuntimeError(f"the stored file differs: {material}")

        with Gunicorn(env, workers=1) as server:
            sampler = RssSampler(server.worker_pids()[0])
            sampler.start()
            started = time.monotonic()
            statuses = asyncio.run(_concurrent_uploads(server.url, key, course_id))
            concurrent_s = time.monotonic() - started
            concurrent_growth_mib = sampler.stop()
        if statuses != [201] * CONCURRENT_UPLOADS:
            raise RuntimeError(f"concurrent uploads answered {sorted(set(statuses))}")
    return {"direct_s": direct_s, "direct_default_s": direct_default_s, "app_s": app_s,
            "ratio": direct_s / app_s, "rss_growth_mib": growth_mib,
            "concurrent_s": concurrent_s, "concurrent_rss_growth_mib": concurrent_growth_mib}


async def _concurrent_uploads(url: str, key: str, course_id: str) -> list[int]:
    block = os.urandom(1 << 20)

    async def body():
        for _ in range(CONCURRENT_BYTES >> 20):
            yield block

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=900)) as session:
        async def one(n: int) -> int:
            async with session.post(f"{url}/api/v1/courses/{course_id}/materials?filename=c{n}.bin", data=body(),
                                    headers={"X-API-Key": key, "Content-Type": "application/octet-stream"}) as resp:
                await resp.read()
                return resp.status

        return await asyncio.gather(*(one(n) for n in range(CONCURRENT_UPLOADS)))


def report(result: dict) -> bool:
    mib = SIZE / (1 << 20)
    print("\nupload bench: 1 GiB through the app (1 gunicorn worker) vs boto3 upload_file, same S3 server")
    print(f"{'direct boto3 upload_file':40} {result['direct_s']:>8.1f} s {mib / result['direct_s']:>8.0f} MiB/s")
    print(f"{'  (boto3 default checksums, for info)':40} {result['direct_default_s']:>8.1f} s "
          f"{mib / result['direct_default_s']:>8.0f} MiB/s")
    print(f"{'POST …/materials (streamed)':40} {result['app_s']:>8.1f} s {mib / result['app_s']:>8.0f} MiB/s")
    rss_ok = result["rss_growth_mib"] <= MAX_RSS_GROWTH_MIB
    ratio_ok = result["ratio"] >= TARGET_RATIO
    print(f"worker peak RSS growth = {result['rss_growth_mib']:.1f} MiB "
          f"(target <= {MAX_RSS_GROWTH_MIB}: {'met' if rss_ok else 'NOT met'})")
    print(f"throughput ratio app/direct = {result['ratio']:.2f} "
          f"(target >= {TARGET_RATIO}: {'met' if ratio_ok else 'NOT met'})")
    concurrent_ok = result["concurrent_rss_growth_mib"] <= MAX_CONCURRENT_RSS_GROWTH_MIB
    print(f"{CONCURRENT_UPLOADS} uploads of {CONCURRENT_BYTES >> 20} MiB at once to 1 worker: "
          f"{result['concurrent_s']:.1f} s, worker peak RSS growth = {result['concurrent_rss_growth_mib']:.1f} MiB "
          f"(target <= {MAX_CONCURRENT_RSS_GROWTH_MIB}: {'met' if concurrent_ok else 'NOT met'})")
    return rss_ok and ratio_ok and concurrent_ok
