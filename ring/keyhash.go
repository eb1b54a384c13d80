package ring

import "github.com/cespare/xxhash/v2"

// DefaultVirtualNodes was the number of points a node had on the
// virtual-node ring, which the placement map replaced (issue 14). Storage
// nodes still send it at registration, and the admin API still reports it
// (virtual_nodes), for old readers; nothing places data by it.
//
// Deprecated: placement no longer depends on it.
const DefaultVirtualNodes = 128

// keyHashStackBuf bounds tenant+1+key lengths that KeyHash hashes in one
// shot from a stack buffer; longer inputs are streamed through a Digest.
const keyHashStackBuf = 256

// KeyHash returns the hash of key within tenant, from which [Partition]
// takes the key's partition: xxhash64(tenant + "\x00" + key), with
// xxhash's zero seed.
//
// It does not allocate and is safe for concurrent use. The value is part of
// the cluster protocol: every node must compute it identically.
func KeyHash(tenant, key string) uint64 {
	if n := len(tenant) + 1 + len(key); n <= keyHashStackBuf {
		var buf [keyHashStackBuf]byte
		copy(buf[:], tenant)
		buf[len(tenant)] = 0
		copy(buf[len(tenant)+1:], key)
		return xxhash.Sum64(buf[:n])
	}
	var d xxhash.Digest
	d.Reset()
	d.WriteString(tenant)
	d.WriteString("\x00")
	d.WriteString(key)
	return d.Sum64()
}
