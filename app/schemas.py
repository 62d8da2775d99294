"""Marshmallow schemas: they validate input (422 with field details) and
document every request and response in the OpenAPI document."""

from __future__ import annotations

import datetime
from urllib.parse import urlsplit

from marshmallow import Schema, ValidationError, fields, pre_load, validate, validates_schema

from .config import check_host_and_port

TITLE = validate.Length(min=1, max=200)
DESCRIPTION = validate.Length(max=10_000)
CONTENT = validate.Length(max=200_000)


class WholeRegexp(validate.Regexp):
    """``validate.Regexp`` over the whole value: with ``re.match``, a pattern's ``$`` also
    passes a value that ends in a newline. The pattern stays as written for the OpenAPI
    document."""

    def __call__(self, value):
        if self.regex.fullmatch(value) is None:
            raise ValidationError(self._format_error(value))
        return value


class JsonNumber(fields.Float):
    """A JSON number, as the document says: ``fields.Float`` also takes numeric strings."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class JsonBoolean(fields.Boolean):
    """true or false only: ``fields.Boolean`` takes "yes", 1 and the like (1 == True,
    so even ``truthy={True}`` lets 1 through)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


def _not_blank(value: str) -> None:
    if not value.strip():
        raise ValidationError("Must not be blank.")


def _has_nul(value) -> bool:
    if isinstance(value, list):
        return any(_has_nul(item) for item in value if not isinstance(item, dict))
    return isinstance(value, str) and "\x00" in value


class StrictSchema(Schema):
    """Request bodies: unknown fields are an error (marshmallow's RAISE), not silently dropped;
    the JSON body middleware applies the same rule to top-level fields. Text holding a NUL
    character is refused: PostgreSQL cannot store it (nested objects check their own fields)."""

    @pre_load
    def _no_nul_characters(self, data, **kwargs):
        if isinstance(data, dict):
            refused = {name: ["Text must not contain NUL (\\u0000) characters."]
                       for name, value in data.items() if _has_nul(value)}
            if refused:
                raise ValidationError(refused)
        return data


# --- errors ---------------------------------------------------------------

class ErrorDetailSchema(Schema):
    code = fields.String(required=True, metadata={"description": "snake_case error code"})
    message = fields.String(required=True)
    details = fields.Raw(metadata={"description": "field -> messages, for validation errors"})
    request_id = fields.String()


class ErrorSchema(Schema):
    error = fields.Nested(ErrorDetailSchema, required=True)


# --- health ---------------------------------------------------------------

class HealthSchema(Schema):
    status = fields.String(required=True, validate=validate.OneOf(["ok", "degraded"]))
    db = fields.String(required=True, validate=validate.OneOf(["ok", "error"]))
    s3 = fields.String(required=True, validate=validate.OneOf(["ok", "error"]))
    release = fields.String(required=True, metadata={
        "description": "the running release: its content hash on the appliance, `unpackaged` from a checkout"})
    version = fields.String(required=True, metadata={"description": "the app's version"})
    uptime_s = fields.Integer(required=True, metadata={"description": "seconds since the service started"})


class ReadySchema(Schema):
    ready = fields.Boolean(required=True, metadata={"description": "whether this server should take traffic"})
    db = fields.String(required=True, validate=validate.OneOf(["ok", "error", "unchecked"]), metadata={
        "description": "the database from this server: `unchecked` while it shuts down"})
    draining = fields.Boolean(required=True, metadata={"description": "this server has begun to shut down"})
    release = fields.String(required=True, metadata={"description": "the running release, as in `/health`"})


# --- courses --------------------------------------------------------------

class CourseCreateSchema(StrictSchema):
    title = fields.String(required=True, validate=[TITLE, _not_blank])
    description = fields.String(load_default="", validate=DESCRIPTION)


class CourseUpdateSchema(StrictSchema):
    title = fields.String(validate=[TITLE, _not_blank])
    description = fields.String(validate=DESCRIPTION)

    @validates_schema
    def _something(self, data, **kwargs):
        if not data:
            raise ValidationError("Give at least one of: title, description.")


class PageQuerySchema(Schema):
    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0, max=2**31 - 1))


