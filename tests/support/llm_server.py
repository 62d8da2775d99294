"""A local OpenAI-compatible chat-completions server for tests and the local VPS.

Answers ``POST /v1/chat/completions`` (plain and ``stream: true`` SSE) and
``GET /v1/models``. By default every call succeeds: with ``response_format``
``json_object`` the answer is one JSON object carrying every key the app asks
for (structure, homework check, presentation), which each caller picks from;
otherwise a short text. Tests script failures on demand through a queue:

    POST /_control/behaviours  {"behaviours": [{"status": 429, "retry_after": 1},
                                               {"status": 500}, {"delay_s": 3},
                                               {"content": "not json"}, {"disconnect": true},
                                               {"chunk_delay_s": 0.2}, {"break_after_words": 3},
                                               {"redirect_to": "http://elsewhere/v1/chat/completions"},
                                               {"raw": {"content_type": "text/html", "body": "<html>"}},
                                               {"fill_max_tokens": true},
                                               {"reply_fields": {"usage": [1], "model": 5}}]}

``fill_max_tokens`` answers with as many words (this server's tokens) as the request's
``max_tokens`` allows; ``raw`` answers 200 with that body as it is; ``reply_fields`` replaces fields of the
completion (of the last chunk, the one with the usage, when streaming).

Each request takes the next behaviour (then the default); ``GET /_control/requests``
lists what was received (for streams also whether the stream ``completed``, was
``broken`` on purpose, or the client disconnected: ``client_disconnected``) and ``DELETE /_control/requests`` resets both.
Run standalone: ``python -m tests.support.llm_server --listen HOST:PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import deque

from aiohttp import web

from .net import Service, free_port, stop_process, wait_for_port

MODELS = ["gpt-4o-mini", "gpt-4o", "fake-small"]
_queue_key = web.AppKey("behaviours", deque)
_log_key = web.AppKey("requests", list)

DEFAULT_JSON = {
    "modules": [{"title": "Foundations", "lessons": [{"title": "Introduction", "content": "What the course covers."},
                                                     {"title": "Key ideas", "content": "The core concepts."}]},
                {"title": "Practice", "lessons": [{"title": "Exercises", "content": "Worked examples."}]}],
    "score": 80,
    "feedback": "Clear and mostly correct; explain the second step in more detail.",
    "slides": [{"title": "Overview", "bullets": ["What", "Why", "How"]},
               {"title": "Summary", "bullets": ["Key points", "Next steps"]}],
}


def _error(status: int, message: str, kind: str, headers: dict | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "code": None, "param": None}},
                             status=status, headers=headers)


def _tokens(text: str) -> int:
    return max(1, len(text.split()))


def _answer(body: dict, behaviour: dict) -> str:
    if "content" in behaviour:
        return behaviour["content"]
    if behaviour.get("fill_max_tokens"):
        return " ".join(f"w{i}" for i in range(int(body.get("max_tokens") or 16)))
    if (body.get("response_format") or {}).get("type") == "json_object":
        return json.dumps(DEFAULT_JSON)
    last = next((m.get("content") for m in reversed(body["messages"]) if m.get("role") == "user"), "")
    return f"Fake answer to: {str(last)[:60]}"


async def chat_completions(request: web.Request) -> web.StreamResponse:
    if not request.headers.get("Authorization", "").startswith("Bearer "):
        return _error(401, "Missing API key.", "invalid_request_error")
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "Body is not JSON.", "invalid_request_error")
    if not isinstance(body, dict) or not body.get("model") or not isinstance(body.get("messages"), list):
        return _error(400, "model and messages are required.", "invalid_request_error")
    entry = {"received_at": time.time(), "body": body, "authorization_prefix": request.headers["Authorization"][7:15]}
    request.app[_log_key].append(entry)
    queue = request.app[_queue_key]
    behaviour = queue.popleft() if queue else {}
    if behaviour.get("delay_s"):
        await asyncio.sleep(float(behaviour["delay_s"]))
    if behaviour.get("disconnect"):
        request.transport.close()
        return web.Response(status=500)
    if behaviour.get("redirect_to"):
        raise web.HTTPTemporaryRedirect(behaviour["redirect_to"])
    if "status" in behaviour:
        headers = {"Retry-After": str(behaviour["retry_after"])} if "retry_after" in behaviour else None
        return _error(int(behaviour["status"]), behaviour.get("message", "Scripted failure."),
                      "rate_limit_error" if behaviour["status"] == 429 else "server_error", headers)
    if "raw" in behaviour:
        return web.Response(status=200, text=behaviour["raw"]["body"], content_type=behaviour["raw"]["content_type"])
    fields = behaviour.get("reply_fields", {})
    content = _answer(body, behaviour)
    prompt_tokens = sum(_tokens(str(m.get("content", ""))) for m in body["messages"])
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": _tokens(content),
             "total_tokens": prompt_tokens + _tokens(content)}
    ident, created, model = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), body["model"]
    if not body.get("stream"):
        return web.json_response({
            "id": ident, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": usage, **fields,
        })
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)

    async def send(choices: list, **extra) -> None:
        chunk = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                 "choices": choices, **extra}
        await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

    entry["stream"] = "started"
    try:
        await send([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        words = content.split(" ")
        for i, word in enumerate(words):
            await send([{"index": 0, "delta": {"content": word if i == 0 else " " + word}, "finish_reason": None}])
            if behaviour.get("chunk_delay_s"):
                await asyncio.sleep(float(behaviour["chunk_delay_s"]))
            if behaviour.get("break_after_words") == i + 1:  # the provider dies mid-stream
                request.transport.close()
                entry["stream"] = "broken"
                return response
        await send([{"index": 0, "delta": {}, "finish_reason": "stop"}])
        if (body.get("stream_options") or {}).get("include_usage"):
            await send([], **{"usage": usage, **fields})
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
    except (ConnectionResetError, asyncio.CancelledError):
        entry["stream"] = "client_disconnected"  # the app stopped reading: generation cancelled
        raise
    entry["stream"] = "completed"
    return response


async def models(request: web.Request) -> web.Response:
    return web.json_response({"object": "list", "data": [
        {"id": m, "object": "model", "created": 0, "owned_by": "local-test"} for m in MODELS]})


async def set_behaviours(request: web.Request) -> web.Response:
    behaviours = (await request.json()).get("behaviours", [])
    request.app[_queue_key].extend(behaviours)
    return web.json_response({"queued": len(request.app[_queue_key])})


async def list_requests(request: web.Request) -> web.Response:
    return web.json_response(request.app[_log_key])


async def reset(request: web.Request) -> web.Response:
    request.app[_queue_key].clear()
    request.app[_log_key].clear()
    return web.Response(status=204)


def create_app() -> web.Application:
    app = web.Application()
    app[_queue_key] = deque()
    app[_log_key] = []
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/_control/behaviours", set_behaviours)
    app.router.add_get("/_control/requests", list_requests)
    app.router.add_delete("/_control/requests", reset)
    return app


def control(base_url: str, method: str, path: str, body: dict | None = None):
    """Call the control API of the server at ``base_url`` (".../v1")."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base_url.removesuffix("/v1") + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as response:
        payload = response.read()
    return json.loads(payload) if payload else None


