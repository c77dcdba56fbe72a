-- filestore-s3 schema, version 1. Applied into the executor's schema (search_path), never edited:
-- later changes are new files.

CREATE TABLE backend_mounts (
    name                text PRIMARY KEY,
    bucket              text NOT NULL,
    prefix              text NOT NULL DEFAULT '',
    region              text NOT NULL DEFAULT 'us-east-1',
    endpoint            text,
    path_style          boolean NOT NULL DEFAULT false,
    sse_mode            text NOT NULL DEFAULT 'none' CHECK (sse_mode IN ('none', 'aes256', 'aws:kms')),
    kms_key_id          text,
    canned_acl          text,
    storage_class       text,
    multipart_threshold bigint NOT NULL DEFAULT 16777216 CHECK (multipart_threshold > 0),
    part_size           bigint NOT NULL DEFAULT 16777216 CHECK (part_size > 0),
    part_concurrency    integer NOT NULL DEFAULT 4 CHECK (part_concurrency > 0),
    verify_window_ms    bigint NOT NULL DEFAULT 10000 CHECK (verify_window_ms >= 0),
    checksum            text NOT NULL DEFAULT 'sha256' CHECK (checksum IN ('sha256', 'none')),
    enabled             boolean NOT NULL DEFAULT true,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE journal (
    id              bigserial PRIMARY KEY,
    mount           text NOT NULL REFERENCES backend_mounts (name),
    op              text NOT NULL CHECK (op IN ('put', 'delete', 'copy', 'move')),
    path            text NOT NULL,
    source_path     text,
    idempotency_key text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    fingerprint     text NOT NULL CHECK (fingerprint ~ '^[0-9a-f]{64}$'),
    state           text NOT NULL CHECK (state IN ('pending', 'committed', 'failed')),
    attempts        integer NOT NULL DEFAULT 1 CHECK (attempts > 0),
    request         jsonb NOT NULL,
    result          jsonb,
    error           text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (mount, idempotency_key),
    CHECK ((state = 'committed') = (result IS NOT NULL)),
    CHECK (state <> 'failed' OR error IS NOT NULL)
);
CREATE INDEX journal_pending ON journal (mount, id) WHERE state = 'pending';

CREATE TABLE nodes (
    mount         text NOT NULL REFERENCES backend_mounts (name),
    path          text NOT NULL,
    object_key    text NOT NULL CHECK (octet_length(object_key) BETWEEN 1 AND 1024),
    size          bigint NOT NULL CHECK (size >= 0),
    etag          text NOT NULL,
    sha256        text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    storage_class text NOT NULL,
    last_modified timestamptz,
    generation    bigint NOT NULL CHECK (generation > 0),
    journal_id    bigint NOT NULL REFERENCES journal (id),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mount, path),
    UNIQUE (mount, object_key)
);

CREATE TABLE snapshots (
    id            bigserial PRIMARY KEY,
    mount         text NOT NULL REFERENCES backend_mounts (name),
    path          text NOT NULL,
    generation    bigint NOT NULL CHECK (generation > 0),
    deleted       boolean NOT NULL,
    object_key    text NOT NULL,
    size          bigint CHECK (size >= 0),
    etag          text,
    sha256        text CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    storage_class text,
    last_modified timestamptz,
    journal_id    bigint NOT NULL REFERENCES journal (id),
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (mount, path, generation),
    UNIQUE (journal_id, path),
    CHECK (deleted OR (size IS NOT NULL AND etag IS NOT NULL AND sha256 IS NOT NULL))
);

CREATE TABLE outbox (
    id           bigserial PRIMARY KEY,
    event_id     uuid NOT NULL UNIQUE,
    mount        text NOT NULL REFERENCES backend_mounts (name),
    journal_id   bigint NOT NULL UNIQUE REFERENCES journal (id),
    payload      jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (mount, id) WHERE published_at IS NULL;

CREATE TABLE multipart_uploads (
    upload_id   text PRIMARY KEY,
    journal_id  bigint NOT NULL UNIQUE REFERENCES journal (id),
    mount       text NOT NULL REFERENCES backend_mounts (name),
    object_key  text NOT NULL,
    part_size   bigint NOT NULL CHECK (part_size > 0),
    total_size  bigint CHECK (total_size >= 0),
    source      jsonb,
    state       text NOT NULL CHECK (state IN ('open', 'completed', 'aborted')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE multipart_parts (
    upload_id       text NOT NULL REFERENCES multipart_uploads (upload_id) ON DELETE CASCADE,
    part_number     integer NOT NULL CHECK (part_number BETWEEN 1 AND 10000),
    etag            text NOT NULL,
    size            bigint NOT NULL CHECK (size > 0),
    checksum_sha256 text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (upload_id, part_number)
);
