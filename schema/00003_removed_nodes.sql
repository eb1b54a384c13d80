-- A removed storage node leaves its row behind with status 'removed', so that
-- a heartbeat from a node an operator removed cannot bring it back as active;
-- kv.v1.admin.node.join deletes the row to re-admit the id.

-- +goose Up
ALTER TABLE storage_nodes DROP CONSTRAINT storage_nodes_status_valid;
ALTER TABLE storage_nodes ADD CONSTRAINT storage_nodes_status_valid
    CHECK (status IN ('active', 'draining', 'down', 'removed'));

COMMENT ON COLUMN storage_nodes.status IS
    'active, draining or down; removed marks an id removed by an operator and not re-admitted: the store reports no such node, and registration is refused.';

-- +goose Down
DELETE FROM storage_nodes WHERE status = 'removed';
ALTER TABLE storage_nodes DROP CONSTRAINT storage_nodes_status_valid;
ALTER TABLE storage_nodes ADD CONSTRAINT storage_nodes_status_valid
    CHECK (status IN ('active', 'draining', 'down'));
