-- One owner per mount across hosts: the executor holding a mount's lease is the only one that
-- runs its operations and recovery. `epoch` grows with every acquisition and is the fencing token
-- checked inside every journal / commit transaction.
CREATE TABLE mount_leases (
    mount       text PRIMARY KEY REFERENCES backend_mounts (name) ON DELETE CASCADE,
    owner       text NOT NULL CHECK (length(owner) BETWEEN 1 AND 255),
    epoch       bigint NOT NULL CHECK (epoch > 0),
    expires_at  timestamptz NOT NULL,
    acquired_at timestamptz NOT NULL DEFAULT now(),
    renewed_at  timestamptz NOT NULL DEFAULT now()
);
