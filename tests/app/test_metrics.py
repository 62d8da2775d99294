"""GET /metrics: the app's metrics in the Prometheus text format, summed across gunicorn's
workers, surviving a worker's restart, and bounded: no label grows with tenants, keys, ids
or the model names tenants choose."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import urllib.error
import urllib.request
import uuid

import aiohttp
import pytest

from tests.support.gunicorn import Gunicorn
from tests.support.metrics import samples as _samples
from tests.support.vps import wait_for

TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"


def _value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def _scrape(client) -> dict:
    resp = await client.get("/metrics")
    assert resp.status == 200 and resp.headers["Content-Type"] == TEXT_FORMAT
    return _samples(await resp.text())


async def test_requests_are_counted_by_route_template_method_and_status(client, auth, make_course):
    before = await _scrape(client)
    course = await make_course()
    await client.get(f"/api/v1/courses/{course['id']}", headers=auth)
    await client.get(f"/api/v1/courses/{uuid.uuid4()}", headers=auth)
    await client.get("/api/v1/courses", headers={"X-API-Key": "cs_live_" + "0" * 32})
    after = await _scrape(client)
    route = "/api/v1/courses/{course_id}"
    for status, count in (("200", 1), ("404", 1)):
        labels = {"route": route, "method": "GET", "status": status}
        assert _value(after, "course_supporter_http_requests_total", **labels) - \
            _value(before, "course_supporter_http_requests_total", **labels) == count
    assert _value(after, "course_supporter_http_requests_total", route="/api/v1/courses", method="GET",
                  status="401") >= 1
    assert _value(after, "course_supporter_http_request_duration_seconds_count", route=route, method="GET") >= 2
    assert _value(after, "course_supporter_auth_duration_seconds_count") > \
        _value(before, "course_supporter_auth_duration_seconds_count")
    assert not [key for key in after if course["id"] in str(key)]  # no id ever becomes a label


async def test_rate_limit_rejections_and_llm_calls_are_counted(client, factory, fresh_llm):
    _, headers = await factory.tenant_with_key(prep=1)
    before = await _scrape(client)
    for _ in range(2):
        await client.post("/api/v1/gpt", json={"prompt": "Hi"}, headers=headers)
    after = await _scrape(client)
    assert _value(after, "course_supporter_rate_limited_total", scope="prep") - \
        _value(before, "course_supporter_rate_limited_total", scope="prep") == 1
    ok = {"provider": "default", "model": "gpt-4o-mini", "outcome": "ok"}
    assert _value(after, "course_supporter_llm_calls_total", **ok) - \
        _value(before, "course_supporter_llm_calls_total", **ok) == 1
    assert _value(after, "course_supporter_llm_tokens_total", provider="default", direction="output") > \
        _value(before, "course_supporter_llm_tokens_total", provider="default", direction="output")
    assert _value(after, "course_supporter_llm_cost_usd_total", provider="default") > \
        _value(before, "course_supporter_llm_cost_usd_total", provider="default")
    assert _value(after, "course_supporter_llm_provider_latency_seconds_count", provider="default") > \
        _value(before, "course_supporter_llm_provider_latency_seconds_count", provider="default")


async def test_uploads_and_their_bytes_are_counted(client, auth, make_course):
    course = await make_course()
    before = await _scrape(client)
    await client.post(f"/api/v1/courses/{course['id']}/materials?filename=a.bin", data=b"x" * 1000, headers=auth)
    await client.post(f"/api/v1/courses/{course['id']}/materials", data=b"x", headers=auth)  # no file name: 422
    after = await _scrape(client)
    assert _value(after, "course_supporter_upload_bytes_total") - _value(before, "course_supporter_upload_bytes_total") \
        == 1000
    assert _value(after, "course_supporter_uploads_failed_total", reason="validation_failed") - \
        _value(before, "course_supporter_uploads_failed_total", reason="validation_failed") == 1
    assert _value(after, "course_supporter_uploads_in_flight") == 0
    assert _value(after, "course_supporter_db_pool_connections_in_use") == 0
    assert _value(after, "course_supporter_db_pool_max_connections") > 0


async def _one_tenants_traffic(client, headers: dict, course_id: str) -> None:
    """The same kinds of request whoever sends them: reads, a 404, an LLM call naming a model
    of the tenant's own choosing, an upload."""
    await client.get(f"/api/v1/courses/{course_id}", headers=headers)
    await client.get(f"/api/v1/courses/{uuid.uuid4()}", headers=headers)
    await client.get(f"/api/v1/no/such/{uuid.uuid4()}", headers=headers)
    await client.post("/api/v1/gpt", json={"prompt": "Hi", "model": f"model-{uuid.uuid4().hex[:8]}"}, headers=headers)
    await client.post(f"/api/v1/courses/{course_id}/materials?filename=a.txt", data=b"notes", headers=headers)


