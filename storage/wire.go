package storage

import (
	"sync"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/quorumkv/quorumkv/internal/wire"
	"github.com/quorumkv/quorumkv/subjects"
)

// replyBufs pools the buffers replies are encoded into: NATS copies a
// message into its connection's buffer before Publish returns.
var replyBufs = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// maxPooledReply is the largest buffer worth keeping in the pool.
const maxPooledReply = 1 << 20

// appendReply appends the msgpack of a node reply to dst: the batch
// replies without reflection, anything else through msgpack.
func appendReply(dst []byte, v any) ([]byte, error) {
	switch r := v.(type) {
	case *subjects.NodeWriteReply:
		return wire.MarshalNodeWriteReply(dst, r), nil
	case *subjects.NodeReadReply:
		return wire.MarshalNodeReadReply(dst, r), nil
	}
	b, err := msgpack.Marshal(v)
	return append(dst, b...), err
}
