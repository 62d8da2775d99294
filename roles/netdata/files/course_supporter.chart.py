# -*- coding: utf-8 -*-
# Description: Course Supporter app check for Netdata's python.d plugin.
# Installed by the netdata role. Reports whether the app's systemd unit is
# active, whether its /health answers 200, how many times systemd restarted it
# after a failure in the last 10 minutes, and whether the last database backup
# (course-supporter-backup.service) failed.

import subprocess
import time
import urllib.error
import urllib.request

from bases.FrameworkServices.SimpleService import SimpleService

priority = 60000
RESTART_WINDOW_S = 600

ORDER = ['status', 'restarts', 'backup']

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
}


class Service(SimpleService):
    def __init__(self, configuration=None, name=None):
        SimpleService.__init__(self, configuration=configuration, name=name)
        self.order = ORDER
        self.definitions = CHARTS
        self.unit = self.configuration.get('unit', 'course-supporter.service')
        self.url = self.configuration.get('url', 'http://127.0.0.1:8000/health')
        self.backup_unit = self.configuration.get('backup_unit', 'course-supporter-backup.service')
        self.timeout = float(self.configuration.get('timeout', 3))
        self.restart_events = []  # monotonic times at which NRestarts went up
        self.last_restarts = None

    def check(self):
        return self._unit_state() is not None

    def _show(self, unit, properties):
        try:
            out = subprocess.run(['systemctl', 'show', unit, '--property=' + properties],
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

    def _backup_failed(self):
        """1 when the backup service's last run failed (a unit that never ran reports success)."""
        props = self._show(self.backup_unit, 'Result,ActiveState') or {}
        return int(props.get('ActiveState') == 'failed' or props.get('Result', 'success') != 'success')

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

    def get_data(self):
        state = self._unit_state()
        if state is None:
            return None
        active_state, restarts = state
        unit_active = int(active_state == 'active')
        healthy = int(unit_active and self._healthy())
        return {
            'up': int(unit_active and healthy),
            'unit_active': unit_active,
            'healthy': healthy,
            'restarts_10m': self._count_restarts(restarts),
            'backup_failed': self._backup_failed(),
        }
