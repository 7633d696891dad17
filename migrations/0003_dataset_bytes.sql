-- Bytes of a dataset's extracted image files on disk (its reported size).
ALTER TABLE datasets ADD COLUMN files_bytes BIGINT NOT NULL DEFAULT 0;
