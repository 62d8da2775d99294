# -*- coding: utf-8 -*-
# Description: Course Supporter checks for Netdata's python.d plugin.
# Installed by the netdata role (see its README). Every update it reports:
# - whether the app's systemd unit is active and its /health answers 200, how many times
#   systemd restarted it after a failure in the last 10 minutes;
# - whether the last database backup (course-supporter-backup.service) failed, and how old
#   the newest backup in the bucket is; whether the last restore drill failed, and how long
#   ago one last passed;
# - from the app's /metrics (Prometheus text, read with Debian's python3-prometheus-client):
#   requests and 5xx, the p99 latency of the last minute, rate-limit rejections, LLM calls by
#   outcome and fallbacks, LLM spend, uploads, S3 errors and the database pool;
# - the public URL (https://<domain>/health through nginx and TLS, by its public name) and
#   how many days its certificate has left.

import collections
import datetime
import http.client
import re
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

from bases.FrameworkServices.SimpleService import SimpleService
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families

priority = 60000
RESTART_WINDOW_S = 600
METRIC = 'course_supporter_'
# Values Netdata keeps as integers are sent multiplied by this and shown divided by it.
PRECISION = 100

ORDER = ['status', 'restarts', 'backup', 'backup_age', 'restore_drill', 'restore_drill_age', 'requests', 'latency', 'rate_limited', 'llm_calls',
         'llm_cost', 'uploads', 'upload_bytes', 'upload_errors', 'db_pool', 'db_pool_saturation', 'public',
         'certificate']

# Which charts each part of the check draws; a part whose setting is empty (the host runs no
# app, takes no backups, or serves no public URL) draws none, and its alarms attach to nothing.
PARTS = {
    'unit': ['status', 'restarts', 'requests', 'latency', 'rate_limited', 'llm_calls', 'llm_cost', 'uploads',
             'upload_bytes', 'upload_errors', 'db_pool', 'db_pool_saturation'],
    'backup_unit': ['backup', 'backup_age', 'restore_drill', 'restore_drill_age'],
    'public_url': ['public', 'certificate'],
}

CHARTS = {
    'status': {
        'options': [None, 'course-supporter up (unit active and /health 200)', 'up', 'course-supporter',
                    'course_supporter.status', 'line'],
        'lines': [['up'], ['unit_active'], ['healthy']],
    },
    'restarts': {
        'options': [None, 'course-supporter automatic restarts in the last 10 minutes', 'restarts',
                    'course-supporter', 'course_supporter.restarts', 'line'],
        'lines': [['restarts_10m']],
    },
    'backup': {
        'options': [None, 'course-supporter: did the last database backup fail', 'failed', 'course-supporter',
                    'course_supporter.backup', 'line'],
        'lines': [['backup_failed']],
    },
    'backup_age': {
        'options': [None, 'course-supporter: age of the newest database backup', 'hours', 'course-supporter',
                    'course_supporter.backup_age', 'line'],
        'lines': [['backup_age_hours', None, 'absolute', 1, PRECISION]],
    },
    'restore_drill': {
        'options': [None, 'course-supporter: did the last restore drill fail', 'failed', 'course-supporter',
                    'course_supporter.restore_drill', 'line'],
        'lines': [['drill_failed']],
    },
    'restore_drill_age': {
        'options': [None, 'course-supporter: days since a restore drill last passed, and how long it took',
                    'days / seconds', 'course-supporter', 'course_supporter.restore_drill_age', 'line'],
        'lines': [['drill_age_days', None, 'absolute', 1, PRECISION],
                  ['drill_seconds', None, 'absolute', 1, PRECISION]],
    },
    'requests': {
        'options': [None, 'course-supporter HTTP requests', 'requests/s', 'http', 'course_supporter.requests',
                    'line'],
        'lines': [['requests', None, 'incremental'], ['errors_5xx', None, 'incremental']],
    },
    'latency': {
        'options': [None, 'course-supporter response time over the last minute (LLM calls and uploads left out)',
                    'milliseconds', 'http', 'course_supporter.latency', 'line'],
        'lines': [['p50_ms', None, 'absolute', 1, PRECISION], ['p99_ms', None, 'absolute', 1, PRECISION]],
    },
    'rate_limited': {
        'options': [None, 'course-supporter requests refused for the key\'s rate limit', 'requests/s', 'http',
                    'course_supporter.rate_limited', 'line'],
        'lines': [['rate_limited', 'refused', 'incremental']],
    },
    'llm_calls': {
        'options': [None, 'course-supporter LLM provider calls', 'calls/s', 'llm', 'course_supporter.llm_calls',
                    'line'],
        'lines': [['llm_ok', None, 'incremental'], ['llm_failed', None, 'incremental'],
                  ['llm_fallbacks', None, 'incremental']],
    },
    'llm_cost': {
        'options': [None, 'course-supporter LLM spend', 'USD/min', 'llm', 'course_supporter.llm_cost', 'area'],
        'lines': [['llm_cost_microusd', 'spend', 'incremental', 60, 1000000]],
    },
    'uploads': {
        'options': [None, 'course-supporter uploads', 'uploads', 'uploads', 'course_supporter.uploads', 'line'],
        'lines': [['uploads_in_flight', 'in flight'], ['uploads_waiting', 'waiting for a slot']],
    },
    'upload_bytes': {
        'options': [None, 'course-supporter upload bytes received', 'KiB/s', 'uploads',
                    'course_supporter.upload_bytes', 'area'],
        'lines': [['upload_bytes', 'received', 'incremental', 1, 1024]],
    },
    'upload_errors': {
        'options': [None, 'course-supporter failed uploads and S3 errors', 'events/s', 'uploads',
                    'course_supporter.upload_errors', 'line'],
        'lines': [['uploads_failed', 'failed uploads', 'incremental'], ['s3_errors', 'S3 errors', 'incremental']],
    },
    'db_pool': {
        'options': [None, 'course-supporter database pool', 'connections', 'database', 'course_supporter.db_pool',
                    'line'],
        'lines': [['db_in_use', 'in use'], ['db_waiting', 'waiting'], ['db_max', 'max']],
    },
    'db_pool_saturation': {
        'options': [None, 'course-supporter database pool in use', 'percentage', 'database',
                    'course_supporter.db_pool_saturation', 'line'],
        'lines': [['db_used_percent', None, 'absolute', 1, PRECISION]],
    },
    'public': {
        'options': [None, 'course-supporter public URL answers 200 (through nginx and TLS)', 'up', 'public',
                    'course_supporter.public', 'line'],
        'lines': [['public_up']],
    },
    'certificate': {
        'options': [None, 'course-supporter certificate: days until it expires', 'days', 'public',
                    'course_supporter.certificate', 'line'],
        'lines': [['cert_days_left', None, 'absolute', 1, PRECISION]],
    },
}


