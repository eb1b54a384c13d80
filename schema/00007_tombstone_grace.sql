-- Tombstone reaping (issue 15, D6): how long a deleted key's tombstone is
-- kept before storage nodes may reap it, per tenant, in milliseconds:
-- 1 s .. 10 years (365-day years), 7 days by default.

-- +goose Up
ALTER TABLE tenants
    ADD COLUMN tombstone_grace_ms bigint NOT NULL DEFAULT 604800000
        CONSTRAINT tenants_tombstone_grace_range CHECK (tombstone_grace_ms BETWEEN 1000 AND 315360000000);

COMMENT ON COLUMN tenants.tombstone_grace_ms IS
    'How long (ms) tombstones of the tenant are kept before storage nodes reap them; a replica down longer than the smallest grace rejoins wiped.';

-- +goose Down
ALTER TABLE tenants DROP COLUMN tombstone_grace_ms;
