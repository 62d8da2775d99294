"""Free-form LLM endpoints: /gpt (JSON or SSE stream), /gpt/presentation, /gpt/improve."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp_apispec import docs, request_schema, response_schema

from ..errors import error_body
from ..jsonutil import dumps, json_response
from ..keys import request_id_key
from ..llm import call_context, tasks
from ..llm.gateway import LLMStream, classify, non_blank
from ..schemas import (GptRequestSchema, GptResponseSchema, ImproveRequestSchema, ImproveSchema,
                       PresentationRequestSchema, PresentationSchema)
from .common import api_endpoint

TAGS = ["llm"]
LLM_ERRORS = (400, 415, 422, 502, 504)


def _usage(usage) -> dict:
    return {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}


def sse(event: str, data) -> bytes:
    return f"event: {event}\ndata: {dumps(data)}\n\n".encode()


@api_endpoint("prep", tags=TAGS, summary="Ask the LLM (JSON, or a server-sent event stream)", errors=LLM_ERRORS,
              description="With `\"stream\": true` the answer is `text/event-stream`: `delta` events "
                          "`{\"text\"}`, then one `done` event `{\"model\", \"usage\", \"cost_usd\"}` -- or an "
                          "`error` event in the error JSON shape if the provider fails mid-stream.")
@docs(produces=["application/json", "text/event-stream"])
@request_schema(GptRequestSchema, locations=["json"], required=True)
@response_schema(GptResponseSchema, 200, description="The answer (JSON), or its event stream")
async def gpt(request: web.Request) -> web.StreamResponse:
    data = request["data"]
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


@api_endpoint("prep", tags=TAGS, summary="Draft lecture slides on a topic", errors=LLM_ERRORS)
@request_schema(PresentationRequestSchema, locations=["json"], required=True)
@response_schema(PresentationSchema, 200)
async def presentation(request: web.Request) -> web.Response:
    data = request["data"]
    ctx = call_context(request, "gpt/presentation")
    answer = await ctx.complete_json(tasks.presentation_messages(data["topic"], data["num_slides"]),
                                     lambda reply: tasks.parse_presentation(reply, data["num_slides"]))
    return json_response({"slides": answer.value})


@api_endpoint("prep", tags=TAGS, summary="Improve a text (clarity, correctness, structure)", errors=LLM_ERRORS)
@request_schema(ImproveRequestSchema, locations=["json"], required=True)
@response_schema(ImproveSchema, 200)
async def improve(request: web.Request) -> web.Response:
    ctx = call_context(request, "gpt/improve")
    answer = await ctx.complete_valid(tasks.improve_messages(request["data"]["text"]), non_blank)
    return json_response({"text": answer.text})
