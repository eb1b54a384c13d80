-- Tenants and storage nodes: the state behind metadata/postgres.
--
-- IDs use the "C" collation so that ORDER BY (and the primary-key index)
-- sort in byte order, the same order the other metadata stores use.

-- +goose Up
CREATE TABLE tenants (
    tenant_id           text COLLATE "C" PRIMARY KEY
        CONSTRAINT tenants_tenant_id_format CHECK (tenant_id ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    replication_factor  integer NOT NULL
        CONSTRAINT tenants_replication_factor_range CHECK (replication_factor BETWEEN 1 AND 7),
    default_consistency text NOT NULL
        CONSTRAINT tenants_default_consistency_valid CHECK (default_consistency IN ('one', 'quorum', 'all')),
    conflict_policy     text NOT NULL
        CONSTRAINT tenants_conflict_policy_valid CHECK (conflict_policy IN ('lww', 'siblings')),
    version             bigint NOT NULL DEFAULT 1
        CONSTRAINT tenants_version_positive CHECK (version >= 1),
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL
);

COMMENT ON COLUMN tenants.version IS
    'Optimistic-lock counter: 1 on insert, incremented by every update.';

CREATE TABLE storage_nodes (
    node_id       text COLLATE "C" PRIMARY KEY,
    status        text NOT NULL
        CONSTRAINT storage_nodes_status_valid CHECK (status IN ('active', 'draining', 'down')),
    virtual_nodes integer NOT NULL
        CONSTRAINT storage_nodes_virtual_nodes_positive CHECK (virtual_nodes > 0),
    epoch         bigint NOT NULL,
    registered_at timestamptz NOT NULL,
    last_seen     timestamptz NOT NULL
);

COMMENT ON COLUMN storage_nodes.epoch IS
    'The node''s uint64 epoch, bit-cast to int64: values of 2^63 and above are stored negative. Compare for equality only.';

-- +goose Down
DROP TABLE storage_nodes;
DROP TABLE tenants;
