"""`make bench` (`python -m tests.bench.run`; `--api-only` for the first part alone): authenticated GET /api/v1/courses/{id} vs a bare SELECT 1 app,
then the revocation lag under load (tests/bench/revocation.py), the 1 GiB upload
benchmark (tests/bench/upload.py), the LLM gateway's
overhead (tests/bench/gateway.py) and a realistic mix of reads, writes and
uploads (tests/bench/mix.py) at the app and through nginx on the local VPS
(brought up for it, and down again unless it was running).

Both run under the same gunicorn settings (2 aiohttp workers) against the
same throwaway PostgreSQL, loaded by wrk in the same run. These machines are
noisy (shared cores), so both servers stay up and wrk alternates between them
for ROUNDS rounds, the order flipping each round; each side's figure is the
median of its rounds. Target: the app's throughput is at least 0.6 of the bare
app's (ratio >= 0.6).

The bare app uses asyncpg's pool as it comes, which sends a reset query when a
connection is released: two round trips per request. A third server runs the
same bare app with that reset skipped (as the app's own pool skips it), one
round trip per request; its figure and the app's ratio against it are printed
too, for the issue's reading of the target ("one bare DB round trip").

A fourth server runs the floor (tests/bench/floor_app.py): for a key the worker
already knows, the app's own course read on a pooled connection and nothing else,
no middleware, log, validation or rate-limit accounting. Its ratio against the bare app is about the
most any implementation of the issue reaches on this stack, and app/floor shows
how much of the gap is the app's own code.

Then the app runs four times more with one worker each, two processes with
METRICS_ENABLED=true and two with false, all with the same PYTHONHASHSEED, and wrk
alternates between the four the same way: the throughput lost with the metrics on is
their cost (target: at most 3 % of rps). One worker each, so that where wrk's
keep-alive connections land cannot differ between the sides; two processes per side,
because two processes of the same code differ by several percent on their own (their
memory layouts), which one pair would take for the metrics' cost.

Each wrk run also reads the workers' CPU time from /proc: the sides' CPU per
request compares more steadily than their rps on a noisy machine, and the
busiest worker's share shows how wrk's keep-alive connections landed: the first
worker to wake may accept all 16, and then one worker serves the whole run. nginx
never does that to the appliance (a new connection per request), so such a run is
repeated, up to RUN_ATTEMPTS times.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys


from app.migrate import apply_migrations
from tests.support.gunicorn import Gunicorn
from tests.support.pg import PostgresCluster
from tests.support.s3 import S3Server, app_environment

from . import gateway, mix, revocation, upload
from .seed import seed

WORKERS = 2
DURATION_S = 5
ROUNDS = 4
WARM_UP_S = 2
CONNECTIONS = 16
THREADS = 2
TARGET_RATIO = 0.6
# Keeping the metrics may cost at most this share of the app's throughput.
METRICS_TARGET_COST = 0.03
# A few percent is within one round's noise: the metrics' pair runs more rounds.
METRICS_ROUNDS = 10


def wrk(url: str, headers: dict[str, str], duration: int = DURATION_S) -> dict[str, float]:
    args = ["wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{duration}s", "--latency", "--timeout", "5s"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    out = subprocess.run([*args, url], capture_output=True, text=True, check=True, timeout=duration + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{url}: {errors.group(1)} non-2xx responses\n{out}")
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    return {"rps": rps, "p99_ms": float(p99.group(1)) * scale, "requests": requests}


def cpu_seconds(pids: list[int]) -> list[float]:
    """User + system CPU time of each process so far (from /proc/<pid>/stat)."""
    ticks = os.sysconf("SC_CLK_TCK")
    seconds = []
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        seconds.append((int(fields[11]) + int(fields[12])) / ticks)
    return seconds


def host_cpu() -> tuple[int, int]:
    """(stolen, total) CPU ticks of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
    return ticks[7], sum(ticks)


def stolen_share(since: tuple[int, int]) -> float:
    """The share of the machine's CPU time that its host gave to others since ``since``:
    a virtual machine's figures mean little while this is high."""
    stolen, total = host_cpu()
    return (stolen - since[0]) / max(total - since[1], 1)


# wrk opens its keep-alive connections at once, and the first worker to wake may accept
# all of them: one worker then serves the whole run while the others idle, which nginx
# (a new connection per request) never does to the appliance. Such a run is repeated.
LOPSIDED_SHARE = 0.8
RUN_ATTEMPTS = 4


