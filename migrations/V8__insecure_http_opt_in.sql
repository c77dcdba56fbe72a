-- A mount whose endpoint is plain http to a host that is not loopback is refused unless this is
-- set: signed requests and object data would cross the network unencrypted.
ALTER TABLE backend_mounts ADD COLUMN allow_insecure_http boolean NOT NULL DEFAULT false;
