-- depends: 0013.budget-slices
-- Resumable uploads of materials (tus 1.0, app/resumable.py): what any worker on any host
-- needs to go on with one. The bytes up to the last whole part are in the S3 multipart
-- upload (parts: their ETags in order); the rest, less than a part, is kept here (tail);
-- the SHA-256 of everything so far goes on from sha256_state. A PATCH holds the upload
-- (locked_until, extended while it streams) so that two never interleave. An upload not
-- finished by expires_at is aborted and removed by the sweep; a course deleted takes its
-- uploads with it (its multipart uploads are aborted with its files). A finished upload
-- stays until its expiry, so that a client asking for its offset learns it is complete.
CREATE TABLE material_uploads (
    id             uuid PRIMARY KEY,
    tenant_id      uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    course_id      uuid NOT NULL REFERENCES courses (id) ON DELETE CASCADE,
    material_id    uuid NOT NULL,
    object_key     text NOT NULL,
    filename       text NOT NULL,
    content_type   text NOT NULL,
    length         bigint NOT NULL CHECK (length >= 0),
    part_bytes     integer NOT NULL CHECK (part_bytes > 0),
    s3_upload_id   text,
    parts          text[] NOT NULL DEFAULT '{}',
    tail           bytea NOT NULL DEFAULT '',
    upload_offset  bigint NOT NULL DEFAULT 0,
    sha256_state   bytea,
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL,
    locked_until   timestamptz,
    lock_token     uuid,
    finished_at    timestamptz,  -- its material recorded: kept (HEAD says so) until it expires
    CHECK (upload_offset <= length)
);
CREATE INDEX material_uploads_course_idx ON material_uploads (course_id);
CREATE INDEX material_uploads_expiry_idx ON material_uploads (expires_at);
