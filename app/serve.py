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
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from .main import create_app

# gunicorn.conf.py uses this as graceful_timeout; aiohttp's worker gives the
# runner 95 % of it to finish requests in progress.
GRACEFUL_TIMEOUT_S = 30
ACCEPT_GRACE_S = 0.5
KEEPALIVE_S = 2  # gunicorn's default, what aiohttp's worker would use


class GracefulRunner(web.AppRunner):
    async def cleanup(self) -> None:
        for site in list(self.sites):
            await site.stop()  # no new connections for this worker
        await asyncio.sleep(ACCEPT_GRACE_S)  # the ones just accepted deliver their requests
        await super().cleanup()


async def create_runner() -> web.AppRunner:
    return GracefulRunner(await create_app(), access_log=None, keepalive_timeout=KEEPALIVE_S,
                          shutdown_timeout=GRACEFUL_TIMEOUT_S * 0.95)
