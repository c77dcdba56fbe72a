-- A download to a file (get_to_file) fetches ranges of at most download_range_size bytes,
-- download_concurrency at a time, in parallel; until now it used part_size and part_concurrency,
-- the upload's settings. A range is written to the file as it arrives, so its memory does not
-- grow with its size.
ALTER TABLE backend_mounts
    ADD COLUMN download_range_size bigint NOT NULL DEFAULT 67108864
        CHECK (download_range_size BETWEEN 1048576 AND 5368709120),
    ADD COLUMN download_concurrency integer NOT NULL DEFAULT 5
        CHECK (download_concurrency BETWEEN 1 AND 64);