class CourseSchema(Schema):
    id = fields.UUID(required=True)
    title = fields.String(required=True)
    description = fields.String(required=True)
    created_at = fields.DateTime(required=True)
    updated_at = fields.DateTime(required=True)


class CoursePageSchema(Schema):
    items = fields.List(fields.Nested(CourseSchema), required=True)
    total = fields.Integer(required=True)
    limit = fields.Integer(required=True)
    offset = fields.Integer(required=True)


class LessonRefSchema(Schema):
    id = fields.UUID(required=True)
    title = fields.String(required=True)
    position = fields.Integer(required=True)


class ModuleSchema(Schema):
    id = fields.UUID(required=True)
    title = fields.String(required=True)
    position = fields.Integer(required=True)
    lessons = fields.List(fields.Nested(LessonRefSchema), required=True)


class StructureSchema(Schema):
    modules = fields.List(fields.Nested(ModuleSchema), required=True)


class CourseDetailSchema(CourseSchema):
    structure = fields.Nested(StructureSchema, required=True)


PASS_SCORE = validate.Range(min=0, max=100)


class LessonInputSchema(StrictSchema):
    title = fields.String(required=True, validate=[TITLE, _not_blank])
    content = fields.String(load_default="", validate=CONTENT)
    pass_score = fields.Integer(strict=True, allow_none=True, load_default=None, validate=PASS_SCORE,
                                metadata={"description": "score needed to pass this lesson's homework (default 60)"})


class ModuleInputSchema(StrictSchema):
    title = fields.String(required=True, validate=[TITLE, _not_blank])
    lessons = fields.List(fields.Nested(LessonInputSchema), load_default=list, validate=validate.Length(max=500))


class StructureInputSchema(StrictSchema):
    modules = fields.List(fields.Nested(ModuleInputSchema), required=True, validate=validate.Length(max=200))


class LessonSchema(Schema):
    id = fields.UUID(required=True)
    course_id = fields.UUID(required=True)
    module_id = fields.UUID(required=True)
    title = fields.String(required=True)
    position = fields.Integer(required=True)
    content = fields.String(required=True)
    pass_score = fields.Integer(allow_none=True, required=True)


# --- materials ------------------------------------------------------------

class MaterialSchema(Schema):
    id = fields.UUID(required=True)
    course_id = fields.UUID(required=True)
    filename = fields.String(required=True)
    content_type = fields.String(required=True)
    size_bytes = fields.Integer(required=True)
    sha256 = fields.String(required=True, metadata={"description": "hex SHA-256 of the stored bytes"})
    created_at = fields.DateTime(required=True)


class MaterialDetailSchema(MaterialSchema):
    download_url = fields.String(required=True, metadata={"description": "pre-signed GET, short-lived"})


class MaterialListSchema(Schema):
    items = fields.List(fields.Nested(MaterialSchema), required=True)


# --- slide mapping --------------------------------------------------------

MAX_SLIDE_NUMBER = 100_000


class SlideMappingItemSchema(StrictSchema):
    slide_number = fields.Integer(required=True, strict=True, validate=validate.Range(min=1, max=MAX_SLIDE_NUMBER))
    lesson_id = fields.UUID(allow_none=True, load_default=None)
    start_s = JsonNumber(allow_none=True, load_default=None, validate=validate.Range(min=0))
    end_s = JsonNumber(allow_none=True, load_default=None, validate=validate.Range(min=0))

    @validates_schema
    def _end_after_start(self, data, **kwargs):
        start, end = data.get("start_s"), data.get("end_s")
        if start is not None and end is not None and end < start:
            raise ValidationError("Must be greater than or equal to start_s.", field_name="end_s")


class SlideMappingInputSchema(StrictSchema):
    material_id = fields.UUID(allow_none=True, load_default=None)
    items = fields.List(fields.Nested(SlideMappingItemSchema), required=True, validate=validate.Length(max=10_000))

    @validates_schema
    def _unique_slides(self, data, **kwargs):
        seen: set[int] = set()
        errors = {}
        for index, item in enumerate(data.get("items", [])):
            if item["slide_number"] in seen:
                errors[index] = {"slide_number": [f"Slide {item['slide_number']} is mapped twice."]}
            seen.add(item["slide_number"])
        if errors:
            raise ValidationError({"items": errors})


