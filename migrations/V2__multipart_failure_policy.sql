-- What happens to a multipart upload whose part failed after its retries:
-- 'abort' (AbortMultipartUpload, journal failed) or 'retain' (left open for a resume by the same
-- idempotency key; the journal row stays failed and points to it through multipart_uploads).
ALTER TABLE backend_mounts
    ADD COLUMN multipart_failure_policy text NOT NULL DEFAULT 'abort'
        CHECK (multipart_failure_policy IN ('abort', 'retain'));

CREATE INDEX multipart_uploads_open ON multipart_uploads (mount, updated_at) WHERE state = 'open';
