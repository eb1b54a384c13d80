package storage

// rebuildingPartition reports whether this node is still rebuilding p
// (D7): it must not answer reads of p, nor confirm reaps.
func (n *Node) rebuildingPartition(p uint32) bool { return false }
