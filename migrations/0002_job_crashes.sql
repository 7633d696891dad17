-- How many times a process died while running the job (found running with a
-- dead or silent holder); past the configured limit the job fails instead of
-- being queued again, so one job cannot crash-loop the service.
ALTER TABLE jobs ADD COLUMN crashes BIGINT NOT NULL DEFAULT 0;
