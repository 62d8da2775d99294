"""What the benchmarks need in the database: a tenant, an unlimited key and a course with a structure."""

from __future__ import annotations

import asyncpg

from app import courses, tenants
from tests.support.keys import UNLIMITED


async def seed(database_url: str) -> tuple[str, str]:
    conn = await asyncpg.connect(database_url)
    try:
        tenant = await tenants.create_tenant(conn, "Bench")
        key = await tenants.issue_key(conn, tenant["id"], scopes=tenants.SCOPES, label="bench", env="test",
                                      rate_limit_prep=UNLIMITED, rate_limit_check=UNLIMITED, expires_at=None)
        course = await courses.create_course(conn, tenant["id"], "Benchmarking 101", "A course to read")
        modules = [{"title": f"Module {m}", "lessons": [{"title": f"Lesson {m}.{n}", "content": "text " * 50}
                                                         for n in range(1, 5)]} for m in range(1, 4)]
        await courses.replace_structure(conn, tenant["id"], course["id"], modules)
        return key["key"], str(course["id"])
    finally:
        await conn.close()
