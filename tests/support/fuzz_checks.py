"""Schemathesis checks for the API fuzzing (``SCHEMATHESIS_HOOKS=tests.support.fuzz_checks``).

Two differences from schemathesis' own checks, both because of what Swagger 2.0 can say:
- 502, 503 and 504 are documented answers (an LLM provider's failure, a dependency
  down), so the server-error check is "never a 500" rather than "never a 5xx";
- a 204 has no body and so no media type, and ``POST /gpt`` with ``"stream": true``
  answers an event stream (its events are tested in tests/app/test_llm_features.py):
  Swagger 2.0 gives one media type list and one schema per operation, so the
  media-type and schema checks run on every other response."""

from __future__ import annotations

import schemathesis
from schemathesis.specs.openapi import checks as openapi

NOT_DESCRIBABLE = ("text/event-stream",)


@schemathesis.check
def never_a_500(ctx, response, case):
    """No input makes the app fail unexpectedly."""
    if response.status_code == 500:
        raise AssertionError(f"500 for {case.method} {case.formatted_path}: {response.text[:300]}")


@schemathesis.check
def matches_the_documentation(ctx, response, case):
    """The documented media type and response schema, where Swagger 2.0 can describe the response."""
    if response.status_code == 204 and not response.content:
        return None
    if response.headers.get("content-type", [""])[0].startswith(NOT_DESCRIBABLE):
        return None
    openapi.content_type_conformance(ctx, response, case)
    return openapi.response_schema_conformance(ctx, response, case)