class LatencyWindow(object):
    """Quantiles of the latency histogram over the last ``seconds``, from its cumulative
    buckets: the newest reading minus the newest one at least ``seconds`` old."""

    def __init__(self, seconds):
        self.seconds = seconds
        self.readings = collections.deque()  # (monotonic time, {upper bound: cumulative count})

    def add(self, now, buckets):
        if self.readings and any(buckets.get(le, 0) < count for le, count in self.readings[-1][1].items()):
            self.readings.clear()  # the counters restarted (the app did): start over
        self.readings.append((now, buckets))
        while len(self.readings) > 1 and now - self.readings[1][0] >= self.seconds:
            self.readings.popleft()

    def quantile(self, q):
        """As Prometheus's histogram_quantile (linear within a bucket); 0 without requests."""
        if len(self.readings) < 2:
            return 0.0
        old, new = self.readings[0][1], self.readings[-1][1]
        bounds = sorted(new)
        delta = [(le, new[le] - old.get(le, 0)) for le in bounds]
        total = delta[-1][1] if delta and bounds[-1] == float('inf') else 0
        if total <= 0:
            return 0.0
        rank = q * total
        lower, below = 0.0, 0
        for le, count in delta:
            if count >= rank:
                if le == float('inf'):
                    return lower
                return lower + (le - lower) * (rank - below) / max(count - below, 1e-9)
            lower, below = le, count
        return lower


class PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to ``address`` with the URL's host name for SNI, the certificate and Host
    (curl's --resolve); without an address, the name as DNS resolves it."""

    def __init__(self, host, port, address, **kwargs):
        http.client.HTTPSConnection.__init__(self, host, port, **kwargs)
        self.address = address or host

    def connect(self):
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


class Service(SimpleService):
    def __init__(self, configuration=None, name=None):
        SimpleService.__init__(self, configuration=configuration, name=name)
        self.definitions = CHARTS
        self.unit = self.configuration.get('unit', 'course-supporter.service')
        self.url = self.configuration.get('url', 'http://127.0.0.1:8000/health')
        self.metrics_url = self.configuration.get('metrics_url', 'http://127.0.0.1:8000/metrics')
        self.backup_unit = self.configuration.get('backup_unit', 'course-supporter-backup.service')
        self.backup_timer = self.configuration.get('backup_timer', 'course-supporter-backup.timer')
        self.drill_unit = self.configuration.get('drill_unit', 'course-supporter-restore-drill.service')
        self.drill_timer = self.configuration.get('drill_timer', 'course-supporter-restore-drill.timer')
        self.public_url = self.configuration.get('public_url', '')
        self.public_address = self.configuration.get('public_address', '')
        self.public_every = float(self.configuration.get('public_every', 10))
        self.timeout = float(self.configuration.get('timeout', 3))
        self.latency = LatencyWindow(float(self.configuration.get('latency_window', 60)))
        self.latency_excluded = re.compile(self.configuration.get('latency_excluded') or r'(?!)')
        self.restart_events = []  # monotonic times at which NRestarts went up
        self.last_restarts = None
        self.started = time.time()
        self.newest_backup = None  # Unix time; kept while the app restarts and has not looked yet
        self.last_good_drill = None  # the same
        self.drill_seconds = None
        self.public = {}
        self.public_checked = None
        parts = {'unit': self.unit, 'backup_unit': self.unit and self.backup_unit, 'public_url': self.public_url}
        self.order = [chart for chart in ORDER if any(parts[part] and chart in charts for part, charts in PARTS.items())]

    def check(self):
        if self.unit:
            return self._unit_state() is not None
        return bool(self.order)

    # --- systemd -----------------------------------------------------------------------

    def _show(self, unit, properties):
        try:
            out = subprocess.run(['systemctl', 'show', unit, '--timestamp=unix', '--property=' + properties],
                                 capture_output=True, text=True, timeout=5).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            self.error('systemctl show {0}: {1}'.format(unit, exc))
            return None
        return dict(line.split('=', 1) for line in out.splitlines() if '=' in line)

    def _unit_state(self):
        props = self._show(self.unit, 'ActiveState,NRestarts')
        if props is None:
            return None
        return props.get('ActiveState', 'unknown'), int(props.get('NRestarts') or 0)

    def _failed(self, unit):
        """1 when the oneshot ``unit``'s last run failed (a unit that never ran reports success)."""
        props = self._show(unit, 'Result,ActiveState') or {}
        return int(props.get('ActiveState') == 'failed' or props.get('Result', 'success') != 'success')

    def _age_s(self, since, timer):
        """Seconds since ``since`` (Unix time); with none yet, since ``timer`` started (or
        this check did): a timer that never produced anything ages too."""
        if since is None:
            stamp = (self._show(timer, 'ActiveEnterTimestamp') or {}).get('ActiveEnterTimestamp', '')
            since = float(stamp[1:]) if stamp.startswith('@') else self.started
        return max(time.time() - since, 0)

    def _healthy(self):
        try:
            with urllib.request.urlopen(self.url, timeout=self.timeout) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def _count_restarts(self, restarts):
        now = time.monotonic()
        if self.last_restarts is not None and restarts > self.last_restarts:
            self.restart_events.extend([now] * (restarts - self.last_restarts))
        self.last_restarts = restarts  # a manual stop/start resets systemd's counter
        self.restart_events = [t for t in self.restart_events if now - t < RESTART_WINDOW_S]
        return len(self.restart_events)

    # --- the app's metrics -------------------------------------------------------------

    def _scrape(self):
        """{sample name: [(labels, value), ...]}, or None when /metrics does not answer."""
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=self.timeout) as response:
                text = response.read().decode('utf-8')
        except (urllib.error.URLError, OSError, ValueError) as exc:
            self.debug('metrics: {0}'.format(exc))
            return None
        samples = collections.defaultdict(list)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[sample.name].append((sample.labels, sample.value))
        return samples

    def _metrics(self, samples):
        def total(name, **match):
            return sum(value for labels, value in samples.get(METRIC + name, ())
                       if all(labels.get(k) == v for k, v in match.items()))

        requests = samples.get(METRIC + 'http_requests_total', ())
        buckets = collections.Counter()
        for labels, value in samples.get(METRIC + 'http_request_duration_seconds_bucket', ()):
            if not self.latency_excluded.search('{0} {1}'.format(labels.get('method'), labels.get('route'))):
                buckets[float(labels['le'])] += value
        self.latency.add(time.monotonic(), dict(buckets))
        llm_calls = samples.get(METRIC + 'llm_calls_total', ())
        in_use, pool_max = total('db_pool_connections_in_use'), total('db_pool_max_connections')
        newest_backup = total('last_backup_timestamp_seconds')
        if newest_backup > 0:
            self.newest_backup = newest_backup
        last_good_drill = total('restore_drill_last_success_timestamp_seconds')
        if last_good_drill > 0:
            self.last_good_drill = last_good_drill
        if samples.get(METRIC + 'restore_drill_last_duration_seconds'):
            self.drill_seconds = total('restore_drill_last_duration_seconds')
        return {
            'requests': int(sum(value for _, value in requests)),
            'errors_5xx': int(sum(value for labels, value in requests if labels.get('status', '').startswith('5'))),
            'p50_ms': int(self.latency.quantile(0.5) * 1000 * PRECISION),
            'p99_ms': int(self.latency.quantile(0.99) * 1000 * PRECISION),
            'rate_limited': int(total('rate_limited_total')),
            'llm_ok': int(sum(value for labels, value in llm_calls if labels.get('outcome') == 'ok')),
            'llm_failed': int(sum(value for labels, value in llm_calls if labels.get('outcome') != 'ok')),
            'llm_fallbacks': int(total('llm_fallbacks_total')),
            'llm_cost_microusd': int(total('llm_cost_usd_total') * 1000000),
            'uploads_in_flight': int(total('uploads_in_flight')),
            'uploads_waiting': int(total('uploads_waiting')),
            'upload_bytes': int(total('upload_bytes_total')),
            'uploads_failed': int(total('uploads_failed_total')),
            's3_errors': int(total('s3_errors_total')),
            'db_in_use': int(in_use),
            'db_waiting': int(total('db_pool_acquires_waiting')),
            'db_max': int(pool_max),
            'db_used_percent': int(in_use * 100 * PRECISION / pool_max) if pool_max else 0,
        }

    # --- the public URL and its certificate ----------------------------------------------

    def _public(self):
        """Checked every ``public_every`` seconds (the last result in between)."""
        if not self.public_url:
            return {}
        now = time.monotonic()
        if self.public_checked is not None and now - self.public_checked < self.public_every:
            return self.public
        self.public_checked = now
        url = urllib.parse.urlsplit(self.public_url)
        host, port = url.hostname, url.port or 443
        self.public = {'public_up': int(self._public_answers(host, port, url.path or '/'))}
        days = self._certificate_days_left(host, port)
        if days is not None:
            self.public['cert_days_left'] = int(days * PRECISION)
        return self.public

    def _public_answers(self, host, port, path):
        """GET the public URL with the certificate verified for its name: 200 or not."""
        connection = PinnedHTTPSConnection(host, port, self.public_address, timeout=self.timeout,
                                           context=ssl.create_default_context())
        try:
            connection.request('GET', path, headers={'User-Agent': 'netdata course_supporter'})
            return connection.getresponse().status == 200
        except (OSError, http.client.HTTPException) as exc:
            self.debug('public URL: {0}'.format(exc))
            return False
        finally:
            connection.close()

    def _certificate_days_left(self, host, port):
        """Days until the certificate the site serves for its name expires, trusted or not
        (an expired one shows a negative number)."""
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        try:
            with socket.create_connection((self.public_address or host, port), self.timeout) as sock:
                with context.wrap_socket(sock, server_hostname=host) as tls:
                    der = tls.getpeercert(binary_form=True)
        except OSError as exc:
            self.debug('certificate: {0}'.format(exc))
            return None
        not_after = x509.load_der_x509_certificate(der).not_valid_after  # naive, UTC
        return (not_after - datetime.datetime.utcnow()).total_seconds() / 86400

    def get_data(self):
        data = {}
        if self.unit:
            state = self._unit_state()
            if state is None:
                return None
            active_state, restarts = state
            unit_active = int(active_state == 'active')
            healthy = int(unit_active and self._healthy())
            data.update({
                'up': int(unit_active and healthy),
                'unit_active': unit_active,
                'healthy': healthy,
                'restarts_10m': self._count_restarts(restarts),
            })
            samples = self._scrape() if unit_active else None
            if samples is not None:
                data.update(self._metrics(samples))
        if self.unit and self.backup_unit:  # the backups' figures come from this host's app
            data['backup_failed'] = self._failed(self.backup_unit)
            data['drill_failed'] = self._failed(self.drill_unit)
            data['backup_age_hours'] = int(self._age_s(self.newest_backup, self.backup_timer) / 3600 * PRECISION)
            data['drill_age_days'] = int(self._age_s(self.last_good_drill, self.drill_timer) / 86400 * PRECISION)
            if self.drill_seconds is not None:
                data['drill_seconds'] = int(self.drill_seconds * PRECISION)
        data.update(self._public())
        return data