class SlideMappingItemOutSchema(Schema):
    slide_number = fields.Integer(required=True)
    lesson_id = fields.UUID(allow_none=True, required=True)
    start_s = fields.Float(allow_none=True, required=True)
    end_s = fields.Float(allow_none=True, required=True)


class SlideMappingSchema(Schema):
    course_id = fields.UUID(required=True)
    material_id = fields.UUID(allow_none=True, required=True)
    items = fields.List(fields.Nested(SlideMappingItemOutSchema), required=True)
    updated_at = fields.DateTime(required=True)


# --- LLM features ---------------------------------------------------------

MODEL_NAME = WholeRegexp(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,99}$", error="Not a model name.")
PROMPT = validate.Length(min=1, max=100_000)


class GptRequestSchema(StrictSchema):
    prompt = fields.String(required=True, validate=[PROMPT, _not_blank])
    system_prompt = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=20_000))
    model = fields.String(load_default=None, allow_none=True, validate=MODEL_NAME,
                          metadata={"description": "default: the provider's configured model"})
    temperature = JsonNumber(load_default=None, allow_none=True, validate=validate.Range(min=0, max=2))
    max_tokens = fields.Integer(strict=True, load_default=None, allow_none=True,
                                validate=validate.Range(min=1, max=128_000))
    stream = JsonBoolean(load_default=False, metadata={
        "description": "true: text/event-stream with `delta` events ({\"text\"}) and a final `done` event "
                       "({\"model\", \"usage\", \"cost_usd\"}), or an `error` event"})


class UsageSchema(Schema):
    input_tokens = fields.Integer(required=True)
    output_tokens = fields.Integer(required=True)


class GptResponseSchema(Schema):
    text = fields.String(required=True)
    model = fields.String(required=True)
    usage = fields.Nested(UsageSchema, required=True)
    cost_usd = fields.Float(required=True)


class PresentationRequestSchema(StrictSchema):
    topic = fields.String(required=True, validate=[validate.Length(min=1, max=2000), _not_blank])
    num_slides = fields.Integer(required=True, strict=True, validate=validate.Range(min=1, max=50))


class SlideSchema(Schema):
    title = fields.String(required=True)
    bullets = fields.List(fields.String(), required=True)


class PresentationSchema(Schema):
    slides = fields.List(fields.Nested(SlideSchema), required=True)


class ImproveRequestSchema(StrictSchema):
    text = fields.String(required=True, validate=[PROMPT, _not_blank])


class ImproveSchema(Schema):
    text = fields.String(required=True)


class GenerateStructureSchema(StrictSchema):
    instructions = fields.String(load_default=None, allow_none=True, validate=validate.Length(max=10_000))


def _student_id() -> fields.String:
    return fields.String(required=True, validate=[validate.Length(min=1, max=200), _not_blank],
                         metadata={"description": "the tenant's own identifier of the student"})


class HomeworkRequestSchema(StrictSchema):
    student_id = _student_id()
    lesson_id = fields.UUID(required=True)
    submission = fields.String(required=True, validate=[PROMPT, _not_blank])


class StudentPathSchema(StrictSchema):
    """The path's student id, held to the rules an attempt's student id was stored under."""

    student_id = _student_id()


class HomeworkAttemptSchema(Schema):
    id = fields.UUID(required=True)
    student_id = fields.String(required=True)
    course_id = fields.UUID(required=True)
    lesson_id = fields.UUID(required=True)
    score = fields.Integer(required=True)
    passed = fields.Boolean(required=True)
    feedback = fields.String(required=True)
    created_at = fields.DateTime(required=True)


class LessonProgressSchema(Schema):
    lesson_id = fields.UUID(required=True)
    attempts = fields.Integer(required=True)
    best_score = fields.Integer(required=True)
    last_score = fields.Integer(required=True)
    passed = fields.Boolean(required=True, metadata={"description": "some attempt passed"})


class CourseProgressSchema(Schema):
    course_id = fields.UUID(required=True)
    lessons = fields.List(fields.Nested(LessonProgressSchema), required=True)


