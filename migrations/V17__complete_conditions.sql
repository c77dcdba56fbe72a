-- What each mount's store was probed to honour on CompleteMultipartUpload: If-None-Match: *
-- (create only) and If-Match (replace only the named object). A multipart put or copy is
-- completed under the condition only where its store honours it. Rows probed before V17 read
-- false until the mount's owner probes again (at its next start).
ALTER TABLE mount_store_conditions
    ADD COLUMN complete_if_none_match boolean NOT NULL DEFAULT false,
    ADD COLUMN complete_if_match      boolean NOT NULL DEFAULT false;
