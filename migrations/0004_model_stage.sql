-- Which point of its job a model comes from: 'stage1' (published as soon as
-- stage 1 ends, replaced by the job's final model when it succeeds) or 'final'.
ALTER TABLE models ADD COLUMN stage TEXT NOT NULL DEFAULT 'final';
