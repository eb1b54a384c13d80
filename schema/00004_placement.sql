-- Fixed partitions and the placement map (DESIGN.md §3, issue 14), kept by
-- metadata/postgres. Each table holds at most one row.
--
-- cluster_partitions: the cluster's partition count Q. The first
-- coordinator to start stores its --partitions; every later one uses the
-- stored value. The row is never updated: Q is fixed at cluster creation.
--
-- placement_map: the current placement map. version counts 1, 2, 3, ...;
-- a coordinator stores version v+1 only where the row still holds v
-- (optimistic locking), so of concurrent writers exactly one wins. map is
-- ring.Map's binary form, opaque to SQL: its own format number lets later
-- formats (pending owners during transfers) live in the same column. It is
-- empty while no storage node is active.

-- +goose Up
CREATE TABLE cluster_partitions (
    singleton  boolean PRIMARY KEY DEFAULT true
        CONSTRAINT cluster_partitions_one_row CHECK (singleton),
    partitions integer NOT NULL
        CONSTRAINT cluster_partitions_power_of_two
            CHECK (partitions BETWEEN 1 AND 65536 AND (partitions & (partitions - 1)) = 0),
    created_at timestamptz NOT NULL
);

CREATE TABLE placement_map (
    singleton  boolean PRIMARY KEY DEFAULT true
        CONSTRAINT placement_map_one_row CHECK (singleton),
    version    bigint NOT NULL
        CONSTRAINT placement_map_version_positive CHECK (version >= 1),
    map        bytea NOT NULL,
    updated_at timestamptz NOT NULL
);

-- +goose Down
DROP TABLE placement_map;
DROP TABLE cluster_partitions;