def script(base_url: str, *behaviours: dict) -> None:
    """Queue behaviours for the next requests of the server at ``base_url``."""
    control(base_url, "POST", "/_control/behaviours", {"behaviours": list(behaviours)})


class LLMServer(Service):
    """The server in its own process on a free loopback port: ``with LLMServer() as llm``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "LLMServer":
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.support.llm_server",
                                      "--listen", f"127.0.0.1:{self.port}"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, proc=self.proc)
        return self

    def stop(self) -> None:
        stop_process(self.proc, 10)

    def control(self, method: str, path: str, body: dict | None = None):
        return control(self.base_url, method, path, body)

    def script(self, *behaviours: dict) -> None:
        """Queue behaviours for the next requests (see the module docstring)."""
        script(self.base_url, *behaviours)

    def requests(self) -> list[dict]:
        return self.control("GET", "/_control/requests")

    def reset(self) -> None:
        self.control("DELETE", "/_control/requests")


def main() -> None:
    parser = argparse.ArgumentParser(description="A local OpenAI-compatible test server.")
    parser.add_argument("--listen", default="127.0.0.1:8090", help="HOST:PORT")
    host, port = parser.parse_args().listen.rsplit(":", 1)
    web.run_app(create_app(), host=host, port=int(port), print=None, access_log=None)


if __name__ == "__main__":
    main()
