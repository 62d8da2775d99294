"""A database on another host (the `db` host of a cluster, or a managed PostgreSQL) is reached
over TLS with `sslmode=verify-full`: every client of DATABASE_URL — the app's pool and its
key-cache listener (asyncpg), the migrations (psycopg) and the backups (pg_dump) — checks the
server's certificate against the CA the URL names, and its name against the URL's host."""

from __future__ import annotations

import asyncio
import ssl

import asyncpg
import psycopg
import pytest
import trustme

from app import backup
from app.config import Settings
from app.main import create_app
from app.migrate import apply_migrations
from tests.support.pg import PostgresCluster
from tests.support.tenants import Factory

PASSWORD = "tls-app-password-0000"


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_pg(ca):
    leaf = ca.issue_cert("127.0.0.1")
    with PostgresCluster(tls=(leaf.cert_chain_pems[0].bytes(), leaf.private_key_pem.bytes())) as cluster:
        # CREATEDB: the restore drill makes its scratch database itself when the database is remote.
        cluster.psql(f"CREATE ROLE cs_app LOGIN CREATEDB PASSWORD '{PASSWORD}'")
        cluster.create_database("course_supporter", owner="cs_app")
        yield cluster


def _url(pg, ca_file, host: str = "127.0.0.1", sslmode: str = "verify-full") -> str:
    return (f"postgresql://cs_app:{PASSWORD}@{host}:{pg.port}/course_supporter"
            f"?sslmode={sslmode}&sslrootcert={ca_file}")


@pytest.fixture(scope="module")
def ca_file(ca, tmp_path_factory):
    path = tmp_path_factory.mktemp("db-ca") / "postgresql-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="module")
def tls_url(tls_pg, ca_file):
    url = _url(tls_pg, ca_file)
    apply_migrations(url)
    return url


def _plain_logins(pg) -> str:
    """The app's sessions that are not over TLS (none may be), and how many are."""
    return pg.psql("SELECT count(*) FILTER (WHERE NOT s.ssl) || ' of ' || count(*) FROM pg_stat_ssl s "
                   "JOIN pg_stat_activity a USING (pid) WHERE a.usename = 'cs_app'")


async def test_the_app_its_listener_migrations_and_backups_all_speak_verified_tls(
        tls_pg, tls_url, aiohttp_client, app_env, s3, bucket):
    settings = Settings.from_env({**app_env, "DATABASE_URL": tls_url})
    client = await aiohttp_client(await create_app(settings))
    ready = await client.get("/ready")
    assert ready.status == 200 and (await ready.json())["db"] == "ok"

    conn = await asyncpg.connect(tls_url)
    try:
        _, headers = await Factory(conn).tenant_with_key()
        assert (await client.get("/api/v1/courses", headers=headers)).status == 200
        logins = _plain_logins(tls_pg)
        assert logins.startswith("0 of ") and int(logins.split()[-1]) >= 3, logins  # pool, listener, this one
    finally:
        await conn.close()

    assert apply_migrations(tls_url) == []  # psycopg, through yoyo, connected and found nothing to do
    result = await asyncio.to_thread(backup.create, settings, keep_days=14)  # pg_dump, with the URL as libpq's variables
    assert result["size_bytes"] > 0
    # The drill of a database on another host: createdb, pg_restore, dropdb, all with this login over TLS.
    drill = await asyncio.to_thread(backup.drill, settings, result["key"], "course_supporter_drill", create=True)
    assert drill["ok"], drill["detail"]
    assert tls_pg.psql("SELECT count(*) FROM pg_database WHERE datname = 'course_supporter_drill'") == "0"


@pytest.mark.parametrize("wrong", ["another CA", "another name"])
async def test_a_server_that_cannot_prove_it_is_the_one_named_is_refused_by_every_client(
        wrong, tls_pg, tls_url, ca_file, tmp_path, app_env):
    if wrong == "another CA":
        other = tmp_path / "other-ca.pem"
        trustme.CA().cert_pem.write_to_path(str(other))
        url = _url(tls_pg, other)
    else:  # the certificate names 127.0.0.1, not localhost
        url = _url(tls_pg, ca_file, host="localhost")
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncio.wait_for(asyncpg.connect(url), 10)
    with pytest.raises(psycopg.OperationalError, match="certificate"):
        apply_migrations(url)
    with pytest.raises(backup.BackupFailed, match="certificate"):
        await asyncio.to_thread(backup.create, Settings.from_env({**app_env, "DATABASE_URL": url}), keep_days=14)
