"""The appliance's gunicorn entry point: ``gunicorn 'app.serve:create_runner'``.

The same app as ``app.main:create_app`` (the contract's entry point, which keeps
working), handed to aiohttp's gunicorn worker as an ``AppRunner`` whose shutdown
closes a race in aiohttp 3.14: on shutdown it stops accepting, yields to the loop
once, then marks every connection as closing (``Server.pre_shutdown``). A
connection accepted just before whose request had not been read yet then
*ignores* that request (``data_received`` returns early on a closing
connection), waits for it anyway until the shutdown timeout (28.5 s) and is
closed unanswered: nginx answers 502 ("upstream prematurely closed connection"),
and the restart takes 30 s. Seen on the local VPS during deploys and reloads
under load. This runner stops accepting, waits ``ACCEPT_GRACE_S`` so that such
connections read their requests, and only then lets aiohttp close connections
(those with a request in progress finish it first).

nginx keeps idle connections to the app (upstream keep-alive) for at most its
``keepalive_timeout`` (the nginx role's ``nginx_app_keepalive_timeout_s``, 1 s), less
than the app's ``KEEPALIVE_S``: an idle connection is always closed by nginx first, never
by the app just as nginx sends a request on it (nginx cannot retry a POST it sent).
While shutting down, every answer says ``Connection: close``
(``middlewares.add_response_headers``), and ``ACCEPT_GRACE_S`` outlasts nginx's idle
timeout: when aiohttp closes connections, nginx holds none of them idle any more.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from .keys import draining_key
from .main import create_app

# gunicorn.conf.py uses this as graceful_timeout; aiohttp's worker gives the
# runner 95 % of it to finish requests in progress.
GRACEFUL_TIMEOUT_S = 30
# Longer than nginx's upstream keepalive_timeout (tests/templates/test_shared_values.py).
ACCEPT_GRACE_S = 1.5
KEEPALIVE_S = 2  # gunicorn's default, what aiohttp's worker would use; above nginx's 1 s


class GracefulRunner(web.AppRunner):
    async def cleanup(self) -> None:
        self.app[draining_key].set()  # GET /ready: 503 on the connections still open
        for site in list(self.sites):
            await site.stop()  # no new connections for this worker
        # The ones just accepted deliver their requests; nginx lets go of its idle ones.
        await asyncio.sleep(ACCEPT_GRACE_S)
        await super().cleanup()


async def create_runner() -> web.AppRunner:
    return GracefulRunner(await create_app(), access_log=None, keepalive_timeout=KEEPALIVE_S,
                          shutdown_timeout=GRACEFUL_TIMEOUT_S * 0.95)
