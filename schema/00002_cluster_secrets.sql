-- Cluster-wide secrets kept by metadata/postgres. Row "context" is the key
-- under which coordinators authenticate the contexts they issue, when no
-- --context-secret is configured: the first coordinator to start stores
-- one and every other coordinator uses it. Rows are never updated.

-- +goose Up
CREATE TABLE cluster_secrets (
    name       text COLLATE "C" PRIMARY KEY,
    secret     bytea NOT NULL
        CONSTRAINT cluster_secrets_secret_length CHECK (octet_length(secret) >= 32),
    created_at timestamptz NOT NULL
);

-- +goose Down
DROP TABLE cluster_secrets;