class ProgressSchema(Schema):
    student_id = fields.String(required=True)
    courses = fields.List(fields.Nested(CourseProgressSchema), required=True)


# Days a report can name: the day after the last one must still be a date.
FIRST_REPORT_DAY, LAST_REPORT_DAY = datetime.date(1970, 1, 1), datetime.date(9999, 12, 30)


def _report_day(value: datetime.date) -> None:
    # A function, not validate.Range: apispec would put the bounds into the document as dates.
    if not FIRST_REPORT_DAY <= value <= LAST_REPORT_DAY:
        raise ValidationError(f"Must be from {FIRST_REPORT_DAY} to {LAST_REPORT_DAY}.")


class CostQuerySchema(Schema):
    date_from = fields.Date(data_key="from", load_default=None, validate=_report_day,
                            metadata={"description": "first UTC day; default 29 days before `to`"})
    date_to = fields.Date(data_key="to", load_default=None, validate=_report_day,
                          metadata={"description": "last UTC day; default today"})
    group_by = fields.String(load_default="day", validate=validate.OneOf(["day", "model", "endpoint", "key"]))


class CostFiguresSchema(Schema):
    calls = fields.Integer(required=True)
    input_tokens = fields.Integer(required=True)
    output_tokens = fields.Integer(required=True)
    cost_usd = fields.Float(required=True)


class CostGroupSchema(CostFiguresSchema):
    key = fields.String(required=True, metadata={"description": "the day, model, endpoint or key prefix"})


class CostReportSchema(Schema):
    date_from = fields.String(data_key="from", required=True)
    date_to = fields.String(data_key="to", required=True)
    group_by = fields.String(required=True)
    total = fields.Nested(CostFiguresSchema, required=True)
    groups = fields.List(fields.Nested(CostGroupSchema), required=True)


class BudgetFiguresSchema(Schema):
    budget_usd = fields.Float(required=True, allow_none=True,
                              metadata={"description": "the monthly limit; null: none"})
    spent_usd = fields.Float(required=True, metadata={"description": "what this month's settled calls cost"})
    reserved_usd = fields.Float(required=True, metadata={"description": "the worst case of calls still running"})
    remaining_usd = fields.Float(required=True, allow_none=True,
                                 metadata={"description": "budget - spent - reserved, at least 0; null: no budget"})
    calls = fields.Integer(required=True, metadata={"description": "provider calls this month"})


class KeyBudgetSchema(BudgetFiguresSchema):
    key_prefix = fields.String(required=True)


class MonthlyUsageSchema(BudgetFiguresSchema):
    period_start = fields.String(required=True, metadata={"description": "the month's first moment (UTC), included"})
    period_end = fields.String(required=True, metadata={"description": "the next month's first moment, excluded"})
    key = fields.Nested(KeyBudgetSchema, metadata={
        "description": "the asking key's own budget and spend; only when the key has a budget"})


def _host_and_port(url: str) -> None:
    """What the URL validator lets through but a connection cannot use (a port beyond
    1-65535, a bracketed host that is no IPv6 address): the configuration's own check."""
    try:
        check_host_and_port(urlsplit(url))
    except ValueError as exc:
        raise ValidationError(f"Not a usable URL ({exc}).") from None


class LLMSettingsInputSchema(StrictSchema):
    base_url = fields.Url(required=True, schemes={"http", "https"}, require_tld=False, validate=_host_and_port,
                          metadata={"description": "an OpenAI-compatible API, e.g. https://api.openai.com/v1"})
    api_key = fields.String(required=True, load_only=True, validate=[
        validate.Length(min=1, max=1000),
        # It travels in an Authorization header: printable ASCII, no spaces.
        WholeRegexp(r"^[\x21-\x7e]+$", error="Must be printable ASCII without spaces, as provider keys are.")])
    model = fields.String(load_default=None, allow_none=True, validate=MODEL_NAME)


class LLMSettingsSchema(Schema):
    base_url = fields.String(required=True, allow_none=True)
    model = fields.String(required=True, allow_none=True)
    api_key_prefix = fields.String(required=True, allow_none=True)
