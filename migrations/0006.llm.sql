-- depends: 0005.slide-mappings
-- LLM features: every provider call accounted per tenant, tenants' own providers
-- (BYOK, key encrypted by the app), homework attempts, and a lesson's pass mark.

CREATE TABLE llm_calls (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id      uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    key_id         uuid REFERENCES api_keys (id) ON DELETE SET NULL,
    endpoint       text NOT NULL,
    provider       text NOT NULL CHECK (provider IN ('default', 'fallback', 'tenant')),
    model          text NOT NULL,
    input_tokens   integer NOT NULL DEFAULT 0 CHECK (input_tokens >= 0),
    output_tokens  integer NOT NULL DEFAULT 0 CHECK (output_tokens >= 0),
    usage_estimated boolean NOT NULL DEFAULT false,
    cost_usd       numeric(14, 8) NOT NULL DEFAULT 0,
    latency_ms     integer NOT NULL CHECK (latency_ms >= 0),
    attempts       smallint NOT NULL CHECK (attempts >= 0),
    outcome        text NOT NULL CHECK (outcome IN ('ok', 'provider_error', 'timeout', 'bad_output', 'cancelled')),
    error          text,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX llm_calls_tenant_time_idx ON llm_calls (tenant_id, created_at);

CREATE TABLE tenant_llm_settings (
    tenant_id          uuid PRIMARY KEY REFERENCES tenants (id) ON DELETE CASCADE,
    base_url           text NOT NULL,
    model              text,
    api_key_encrypted  bytea NOT NULL,
    api_key_prefix     text NOT NULL,
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- Attempts outlive a structure replacement (lesson ids change then), so lesson_id
-- is kept as given rather than as a foreign key.
CREATE TABLE homework_attempts (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    course_id   uuid NOT NULL REFERENCES courses (id) ON DELETE CASCADE,
    lesson_id   uuid NOT NULL,
    student_id  text NOT NULL,
    score       smallint NOT NULL CHECK (score BETWEEN 0 AND 100),
    passed      boolean NOT NULL,
    feedback    text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX homework_attempts_student_idx ON homework_attempts (tenant_id, student_id, course_id, lesson_id, created_at);

ALTER TABLE lessons ADD COLUMN pass_score smallint CHECK (pass_score BETWEEN 0 AND 100);
