"""The tenant's LLM usage and cost."""

from __future__ import annotations

import datetime

from aiohttp import web

from ..auth import caller
from ..db import acquire
from ..errors import ValidationFailed
from ..jsonutil import json_response
from ..llm import accounting, budgets
from ..openapi import Response, operation, query_key
from ..schemas import CostQuerySchema, CostReportSchema, MonthlyUsageSchema

DEFAULT_DAYS = 30


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
    if (last - first).days >= accounting.MAX_REPORT_DAYS:
        raise ValidationFailed("The range is too long.",
                               details={"from": [f"At most {accounting.MAX_REPORT_DAYS} days per report."]})
    async with acquire(request) as conn:
        report = await accounting.cost_report(conn, caller(request).tenant_id, first, last, query["group_by"])
    return json_response(report)


@operation("get_usage", summary="The tenant's LLM budget and spend this month", tags=["reports"],
           scopes=("prep", "check"),
           description="This calendar month (UTC): the tenant's monthly budget (null: none), what its settled "
                       "calls cost, what its running calls hold in reservation (their worst case), what remains "
                       "(null without a budget) and how many provider calls were made. `key` says the same of "
                       "the API key that asks, if it has a budget of its own.",
           responses={200: Response("The month's budget and spend", MonthlyUsageSchema)})
async def usage(request: web.Request) -> web.Response:
    who = caller(request)
    async with acquire(request) as conn:
        tenant = await budgets.statement(conn, "tenant", who.tenant_id)
        key = await budgets.statement(conn, "key", who.key_id)
    body = dict(tenant)
    if key is not None and key["budget_usd"] is not None:
        body["key"] = {"key_prefix": who.key_prefix, **{k: key[k] for k in budgets.FIGURES}}
    return json_response(body)
