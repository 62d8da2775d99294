"""`make dev`: a throwaway PostgreSQL + local S3 server + the app under gunicorn on localhost.

The LLM provider is the caller's when OPENAI_API_KEY is set, otherwise the local
OpenAI-compatible test server. Prints the URL and a demo API key; Ctrl-C stops
everything and removes the temporary cluster.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import asyncpg
from cryptography.fernet import Fernet

from app import tenants
from app.migrate import apply_migrations

from .gunicorn import Gunicorn
from .llm_server import LLMServer
from .pg import PostgresCluster
from .s3 import S3Server, app_environment

PORT = int(os.environ.get("DEV_PORT", "8080"))


async def _demo_key(database_url: str) -> str:
    conn = await asyncpg.connect(database_url)
    try:
        tenant = await tenants.create_tenant(conn, "Demo")
        key = await tenants.issue_key(conn, tenant["id"], scopes=tenants.SCOPES, label="make dev", env="test",
                                      rate_limit_prep=60, rate_limit_check=300, expires_at=None)
        return key["key"]
    finally:
        await conn.close()


def main() -> int:
    with PostgresCluster(fast=False) as pg, S3Server() as s3, LLMServer() as llm:
        database_url = pg.create_database("course_supporter")
        apply_migrations(database_url)
        bucket = s3.create_bucket("course-supporter-dev")
        key = asyncio.run(_demo_key(database_url))
        llm_env = {} if os.environ.get("OPENAI_API_KEY") else {"OPENAI_API_KEY": "sk-dev",
                                                                "OPENAI_BASE_URL": llm.base_url}
        env = app_environment(database_url, s3, bucket, LOG_LEVEL=os.environ.get("LOG_LEVEL", "INFO"),
                              APP_ENCRYPTION_KEY=os.environ.get("APP_ENCRYPTION_KEY") or Fernet.generate_key().decode(),
                              **llm_env)
        with Gunicorn(env, workers=2, port=PORT) as server:
            url = server.url
            print(f"""
Course Supporter is running (Ctrl-C stops it and removes its data).
  API:        {url}/api/v1/courses
  Swagger UI: {url}/docs
  Demo key:   {key}
  LLM:        {env.get("OPENAI_BASE_URL") or os.environ.get("OPENAI_BASE_URL", "OpenAI")}
  Logs:       {server.log_path}
  Try:        curl -s -H 'X-API-Key: {key}' -H 'Content-Type: application/json' \\
                   -d '{{"title": "Algebra"}}' {url}/api/v1/courses
              curl -sN -H 'X-API-Key: {key}' -H 'Content-Type: application/json' \\
                   -d '{{"prompt": "Hello", "stream": true}}' {url}/api/v1/gpt
""", flush=True)
            try:
                while True:
                    signal.pause()
            except KeyboardInterrupt:
                print("stopping", flush=True)
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    sys.exit(main())
