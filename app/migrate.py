"""Applies the yoyo migrations in ``migrations/``.

Safe on every deploy and from several processes at once: a PostgreSQL
advisory lock serialises runs, so the second one waits and then finds
nothing left to apply.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
from yoyo import get_backend, read_migrations

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
# An arbitrary constant naming "course-supporter schema migrations".
_ADVISORY_LOCK_ID = 0x436F7572  # "Cour"


def _yoyo_url(database_url: str) -> str:
    scheme, rest = database_url.split("://", 1)
    return f"postgresql+psycopg://{rest}"


def apply_migrations(database_url: str, migrations_dir: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply what is pending; return the ids applied (empty when up to date)."""
    with psycopg.connect(database_url, autocommit=True, connect_timeout=10) as lock_conn:
        lock_conn.execute("SELECT pg_advisory_lock(%s)", (_ADVISORY_LOCK_ID,))
        try:
            backend = get_backend(_yoyo_url(database_url))
            try:
                migrations = read_migrations(str(migrations_dir))
                with backend.lock():
                    pending = backend.to_apply(migrations)
                    backend.apply_migrations(pending)
                return [m.id for m in pending]
            finally:
                backend.connection.close()
        finally:
            lock_conn.execute("SELECT pg_advisory_unlock(%s)", (_ADVISORY_LOCK_ID,))
