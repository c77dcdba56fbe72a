-- How a single-request put is proven. 'head' (default): a HEAD after the PUT must show the object
-- with the put's checksum or write marker. 'put-response': for strongly consistent stores, the
-- PUT's own answer is the proof when it echoes the SHA-256 the executor sent (the store checked
-- the body against it before accepting); otherwise the put falls back to HEAD. Multipart puts,
-- copies and moves always HEAD.
ALTER TABLE backend_mounts
    ADD COLUMN verify text NOT NULL DEFAULT 'head' CHECK (verify IN ('head', 'put-response'));

ALTER TABLE nodes DROP CONSTRAINT nodes_verified_check;
ALTER TABLE nodes ADD CONSTRAINT nodes_verified_check
    CHECK (verified IN ('sha256-verified-by-store', 'composite-verified-by-store',
                        'sha256-verified-by-executor', 'sha256-from-metadata', 'size-only',
                        'sha256-in-put-response'));
