"""Reaching a deployed appliance (the local VPS) from outside: HTTPS as a client does, SQL
on the host, the local VPS's host-side S3 server, and polling for what takes a while."""

from __future__ import annotations

import json
import re
import subprocess
import time

import boto3

from tests.localvps.layout import HOST_ADDRESS, S3_CREDENTIALS, S3_PORT


class Curl:
    """curl against a site the way a client reaches it: its name, ``--resolve``d to ``address``,
    its certificate checked against ``ca_file`` (None: the system's CAs; never -k). Answers
    (status, headers, body)."""

    def __init__(self, domain: str, address: str, ca_file: str | None) -> None:
        self.domain, self.address, self.ca_file = domain, address, ca_file

    def __call__(self, path: str, *args: str, scheme: str = "https",
                 max_time: int = 30) -> tuple[int, dict[str, str], str]:
        port = 443 if scheme == "https" else 80
        out = subprocess.run(
            ["curl", "-sS", "--max-time", str(max_time), "--resolve", f"{self.domain}:{port}:{self.address}",
             *(["--cacert", self.ca_file] if self.ca_file else []), "-D", "-", *args, f"{scheme}://{self.domain}{path}"],
            capture_output=True, text=True, timeout=max_time + 30, check=True).stdout
        head, _, body = out.partition("\n\n")  # text mode has turned CRLF into LF
        status_line, *header_lines = head.splitlines()
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
        return int(status_line.split()[1]), headers, body

    def json(self, path: str, *args: str, **options) -> tuple[int, object]:
        status, _, body = self(path, *args, **options)
        return status, json.loads(body)


def s3_client():
    """boto3 at the host-side S3 server the VPS stores its materials and backups in."""
    return boto3.client("s3", endpoint_url=f"http://{HOST_ADDRESS}:{S3_PORT}", region_name="us-east-1",
                        aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])


def configured_secrets(host) -> list[str]:
    """Every secret value the app on ``host`` (testinfra) is configured with."""
    values = []
    for line in host.check_output("cat /etc/course-supporter/env").splitlines():
        name, _, value = line.partition("=")
        value = value.strip('"')
        if name in ("AWS_SECRET_ACCESS_KEY", "OPENAI_API_KEY", "LLM_FALLBACK_API_KEY") and value:
            values.append(value)
        elif name == "APP_ENCRYPTION_KEY" and value:
            values += value.split(",")
        elif name == "DATABASE_URL":
            values.append(re.match(r"postgresql://[^:]+:([^@]+)@", value).group(1))
    assert len(values) >= 3
    return values


def psql(host, sql: str, database: str = "postgres") -> str:
    """One statement's rows on the VPS, as psql's unaligned output, run as the postgres user."""
    return host.check_output("runuser -u postgres -- psql -X -q -t -A -d %s -c %s", database, sql)


def wait_for(predicate, timeout: float, interval: float = 2.0):
    """Poll until ``predicate()`` is truthy (returned) or ``timeout`` seconds pass (None)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    return None
