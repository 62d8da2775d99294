"""A course made over real HTTP, at an app running as a server (gunicorn, the local VPS).

The in-process app tests make theirs with the ``make_course`` fixture of tests/app/conftest.py."""

from __future__ import annotations

import aiohttp


async def create_course(session: aiohttp.ClientSession, base_url: str, headers: dict[str, str], title: str, *,
                        structure: dict | None = None) -> dict:
    """POST ``base_url``/api/v1/courses and return the created course; with ``structure``,
    also PUT it as the course's structure and add the stored one as ``"structure"``."""
    async with session.post(f"{base_url}/api/v1/courses", json={"title": title}, headers=headers) as resp:
        assert resp.status == 201, await resp.text()
        course = await resp.json()
    if structure is not None:
        async with session.put(f"{base_url}/api/v1/courses/{course['id']}/structure", json=structure,
                               headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            course["structure"] = await resp.json()
    return course
