-- The source version a server-side multipart copy copies its parts from (the pinned ETag). A copy
-- sent again resumes its open upload only while its new pin is the same version: parts copied
-- from an older version of the source are not mixed with parts of a newer one. NULL for uploads
-- of a put, and for copies recorded before this column (those start over).
ALTER TABLE multipart_uploads ADD COLUMN source_etag text;
