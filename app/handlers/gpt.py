"""Free-form LLM endpoints: /gpt (JSON or SSE stream), /gpt/presentation, /gpt/improve."""

from __future__ import annotations

import asyncio

from aiohttp import web

from ..errors import error_body
from ..jsonutil import dumps, json_response
from ..keys import request_id_key
from ..llm import call_context, tasks
from ..llm.gateway import LLMStream, classify, non_blank
from ..openapi import LLM, Response, body_key, idempotent, operation
from ..schemas import (GptRequestSchema, GptResponseSchema, ImproveRequestSchema, ImproveSchema,
                       PresentationRequestSchema, PresentationSchema)

TAGS = ["llm"]
EVENT_STREAM = {"text/event-stream": {
    "schema": {"type": "string", "description": (
        "With `\"stream\": true`: server-sent events, each `event: <type>` and `data: <JSON>`: `delta` events "
        "`{\"text\"}` as the answer arrives, then one `done` event `{\"model\", \"usage\": {\"input_tokens\", "
        "\"output_tokens\"}, \"cost_usd\"}`, or one `error` event with the error envelope "
        "`{\"error\": {\"code\", \"message\", \"request_id\"}}` if the provider fails mid-stream.")},
    "example": 'event: delta\ndata: {"text":"Hel"}\n\nevent: delta\ndata: {"text":"lo"}\n\n'
               'event: done\ndata: {"model":"gpt-4o-mini","usage":{"input_tokens":8,"output_tokens":2},'
               '"cost_usd":2.4e-6}\n\n'}}


def _usage(usage) -> dict:
    return {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}


def sse(event: str, data) -> bytes:
    return f"event: {event}\ndata: {dumps(data)}\n\n".encode()


@idempotent
@operation("ask_llm", summary="Ask the LLM (JSON, or a server-sent event stream)", tags=TAGS, scopes=("prep",),
           description="With `\"stream\": true` the answer is `text/event-stream`: `delta` events "
                       "`{\"text\"}`, then one `done` event `{\"model\", \"usage\", \"cost_usd\"}`, or an "
                       "`error` event in the error JSON shape if the provider fails mid-stream.",
           body=GptRequestSchema, body_example={"prompt": "Explain linear equations in two sentences.",
                                                "system_prompt": "You are a patient maths teacher.",
                                                "temperature": 0.3, "max_tokens": 200, "stream": False},
           errors=LLM, responses={200: Response("The answer (JSON), or its event stream", GptResponseSchema,
                                                content=EVENT_STREAM)})
async def gpt(request: web.Request) -> web.StreamResponse:
    data = request[body_key]
    messages = ([{"role": "system", "content": data["system_prompt"]}] if data["system_prompt"] else []) + \
        [{"role": "user", "content": data["prompt"]}]
    options = {"model": data["model"], "temperature": data["temperature"], "max_tokens": data["max_tokens"]}
    ctx = call_context(request, "gpt")
    if data["stream"]:
        return await _stream(request, await ctx.open_stream(messages, **options))
    answer = await ctx.complete(messages, **options)
    return json_response({"text": answer.text, "model": answer.model, "usage": _usage(answer.usage),
                          "cost_usd": float(answer.cost_usd)})


async def _stream(request: web.Request, stream: LLMStream) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                           "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        await response.prepare(request)
        async for text in stream.deltas():
            await response.write(sse("delta", {"text": text}))
    except (ConnectionResetError, asyncio.CancelledError):
        # The client went away: stop the provider's generation, still account for it.
        await asyncio.shield(stream.finish("cancelled", "client disconnected"))
        raise
    except Exception as exc:  # the provider failed mid-stream
        failure = classify(exc)
        await stream.finish(failure.outcome, failure.detail)
        error = failure.error()
        await response.write(sse("error", error_body(error.status, error.code, error.message,
                                                     request_id=request.get(request_id_key))))
        await response.write_eof()
        return response
    cost = await stream.finish("ok")
    await response.write(sse("done", {"model": stream.model, "usage": _usage(stream.usage), "cost_usd": float(cost)}))
    await response.write_eof()
    return response


@idempotent
@operation("generate_presentation", summary="Draft lecture slides on a topic", tags=TAGS, scopes=("prep",),
           body=PresentationRequestSchema, body_example={"topic": "Linear equations", "num_slides": 5},
           errors=LLM, responses={200: Response("The slides", PresentationSchema)})
async def presentation(request: web.Request) -> web.Response:
    data = request[body_key]
    ctx = call_context(request, "gpt/presentation")
    answer = await ctx.complete_json(tasks.presentation_messages(data["topic"], data["num_slides"]),
                                     lambda reply: tasks.parse_presentation(reply, data["num_slides"]))
    return json_response({"slides": answer.value})


@idempotent
@operation("improve_text", summary="Improve a text (clarity, correctness, structure)", tags=TAGS, scopes=("prep",),
           body=ImproveRequestSchema, body_example={"text": "linear equation is when x is to the first power"},
           errors=LLM, responses={200: Response("The improved text", ImproveSchema)})
async def improve(request: web.Request) -> web.Response:
    ctx = call_context(request, "gpt/improve")
    answer = await ctx.complete_valid(tasks.improve_messages(request[body_key]["text"]), non_blank)
    return json_response({"text": answer.text})
