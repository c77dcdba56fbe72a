-- verify = 'response': 'put-response', and copies and deletes proven by the store's answer as
-- well (for strongly consistent stores). A CopyObject whose answer carries the SHA-256 the store
-- computed of the copy, equal to the pinned source's, is committed without a HEAD
-- (nodes.verified = 'sha256-in-copy-response'); a DeleteObject's success (or a key's entry in a
-- DeleteObjects answer) proves the key gone. Recovery still looks with HEAD.
ALTER TABLE backend_mounts DROP CONSTRAINT backend_mounts_verify_check;
ALTER TABLE backend_mounts ADD CONSTRAINT backend_mounts_verify_check
    CHECK (verify IN ('head', 'put-response', 'response'));

ALTER TABLE nodes DROP CONSTRAINT nodes_verified_check;
ALTER TABLE nodes ADD CONSTRAINT nodes_verified_check
    CHECK (verified IN ('sha256-verified-by-store', 'composite-verified-by-store',
                        'sha256-verified-by-executor', 'sha256-from-metadata', 'size-only',
                        'sha256-in-put-response', 'sha256-in-copy-response'));
