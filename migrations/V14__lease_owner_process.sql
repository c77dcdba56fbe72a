-- The process that took a mount's lease: `flock:<boot id>:<pid>:<dev>:<inode>:<lock file>`, the
-- file that process holds locked while it lives (NULL where it could not take one). Another
-- executor on the same machine takes over the lease of an owner that is provably dead (same boot,
-- the same file, and its lock free) at once, instead of waiting for the lease to expire; see
-- docs/hosts.md.
ALTER TABLE mount_leases
    ADD COLUMN owner_process text CHECK (length(owner_process) <= 4096);
