"""The tenant's LLM usage and cost."""

from __future__ import annotations

import datetime

from aiohttp import web
from aiohttp_apispec import querystring_schema, response_schema

from ..auth import caller
from ..db import acquire
from ..errors import ValidationFailed
from ..jsonutil import json_response
from ..llm import accounting
from ..schemas import CostQuerySchema, CostReportSchema
from .common import api_endpoint

DEFAULT_DAYS = 30
MAX_DAYS = 366


@api_endpoint("prep", "check", tags=["reports"], summary="LLM calls, tokens and cost of the tenant", errors=(422,),
              description="UTC days `from`..`to`, both included (default: the last 30 days), grouped by `day`, "
                          "`model`, `endpoint` or `key` (the key's prefix). Failed calls count with their cost.")
@querystring_schema(CostQuerySchema)
@response_schema(CostReportSchema, 200)
async def cost_report(request: web.Request) -> web.Response:
    query = request["querystring"]
    last = query["date_to"] or datetime.datetime.now(datetime.timezone.utc).date()
    first = query["date_from"] or last - datetime.timedelta(days=DEFAULT_DAYS - 1)
    if first > last:
        raise ValidationFailed("`from` is after `to`.", details={"from": ["Must not be after `to`."]})
    if (last - first).days >= MAX_DAYS:
        raise ValidationFailed("The range is too long.", details={"from": [f"At most {MAX_DAYS} days per report."]})
    async with acquire(request) as conn:
        report = await accounting.cost_report(conn, caller(request).tenant_id, first, last, query["group_by"])
    return json_response(report)
