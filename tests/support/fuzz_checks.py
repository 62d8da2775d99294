"""Schemathesis checks for the API fuzzing (``SCHEMATHESIS_HOOKS=tests.support.fuzz_checks``).

Two differences from schemathesis' own checks:
- 502, 503 and 504 are documented answers (an LLM provider's failure, a dependency
  down), so the server-error check is "never a 500" rather than "never a 5xx";
- ``POST /gpt`` with ``"stream": true`` answers an event stream, documented as a
  string of events: its events are tested in tests/app/test_llm_features.py, so the
  schema check runs on every other response, and the media-type check on all;
- a resumable upload's bytes (``application/offset+octet-stream``) are sent like any
  octet stream."""

from __future__ import annotations

import schemathesis
from schemathesis.specs.openapi import checks as openapi

NOT_DESCRIBABLE = ("text/event-stream",)

# A tus PATCH's body is bytes like application/octet-stream's.
schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")


@schemathesis.check
def never_a_500(ctx, response, case):
    """No input makes the app fail unexpectedly."""
    if response.status_code == 500:
        raise AssertionError(f"500 for {case.method} {case.formatted_path}: {response.text[:300]}")


@schemathesis.check
def matches_the_documentation(ctx, response, case):
    """The documented media type, and the response schema of every JSON response."""
    openapi.content_type_conformance(ctx, response, case)
    if response.headers.get("content-type", [""])[0].startswith(NOT_DESCRIBABLE):
        return None
    return openapi.response_schema_conformance(ctx, response, case)
