-- What each mount's store was probed to honour: conditional PutObject (If-None-Match, If-Match)
-- and DeleteObject (If-Match). The executor conditions its writes against the node only on
-- conditions its store honours; `mount list` shows them. Written by the mount's owner when its
-- probe runs (at the first write that would use a condition after the owner started).
CREATE TABLE mount_store_conditions (
    mount             text PRIMARY KEY REFERENCES backend_mounts (name) ON DELETE CASCADE,
    put_if_none_match boolean NOT NULL,
    put_if_match      boolean NOT NULL,
    delete_if_match   boolean NOT NULL,
    probed_at         timestamptz NOT NULL,
    probed_by         text NOT NULL
);
