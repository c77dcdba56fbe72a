-- A journal row may start its upload again: when the store lost the recorded upload (a store whose
-- CompleteMultipartUpload is not atomic can drop it half-applied when the client dies) and the
-- object did not appear, recovery uploads the unchanged file again under a new upload id. The old
-- row stays, marked aborted, as history; at most one upload of a journal row is open at a time.
ALTER TABLE multipart_uploads DROP CONSTRAINT multipart_uploads_journal_id_key;
CREATE UNIQUE INDEX multipart_uploads_one_open ON multipart_uploads (journal_id) WHERE state = 'open';
CREATE INDEX multipart_uploads_journal ON multipart_uploads (journal_id);
