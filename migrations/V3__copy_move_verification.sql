-- Copy / move, conditional writes and content verification.

-- Objects larger than copy_threshold are copied with UploadPartCopy (CopyObject copies at most
-- 5 GiB). settings_policy: what happens when the store ignores SSE / KMS key / storage class.
ALTER TABLE backend_mounts
    ADD COLUMN copy_threshold bigint NOT NULL DEFAULT 5368709120
        CHECK (copy_threshold BETWEEN 5242880 AND 5368709120),
    ADD COLUMN settings_policy text NOT NULL DEFAULT 'strict'
        CHECK (settings_policy IN ('strict', 'lenient'));

-- How far a copy / move got (phase and what it pinned), so recovery continues from there; and the
-- source mount of a copy / move (source_path exists since V1).
ALTER TABLE journal
    ADD COLUMN progress jsonb,
    ADD COLUMN source_mount text;

-- How the content of a node was proven, what SSE the store reported, and which of the mount's
-- settings the store did not apply (lenient policy only).
ALTER TABLE nodes
    ADD COLUMN verified text NOT NULL DEFAULT 'size-only'
        CHECK (verified IN ('sha256-verified-by-store', 'composite-verified-by-store',
                            'sha256-verified-by-executor', 'sha256-from-metadata', 'size-only')),
    ADD COLUMN sse text,
    ADD COLUMN not_applied text[] NOT NULL DEFAULT '{}';
ALTER TABLE snapshots ADD COLUMN verified text;

-- A move across mounts changes a path in each mount (possibly the same path) and publishes an
-- event on each mount's stream: one snapshot per (journal, mount, path), one outbox row per
-- (journal, mount).
ALTER TABLE snapshots DROP CONSTRAINT snapshots_journal_id_path_key;
ALTER TABLE snapshots ADD CONSTRAINT snapshots_journal_mount_path_key UNIQUE (journal_id, mount, path);
ALTER TABLE outbox DROP CONSTRAINT outbox_journal_id_key;
ALTER TABLE outbox ADD CONSTRAINT outbox_journal_mount_key UNIQUE (journal_id, mount);