def wrk_with_cpu(url: str, headers: dict[str, str], workers: list[int]) -> dict[str, float]:
    """wrk, plus the gunicorn workers' CPU per request and the busiest worker's share of it;
    with several workers, a run that one worker served alone is run again (RUN_ATTEMPTS at
    most: the last one counts whatever its share)."""
    for attempt in range(1, RUN_ATTEMPTS + 1):
        before = cpu_seconds(workers)
        result = wrk(url, headers)
        used = [after - was for after, was in zip(cpu_seconds(workers), before)]
        total = sum(used) or 1e-9
        share = max(used) / total
        if len(workers) == 1 or share <= LOPSIDED_SHARE:
            break
    return {**result, "cpu_us": total / result["requests"] * 1e6, "busiest_share": share, "attempts": attempt}


def measure_alternating(targets: dict[str, tuple[str, dict[str, str], list[int]]],
                        rounds: int = ROUNDS) -> dict[str, dict]:
    """wrk against each (url, headers, worker pids) target in turn, ``rounds`` times, the
    order flipping each round; per target the medians of rps, p99 and worker CPU per
    request, and every round's rps and busiest worker's share of that CPU."""
    for url, headers, _ in targets.values():
        wrk(url, headers, duration=WARM_UP_S)  # pools, caches, plans
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
    order = list(targets)
    for _ in range(rounds):
        for name in order:
            runs[name].append(wrk_with_cpu(*targets[name]))
        order.reverse()
    return {name: {**{figure: statistics.median(r[figure] for r in results)
                      for figure in ("rps", "p99_ms", "cpu_us")},
                   "rounds": [r["rps"] for r in results],
                   "busiest_shares": [r["busiest_share"] for r in results],
                   "attempts": [r["attempts"] for r in results]}
            for name, results in runs.items()}


def _merged(one: dict, other: dict) -> dict:
    """Two servers' figures as one side's: the median of all their rounds' rps, the mean of
    their median p99 and CPU per request."""
    rounds = one["rounds"] + other["rounds"]
    return {"rps": statistics.median(rounds), "rounds": rounds,
            "p99_ms": (one["p99_ms"] + other["p99_ms"]) / 2, "cpu_us": (one["cpu_us"] + other["cpu_us"]) / 2}


