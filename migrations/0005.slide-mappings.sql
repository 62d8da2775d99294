-- depends: 0004.materials
-- One slide mapping per course: which slide belongs to which lesson, and when it is shown.
CREATE TABLE slide_mappings (
    course_id    uuid PRIMARY KEY REFERENCES courses (id) ON DELETE CASCADE,
    tenant_id    uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    material_id  uuid REFERENCES materials (id) ON DELETE SET NULL,
    items        jsonb NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
