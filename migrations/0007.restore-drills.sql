-- depends: 0006.llm
-- The restore drills (course-supporter-restore-drill.timer): the newest backup restored
-- into a scratch database and compared with the fingerprint taken with it. The app's
-- metrics read the last one.
CREATE TABLE restore_drills (
    id           bigserial PRIMARY KEY,
    backup_key   text NOT NULL,
    ok           boolean NOT NULL,
    seconds      double precision NOT NULL,
    detail       text NOT NULL,
    finished_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX restore_drills_finished_at ON restore_drills (finished_at);
