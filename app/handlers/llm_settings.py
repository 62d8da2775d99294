"""A tenant's own LLM provider (bring your own key)."""

from __future__ import annotations

from aiohttp import web
from aiohttp_apispec import docs, request_schema, response_schema

from ..auth import caller
from ..db import acquire
from ..jsonutil import json_response
from ..errors import ValidationFailed
from ..keys import llm_key, settings_key
from ..llm import byok
from ..schemas import LLMSettingsInputSchema, LLMSettingsSchema
from .common import api_endpoint

TAGS = ["settings"]
UNSET = {"base_url": None, "model": None, "api_key_prefix": None}


def _public(row: dict | None) -> dict:
    return {name: row[name] for name in UNSET} if row else dict(UNSET)


@api_endpoint("prep", tags=TAGS, summary="Use the tenant's own LLM provider for all its calls",
              errors=(400, 415, 422),
              description="The key is stored encrypted and never returned; only its first characters are shown. "
                          "`model` defaults to the server's LLM_MODEL. `base_url` must lead to a public address "
                          "(422 otherwise), unless the operator allows its network (LLM_BYOK_ALLOWED_NETWORKS).")
@request_schema(LLMSettingsInputSchema, locations=["json"], required=True)
@response_schema(LLMSettingsSchema, 200)
async def put_llm_settings(request: web.Request) -> web.Response:
    data = request["data"]
    encrypted = request.app[llm_key].keybox.encrypt(data["api_key"])  # first: 503 if keys cannot be stored
    try:
        await byok.check_destination(data["base_url"], request.app[settings_key].llm_byok_allowed_networks)
    except byok.ProviderAddressRefused as exc:
        raise ValidationFailed("The provider's address is not allowed.", details={"base_url": [
            f"{exc}; a tenant's provider must be on a public address."]}) from None
    async with acquire(request) as conn:
        row = await byok.put_settings(conn, caller(request).tenant_id, base_url=data["base_url"].rstrip("/"),
                                      model=data["model"], encrypted_key=encrypted,
                                      api_key_prefix=byok.key_prefix(data["api_key"]))
    return json_response(_public(row))


@api_endpoint("prep", tags=TAGS, summary="The tenant's own LLM provider, if any")
@response_schema(LLMSettingsSchema, 200)
async def get_llm_settings(request: web.Request) -> web.Response:
    async with acquire(request) as conn:
        row = await byok.get_settings(conn, caller(request).tenant_id)
    return json_response(_public(row))


@api_endpoint("prep", tags=TAGS, summary="Go back to the server's LLM provider")
@docs(responses={"204": {"description": "The tenant's provider is forgotten (or there was none)"}})
async def delete_llm_settings(request: web.Request) -> web.Response:
    async with acquire(request) as conn:
        await byok.delete_settings(conn, caller(request).tenant_id)
    return web.Response(status=204)
