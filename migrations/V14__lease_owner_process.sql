-- The process that took a mount's lease: `linux/<boot id>/<pid namespace>/<pid>/<start ticks>`
-- (NULL where the process could not tell). Another executor on the same machine takes over the
-- lease of an owner that is provably dead (same boot and pid namespace, no process with that pid
-- and start time) at once, instead of waiting for the lease to expire; see docs/hosts.md.
ALTER TABLE mount_leases
    ADD COLUMN owner_process text CHECK (length(owner_process) <= 200);
