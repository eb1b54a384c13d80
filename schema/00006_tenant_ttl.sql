-- Per-key TTL (issue 15): a tenant's default time to live for values put
-- without ttl_ms, in milliseconds; 0 = values never expire. The limit is
-- subjects.MaxTTLMs (10 years of 365 days).

-- +goose Up
ALTER TABLE tenants
    ADD COLUMN default_ttl_ms bigint NOT NULL DEFAULT 0
        CONSTRAINT tenants_default_ttl_ms_valid CHECK (default_ttl_ms BETWEEN 0 AND 315360000000);

COMMENT ON COLUMN tenants.default_ttl_ms IS
    'Time to live (ms) of a value put without ttl_ms; 0 = never expires. 0..315360000000 (10 years).';

-- +goose Down
ALTER TABLE tenants DROP COLUMN default_ttl_ms;
