-- Credentials per mount: where a mount's credentials come from. Never a secret in the table: the
-- executor's default chain, a named profile of the shared config / credentials files, or a role
-- assumed with STS (optionally with an external id and a session name).
ALTER TABLE backend_mounts
    ADD COLUMN credentials_source text NOT NULL DEFAULT 'default'
        CHECK (credentials_source IN ('default', 'profile', 'assume_role')),
    ADD COLUMN credentials_profile text,
    ADD COLUMN role_arn text,
    ADD COLUMN role_external_id text,
    ADD COLUMN role_session_name text,
    ADD CONSTRAINT backend_mounts_credentials_complete CHECK (
        (credentials_source <> 'profile' OR credentials_profile IS NOT NULL)
        AND (credentials_source <> 'assume_role' OR role_arn IS NOT NULL)
        AND (credentials_source = 'profile' OR credentials_profile IS NULL)
        AND (credentials_source = 'assume_role'
             OR (role_arn IS NULL AND role_external_id IS NULL AND role_session_name IS NULL))
    );

-- Who committed a journal entry: the lease owner and the epoch its commit transaction checked.
-- An audit trail for the fencing guarantee (no commit under an expired lease).
ALTER TABLE journal
    ADD COLUMN committed_by text,
    ADD COLUMN committed_epoch bigint;

-- Published outbox rows older than the retention are pruned by the mount's owner; the highest id
-- pruned per mount is kept here so a feed asked to resume below it fails with a clear error
-- instead of silently skipping events.
CREATE TABLE outbox_horizon (
    mount          text PRIMARY KEY,
    pruned_through bigint NOT NULL,
    pruned_at      timestamptz NOT NULL DEFAULT now()
);
