-- Portable between SQLite and PostgreSQL: TEXT ids (uuids), BIGINT integers
-- (unix milliseconds for times, 0/1 for flags), JSON kept as TEXT.

CREATE TABLE datasets (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    archive_bytes BIGINT NOT NULL,
    classes TEXT NOT NULL,
    counts TEXT NOT NULL,
    rejected TEXT NOT NULL,
    has_validation BIGINT NOT NULL
);

CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    dataset_id TEXT NOT NULL,
    status TEXT NOT NULL,
    variant TEXT NOT NULL,
    config TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    claimed_by TEXT,
    heartbeat_at BIGINT,
    resume BIGINT NOT NULL DEFAULT 0,
    attempts BIGINT NOT NULL DEFAULT 0,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    stage TEXT,
    epoch BIGINT,
    epochs BIGINT,
    step BIGINT,
    steps BIGINT,
    train_metrics TEXT,
    validation_metrics TEXT,
    error TEXT,
    result TEXT,
    model_id TEXT
);

CREATE INDEX jobs_status_created ON jobs (status, created_at);
CREATE INDEX jobs_dataset ON jobs (dataset_id);

CREATE TABLE job_events (
    job_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);

CREATE TABLE checkpoints (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    name TEXT NOT NULL,
    stage TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    train_metrics TEXT NOT NULL,
    validation_metrics TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (job_id, name)
);

CREATE TABLE models (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    checkpoint_id TEXT NOT NULL,
    backbone TEXT NOT NULL,
    variant TEXT NOT NULL,
    classes TEXT NOT NULL,
    image_size BIGINT NOT NULL,
    validation_metrics TEXT NOT NULL,
    is_default BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);
