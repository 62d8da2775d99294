"""A fake Telegram Bot API over HTTPS: records every message it receives as a JSON line.

Netdata on the local VPS reaches it as ``api.telegram.org`` through curl's
``--connect-to``; its certificate comes from the local CA. Run as
``python -m tests.localvps.telegram --listen HOST:PORT --cert C --key K --log FILE``.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import ssl

from aiohttp import web

_log_key = web.AppKey("log", str)
_ids = itertools.count(1)


async def send_message(request: web.Request) -> web.Response:
    if request.content_type == "application/json":
        fields = await request.json()
    else:
        fields = dict(await request.post())
    fields = {**request.query, **fields}  # Netdata sends chat_id in the query string
    chat_id, text = fields.get("chat_id"), fields.get("text")
    if not chat_id or not text:
        return web.json_response({"ok": False, "error_code": 400,
                                  "description": "Bad Request: chat_id and text are required"}, status=400)
    record = {
        "received_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "bot": request.match_info["token"].split(":", 1)[0],  # the bot id, never its secret
        "chat_id": str(chat_id),
        "text": text,
        "parse_mode": fields.get("parse_mode"),
    }
    with open(request.app[_log_key], "a", encoding="utf-8") as log:
        log.write(json.dumps(record) + "\n")
    return web.json_response({"ok": True, "result": {"message_id": next(_ids), "chat": {"id": chat_id},
                                                     "text": text}})


def create_app(log_path: str) -> web.Application:
    app = web.Application()
    app[_log_key] = log_path
    app.router.add_post("/bot{token}/sendMessage", send_message)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--log", required=True)
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
    web.run_app(create_app(args.log), host=host, port=int(port), ssl_context=context, print=None)


if __name__ == "__main__":
    main()