async def test_the_series_do_not_grow_with_tenants(client, factory, db, fresh_llm, make_course):
    """The scrape after one tenant's traffic has the same series as after 10,000 tenants exist
    and a sample of them send the same kinds of request, with their own ids and model names."""
    _, headers = await factory.tenant_with_key()
    await _one_tenants_traffic(client, headers, (await make_course(auth=headers))["id"])
    one = set(await _scrape(client))
    await db.execute("INSERT INTO tenants (name) SELECT 'bulk-' || i || '-' || $1 FROM generate_series(1, 10000) i",
                     uuid.uuid4().hex[:8])
    assert await db.fetchval("SELECT count(*) FROM tenants") >= 10_000
    for _ in range(40):
        _, headers = await factory.tenant_with_key()
        await _one_tenants_traffic(client, headers, (await make_course(auth=headers))["id"])
    many = set(await _scrape(client))
    await db.execute("DELETE FROM tenants WHERE name LIKE 'bulk-%'")
    assert many == one, sorted(many ^ one)[:20]


def _scrape_server(url: str) -> dict:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        return _samples(resp.read().decode())


@pytest.mark.gunicorn
def test_metrics_add_up_across_workers_and_survive_their_restart(app_env, tmp_path):
    """Two workers: a scrape counts both workers' requests (within the second a worker keeps
    them before writing them); after a reload (new workers) no counter has lost anything,
    the stopping workers having written theirs, and the old workers' live gauges are gone
    with their files."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    requests = 200
    with Gunicorn({**app_env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}, workers=2) as server:
        first_workers = server.worker_pids()

        async def load():
            # A new connection per request, so that both workers take some.
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
                for _ in range(requests // 10):
                    answers = [session.get(server.url + "/health") for _ in range(10)]
                    for answer in await asyncio.gather(*answers):
                        answer.release()

        asyncio.run(load())
        health = {"route": "/health", "method": "GET", "status": "200"}
        # A worker writes what it tallied every second: the other worker's last second shows next.
        assert wait_for(lambda: _value(_scrape_server(server.url), "course_supporter_http_requests_total",
                                       **health) >= requests, timeout=5, interval=0.2)  # (and readiness probes)
        counted = _value(_scrape_server(server.url), "course_supporter_http_requests_total", **health)
        served = {int(m.group(1)) for f in metrics_dir.iterdir() if (m := re.match(r"counter_(\d+)\.db", f.name))}
        assert set(first_workers) <= served, "both workers served requests and wrote their counts"

        os.kill(server.proc.pid, signal.SIGHUP)  # gunicorn replaces its workers
        assert wait_for(lambda: not set(server.worker_pids()) & set(first_workers) and
                        len(server.worker_pids()) == 2, timeout=60, interval=0.5)
        server.wait_healthy()
        after = _scrape_server(server.url)
        assert _value(after, "course_supporter_http_requests_total", **health) >= counted  # nothing lost
        # Live gauges count the live workers only: two pools, not four.
        assert _value(after, "course_supporter_db_pool_max_connections") == 2 * 10
        stale = [f.name for f in metrics_dir.iterdir() if f.name.startswith("gauge_live")
                 and int(re.search(r"_(\d+)\.db", f.name).group(1)) in first_workers]
        assert stale == []
    assert metrics_dir.exists()  # a directory given to gunicorn is the caller's: left in place


@pytest.mark.gunicorn
def test_gunicorn_makes_and_removes_its_own_metrics_directory(app_env, tmp_path):
    """Without PROMETHEUS_MULTIPROC_DIR, gunicorn.conf.py makes a fresh directory at start-up
    (under TMPDIR: the service's private /tmp on the appliance) and removes it when the
    service stops."""
    made = lambda: list(tmp_path.glob("course-supporter-metrics-*"))  # noqa: E731
    with Gunicorn({**app_env, "TMPDIR": str(tmp_path)}, workers=1) as server:
        assert _scrape_server(server.url)
        assert len(made()) == 1 and any(made()[0].iterdir())
    assert wait_for(lambda: not made(), timeout=10, interval=0.2)


@pytest.mark.gunicorn
def test_with_metrics_switched_off_the_app_serves_and_metrics_is_a_json_404(app_env):
    with Gunicorn({**app_env, "METRICS_ENABLED": "false"}, workers=1) as server:
        with urllib.request.urlopen(server.url + "/health", timeout=10) as resp:
            assert resp.status == 200
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(server.url + "/metrics", timeout=10)
        assert answer.value.code == 404
        assert json.loads(answer.value.read())["error"]["code"] == "not_found"


def test_tallied_observations_land_in_the_buckets_and_sum_a_direct_observe_gives():
    """The hot path tallies in memory and flushes later (app.metrics): the result is the
    histogram that prometheus-client's own observe() makes, edges included."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from app.metrics import _HistogramTally

    registry = CollectorRegistry()
    buckets = (0.01, 0.1, 1, 10)
    direct = Histogram("direct", "d", buckets=buckets, registry=registry)
    tallied = Histogram("tallied", "t", buckets=buckets, registry=registry)
    tally = _HistogramTally(tallied)
    for seconds in (0.0, 0.005, 0.01, 0.0100001, 0.1, 0.5, 1, 9.99, 10, 10.5, 3600):
        direct.observe(seconds)
        tally.observe(seconds)
    tally.flush()
    tally.flush()  # nothing new: nothing written twice
    scraped = _samples(generate_latest(registry).decode())

    def of(prefix: str) -> dict:
        return {(name.removeprefix(prefix), labels): value for (name, labels), value in scraped.items()
                if name.startswith(prefix) and not name.endswith("_created")}

    assert of("direct") == of("tallied") and of("direct")[("_count", ())] == 11
