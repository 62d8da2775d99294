"""The tenant's LLM usage and cost."""

from __future__ import annotations

import datetime

from aiohttp import web

from ..auth import caller
from ..db import acquire
from ..errors import ValidationFailed
from ..jsonutil import json_response
from ..llm import accounting
from ..openapi import Response, operation, query_key
from ..schemas import CostQuerySchema, CostReportSchema

DEFAULT_DAYS = 30
MAX_DAYS = 366


@operation("get_cost_report", summary="LLM calls, tokens and cost of the tenant", tags=["reports"],
           scopes=("prep", "check"),
           description="UTC days `from`..`to`, both included (default: the last 30 days), grouped by `day`, "
                       "`model`, `endpoint` or `key` (the key's prefix). Failed calls count with their cost.",
           query=CostQuerySchema, responses={200: Response("The report", CostReportSchema)})
async def cost_report(request: web.Request) -> web.Response:
    query = request[query_key]
    last = query["date_to"] or datetime.datetime.now(datetime.timezone.utc).date()
    first = query["date_from"] or last - datetime.timedelta(days=DEFAULT_DAYS - 1)
    if first > last:
        raise ValidationFailed("`from` is after `to`.", details={"from": ["Must not be after `to`."]})
    if (last - first).days >= MAX_DAYS:
        raise ValidationFailed("The range is too long.", details={"from": [f"At most {MAX_DAYS} days per report."]})
    async with acquire(request) as conn:
        report = await accounting.cost_report(conn, caller(request).tenant_id, first, last, query["group_by"])
    return json_response(report)
