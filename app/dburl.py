"""DATABASE_URL as each PostgreSQL client of the app reads it.

asyncpg (the app, the key-cache listener, the admin CLI), psycopg (the migrations) and
libpq's own tools (pg_dump, pg_restore for backups) all take the same URL. The query
parameters accepted are the ones all three understand alike; pg_dump and pg_restore get
them as libpq's environment variables, so that no password reaches a command line.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote, urlsplit

# Query parameter -> libpq's environment variable for it.
QUERY_PARAMETERS = {
    "host": "PGHOST",
    "port": "PGPORT",
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "sslcrl": "PGSSLCRL",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
    "application_name": "PGAPPNAME",
}
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def libpq_env(database_url: str) -> dict[str, str]:
    """The connection as libpq's environment variables."""
    url = urlsplit(database_url)
    env = {"PGHOST": url.hostname or "", "PGPORT": str(url.port or 5432), "PGUSER": unquote(url.username or ""),
           "PGDATABASE": unquote(url.path.lstrip("/"))}
    if url.password:
        env["PGPASSWORD"] = unquote(url.password)
    for name, value in parse_qsl(url.query, keep_blank_values=True):
        if name in QUERY_PARAMETERS and value:
            env[QUERY_PARAMETERS[name]] = value
    return env
