"""Session-wide real servers: a throwaway PostgreSQL cluster and a moto S3 server."""

from __future__ import annotations

import os

import pytest

from app.migrate import apply_migrations
from tests.support.llm_server import LLMServer
from tests.support.pg import PostgresCluster
from tests.support.s3 import CREDENTIALS, S3Server, app_environment


@pytest.fixture(scope="session")
def pg():
    with PostgresCluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def database_url(pg):
    url = pg.create_database("course_supporter")
    apply_migrations(url)
    return url


@pytest.fixture(scope="session")
def s3():
    with S3Server() as server:
        yield server


@pytest.fixture(scope="session")
def bucket(s3):
    return s3.create_bucket("materials")


@pytest.fixture(scope="session", autouse=True)
def _aws_credentials():
    """boto3 reads credentials from the environment, as the contract says."""
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def llm():
    """The OpenAI-compatible test server: the app's default provider in tests."""
    with LLMServer() as server:
        yield server


# Short enough to keep failure tests quick; the retry count is the contract's default.
LLM_TEST_SETTINGS = {"OPENAI_API_KEY": "sk-test-server-0000000000000000", "LLM_TIMEOUT_S": "1",
                     "LLM_MAX_RETRIES": "3"}


@pytest.fixture(scope="session")
def app_env(database_url, s3, bucket, llm):
    """The environment a deployed app would get."""
    return app_environment(database_url, s3, bucket, LOG_LEVEL="INFO", OPENAI_BASE_URL=llm.base_url,
                           **LLM_TEST_SETTINGS)