def main(argv: list[str] | None = None) -> int:
    api_only = "--api-only" in (sys.argv[1:] if argv is None else argv)
    if shutil.which("wrk") is None:
        print("wrk is missing: run `make deps`", file=sys.stderr)
        return 1
    started = host_cpu()
    with PostgresCluster() as pg, S3Server() as s3:
        database_url = pg.create_database("bench")
        apply_migrations(database_url)
        key, course_id = asyncio.run(seed(database_url))
        env = app_environment(database_url, s3, s3.create_bucket("bench"), LOG_LEVEL="INFO")
        with contextlib.ExitStack() as servers:
            app_server = servers.enter_context(
                Gunicorn(env, workers=WORKERS, app="app.main:create_app", ready_path="/health"))
            bare_server = servers.enter_context(
                Gunicorn(env, workers=WORKERS, app="tests.bench.bare_app:create_app", ready_path="/select1"))
            one_trip_server = servers.enter_context(
                Gunicorn(env, workers=WORKERS, app="tests.bench.bare_app:create_app_one_round_trip",
                         ready_path="/select1"))
            floor_server = servers.enter_context(
                Gunicorn(env, workers=WORKERS, app="tests.bench.floor_app:create_app", ready_path="/ready"))
            figures = measure_alternating({
                "app": (f"{app_server.url}/api/v1/courses/{course_id}", {"X-API-Key": key},
                        app_server.worker_pids()),
                "floor": (f"{floor_server.url}/api/v1/courses/{course_id}", {"X-API-Key": key},
                          floor_server.worker_pids()),
                "bare": (f"{bare_server.url}/select1", {}, bare_server.worker_pids()),
                "one_trip": (f"{one_trip_server.url}/select1", {}, one_trip_server.worker_pids()),
            })
        # The metrics' cost: one worker each, so that where wrk's connections land cannot
        # differ between the two sides; two processes per side with the same hash seed, so
        # that one process's luck (its memory layout) is not taken for the metrics' cost.
        with contextlib.ExitStack() as servers:
            sides = {f"{name}{n}": servers.enter_context(
                        Gunicorn({**env, "METRICS_ENABLED": value, "PYTHONHASHSEED": "0"}, workers=1,
                                 app="app.main:create_app", ready_path="/health"))
                     for n in (1, 2) for name, value in (("on", "true"), ("off", "false"))}
            pair_figures = measure_alternating({
                name: (f"{server.url}/api/v1/courses/{course_id}", {"X-API-Key": key}, server.worker_pids())
                for name, server in sides.items()}, rounds=METRICS_ROUNDS)
            metrics_figures = {side: _merged(pair_figures[f"{side}1"], pair_figures[f"{side}2"])
                               for side in ("on", "off")}
    api_stolen = stolen_share(started)
    app, floor, bare, one_trip = figures["app"], figures["floor"], figures["bare"], figures["one_trip"]
    with_metrics, no_metrics = metrics_figures["on"], metrics_figures["off"]
    metrics_cost = 1 - with_metrics["rps"] / no_metrics["rps"]
    metrics_cpu_cost = with_metrics["cpu_us"] / no_metrics["cpu_us"] - 1
    ratio = app["rps"] / bare["rps"]
    round_ratios = [a / b for a, b in zip(app["rounds"], bare["rounds"])]
    if api_only:
        revocation_ok = uploads_ok = gateway_ok = mix_ok = mix_vps_ok = True
    else:
        revocation_ok = revocation.report(revocation.run())
        uploads_ok = upload.report(upload.run())
        gateway_ok = gateway.report(gateway.run())
        mix_ok = mix.report(mix.run())
        mix_vps_ok = mix.report(mix.run_vps(), "through nginx on the local VPS")
    print(f"\nbench: {WORKERS} gunicorn workers, wrk -t{THREADS} -c{CONNECTIONS} -d{DURATION_S}s, "
          f"{ROUNDS} alternating rounds, medians")
    print(f"{'':40} {'rps':>10} {'p99 ms':>8}")
    print(f"{'GET /api/v1/courses/{id} (auth+limit)':40} {app['rps']:>10.0f} {app['p99_ms']:>8.2f}")
    print(f"{'  the floor: the course read alone':40} {floor['rps']:>10.0f} {floor['p99_ms']:>8.2f}")
    print(f"{'bare aiohttp+asyncpg SELECT 1':40} {bare['rps']:>10.0f} {bare['p99_ms']:>8.2f}")
    print(f"{'  the same, without the pool reset':40} {one_trip['rps']:>10.0f} {one_trip['p99_ms']:>8.2f}")
    print(f"{'rounds, app rps':40} {' '.join(f'{x:.0f}' for x in app['rounds'])}")
    print(f"{'rounds, floor rps':40} {' '.join(f'{x:.0f}' for x in floor['rounds'])}")
    print(f"{'rounds, bare rps':40} {' '.join(f'{x:.0f}' for x in bare['rounds'])}")
    print(f"{'rounds, ratio':40} {' '.join(f'{x:.2f}' for x in round_ratios)}")
    print(f"{'rounds, one-round-trip bare rps':40} {' '.join(f'{x:.0f}' for x in one_trip['rounds'])}")
    print(f"{'worker CPU per request, µs':40} app {app['cpu_us']:.0f}, floor {floor['cpu_us']:.0f}, "
          f"bare {bare['cpu_us']:.0f}, one round trip {one_trip['cpu_us']:.0f}")
    for name, side in (("app", app), ("floor", floor), ("bare", bare), ("one round trip", one_trip)):
        print(f"{'rounds, busiest worker CPU share, ' + name:40} "
              f"{' '.join(f'{x:.0%}' for x in side['busiest_shares'])} "
              f"(wrk runs: {' '.join(str(x) for x in side['attempts'])})")
    print(f"the floor (the course read alone) against the bare app: {floor['rps'] / bare['rps']:.2f}; "
          f"the app against the floor: {app['rps'] / floor['rps']:.2f}")
    print(f"app against the bare app without the pool reset (one round trip per request): "
          f"{app['rps'] / one_trip['rps']:.2f}")
    print(f"CPU stolen by the host: {api_stolen:.0%} during the API bench, {stolen_share(started):.0%} "
          f"during the whole run (figures from a run with much stolen are noise)")
    verdict = "met" if ratio >= TARGET_RATIO else "NOT met"
    print(f"throughput ratio app/bare = {ratio:.2f} (target >= {TARGET_RATIO}: {verdict})")
    metrics_ok = metrics_cost <= METRICS_TARGET_COST
    print(f"\nmetrics on and off: the app in 2 processes per side (1 worker each, the same hash seed), "
          f"{METRICS_ROUNDS} alternating rounds, medians")
    for name, side in (("METRICS_ENABLED=true", with_metrics), ("METRICS_ENABLED=false", no_metrics)):
        print(f"{name:40} {side['rps']:>10.0f} rps {side['p99_ms']:>8.2f} ms p99 {side['cpu_us']:>6.0f} µs CPU/request; "
              f"rounds {' '.join(f'{x:.0f}' for x in side['rounds'])}")
    print(f"metrics cost: {metrics_cost:.1%} of rps, {metrics_cpu_cost:+.1%} worker CPU per request "
          f"(target <= {METRICS_TARGET_COST:.0%} of rps: {'met' if metrics_ok else 'NOT met'})")
    met = (ratio >= TARGET_RATIO, metrics_ok, revocation_ok, uploads_ok, gateway_ok, mix_ok, mix_vps_ok)
    return 0 if all(met) else 1


if __name__ == "__main__":
    sys.exit(main())
