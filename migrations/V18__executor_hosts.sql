-- The fleet: every executor that balances mounts with others announces itself here and renews
-- its row every quarter of its lease duration. A row is live while expires_at > now() (the
-- database's clock). `address` is where other hosts forward calls (the host's operations API,
-- NULL when it takes none); `weight` scales its share of the mounts; `started_at` is when this
-- run of the host began (a host counts towards the others' shares only once it has been live for
-- the settle period); `owner_process` identifies its process as in mount_leases, so a host on
-- the same machine that is provably dead stops counting at once. See docs/hosts.md.
CREATE TABLE executor_hosts (
    owner text PRIMARY KEY CHECK (length(owner) BETWEEN 1 AND 255),
    address text CHECK (length(address) <= 2048),
    weight integer NOT NULL DEFAULT 1 CHECK (weight BETWEEN 1 AND 1000),
    owner_process text CHECK (length(owner_process) <= 4096),
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
