"""A real S3 protocol server (moto in server mode) on loopback, in its own process."""

from __future__ import annotations

import os
import subprocess
import sys

import boto3

from .net import Service, free_port, stop_process, wait_for_port

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def app_environment(database_url: str, s3: "S3Server", bucket: str, **extra: str) -> dict[str, str]:
    """The environment a deployed app gets: database, bucket, S3 endpoint and credentials."""
    return {**CREDENTIALS, "DATABASE_URL": database_url, "S3_BUCKET": bucket,
            "S3_ENDPOINT_URL": s3.endpoint_url, **extra}


class S3Server(Service):
    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "S3Server":
        env = {**os.environ, **CREDENTIALS}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, proc=self.proc)
        return self

    def client(self, config=None):
        return boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                            region_name=CREDENTIALS["AWS_DEFAULT_REGION"], config=config)

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        stop_process(self.proc, 10)
