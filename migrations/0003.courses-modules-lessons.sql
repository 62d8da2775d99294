-- depends: 0001.tenants-and-api-keys
-- Courses belong to one tenant; modules and lessons hang off a course.
CREATE TABLE courses (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    title        text NOT NULL,
    description  text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX courses_tenant_idx ON courses (tenant_id, created_at, id);

CREATE TABLE modules (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    course_id  uuid NOT NULL REFERENCES courses (id) ON DELETE CASCADE,
    title      text NOT NULL,
    position   integer NOT NULL CHECK (position >= 1),
    UNIQUE (course_id, position)
);

CREATE TABLE lessons (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    course_id  uuid NOT NULL REFERENCES courses (id) ON DELETE CASCADE,
    module_id  uuid NOT NULL REFERENCES modules (id) ON DELETE CASCADE,
    title      text NOT NULL,
    position   integer NOT NULL CHECK (position >= 1),
    content    text NOT NULL DEFAULT '',
    UNIQUE (module_id, position)
);
CREATE INDEX lessons_course_idx ON lessons (course_id);
