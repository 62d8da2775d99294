"""A tenant's own LLM provider (bring your own key)."""

from __future__ import annotations

from aiohttp import web

from ..auth import caller
from ..db import acquire
from ..jsonutil import json_response
from ..keycache import change_in_force
from ..errors import ValidationFailed
from ..keys import llm_key, settings_key
from ..llm import byok
from ..openapi import Response, body_key, operation
from ..schemas import LLMSettingsInputSchema, LLMSettingsSchema

TAGS = ["settings"]
UNSET = {"base_url": None, "model": None, "api_key_prefix": None}


def _public(row: dict | None) -> dict:
    return {name: row[name] for name in UNSET} if row else dict(UNSET)


@operation("set_llm_settings", summary="Use the tenant's own LLM provider for all its calls", tags=TAGS,
           scopes=("prep",),
           description="The key is stored encrypted and never returned; only its first characters are shown. "
                       "`model` defaults to the server's LLM_MODEL. `base_url` must lead to a public address "
                       "(422 otherwise), unless the operator allows its network (LLM_BYOK_ALLOWED_NETWORKS).",
           body=LLMSettingsInputSchema, body_example={"base_url": "https://api.openai.com/v1",
                                                      "api_key": "sk-your-own-key", "model": "gpt-4o-mini"},
           errors={503: ("encryption_unavailable",)},
           responses={200: Response("The tenant's provider (the key only by its prefix)", LLMSettingsSchema)})
async def put_llm_settings(request: web.Request) -> web.Response:
    data = request[body_key]
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
    await change_in_force()  # every worker's next call for the tenant takes this provider
    return json_response(_public(row))


@operation("get_llm_settings", summary="The tenant's own LLM provider, if any", tags=TAGS, scopes=("prep",),
           responses={200: Response("The tenant's provider, or nulls when it uses the server's", LLMSettingsSchema)})
async def get_llm_settings(request: web.Request) -> web.Response:
    async with acquire(request) as conn:
        row = await byok.get_settings(conn, caller(request).tenant_id)
    return json_response(_public(row))


@operation("delete_llm_settings", summary="Go back to the server's LLM provider", tags=TAGS, scopes=("prep",),
           responses={204: Response("The tenant's provider is forgotten (or there was none)")})
async def delete_llm_settings(request: web.Request) -> web.Response:
    async with acquire(request) as conn:
        await byok.delete_settings(conn, caller(request).tenant_id)
    await change_in_force()
    return web.Response(status=204)
