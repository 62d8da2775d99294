"""Marshmallow schemas: they validate input (422 with field details) and
document every request and response in the OpenAPI document."""

from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

TITLE = validate.Length(min=1, max=200)
DESCRIPTION = validate.Length(max=10_000)
CONTENT = validate.Length(max=200_000)


def _not_blank(value: str) -> None:
    if not value.strip():
        raise ValidationError("Must not be blank.")


class StrictSchema(Schema):
    """Request bodies: unknown fields are an error (marshmallow's RAISE), not silently dropped;
    the JSON body middleware applies the same rule to top-level fields."""


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


class LessonInputSchema(StrictSchema):
    title = fields.String(required=True, validate=[TITLE, _not_blank])
    content = fields.String(load_default="", validate=CONTENT)


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

class SlideMappingItemSchema(StrictSchema):
    slide_number = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))
    lesson_id = fields.UUID(allow_none=True, load_default=None)
    start_s = fields.Float(allow_none=True, load_default=None, validate=validate.Range(min=0))
    end_s = fields.Float(allow_none=True, load_default=None, validate=validate.Range(min=0))

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
