-- `filestore-s3 check` walks a mount's nodes in the byte order of their object keys, the order of
-- ListObjectsV2, a page at a time (keyset pagination): this index serves each page without
-- sorting the mount. See docs/operations.md.
CREATE INDEX nodes_by_key ON nodes (mount, object_key COLLATE "C");
