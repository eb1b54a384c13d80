-- The node lifecycle of issue 14 (DESIGN.md §3): standby → joining →
-- active → leaving → left → removed, the node protocol each node registered
-- with, and its last reported transfer progress.
--
-- status: 'draining' (what older versions stored for a node being emptied)
-- becomes 'leaving'; the constraint still accepts 'draining' and 'down' so
-- that a coordinator of the previous version, running during a rolling
-- upgrade, can write what it knows. metadata/postgres reads 'draining' as
-- 'leaving'.
-- protocol: the node's subjects.NodeProtocolVersion; 0 for a node that did
-- not send one (protocol 1).
-- transfer: the node's transfer progress (metadata.TransferStatus as JSON),
-- NULL when it reported none.

-- +goose Up
ALTER TABLE storage_nodes DROP CONSTRAINT storage_nodes_status_valid;
UPDATE storage_nodes SET status = 'leaving' WHERE status = 'draining';
ALTER TABLE storage_nodes ADD CONSTRAINT storage_nodes_status_valid
    CHECK (status IN ('standby', 'joining', 'active', 'leaving', 'left', 'removed', 'draining', 'down'));
ALTER TABLE storage_nodes
    ADD COLUMN protocol integer NOT NULL DEFAULT 0
        CONSTRAINT storage_nodes_protocol_valid CHECK (protocol >= 0),
    ADD COLUMN transfer jsonb;

COMMENT ON COLUMN storage_nodes.status IS
    'standby, joining, active, leaving or left (draining, from older versions, reads as leaving; down is a legacy status that registration turns into joining); removed marks an id removed by an operator and not re-admitted: the store reports no such node, and registration is refused.';
COMMENT ON COLUMN storage_nodes.protocol IS
    'The node protocol version the node registered with; 0 = an older node (protocol 1).';
COMMENT ON COLUMN storage_nodes.transfer IS
    'The node''s last reported transfer progress (JSON), NULL when none.';

-- +goose Down
ALTER TABLE storage_nodes DROP COLUMN transfer, DROP COLUMN protocol;
ALTER TABLE storage_nodes DROP CONSTRAINT storage_nodes_status_valid;
UPDATE storage_nodes SET status = 'draining' WHERE status IN ('leaving', 'left');
UPDATE storage_nodes SET status = 'active' WHERE status IN ('standby', 'joining');
ALTER TABLE storage_nodes ADD CONSTRAINT storage_nodes_status_valid
    CHECK (status IN ('active', 'draining', 'down', 'removed'));
