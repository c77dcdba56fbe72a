-- The caller's user metadata of an object (x-amz-meta-*, the executor's marker left out), as the
-- store reported it when the write was verified. Copies and moves carry it to the destination.
ALTER TABLE nodes ADD COLUMN user_metadata jsonb NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE snapshots ADD COLUMN user_metadata jsonb NOT NULL DEFAULT '{}'::jsonb;
