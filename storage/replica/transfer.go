package replica

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/quorumkv/quorumkv/internal/wire"
	"github.com/quorumkv/quorumkv/subjects"
)

// ScanPartition asks node for one page of a partition (the pull request
// of a partition transfer; see PartitionScan in the package doc) and waits
// for the answer until ctx ends. It sets req.Proto to the client's
// protocol (SetProtocol; with 1, req.MapVersion is not sent), and
// req.MapVersion is the receiver's map version (0 = unfenced; a source
// whose map is older answers subjects.KindMapBehind). It returns the reply
// and its size in bytes on the wire. Errors: ErrNodeDown when nobody
// serves the node, a *subjects.Error when the node refused the request
// (400 for a malformed one), ctx's error, or "bad reply from <node>".
//
// Unlike Write and Read it is a plain request-reply, not batched: a
// transfer has at most one page in flight per (partition, source) and its
// pages are large, so batching would gain nothing.
func (c *Client) ScanPartition(ctx context.Context, node string, req subjects.PartitionScan) (*subjects.PartitionScanReply, int, error) {
	if c.closed.Load() {
		return nil, 0, ErrStopping
	}
	req.Proto = c.Protocol()
	data, err := wire.MarshalPartitionScan(nil, &req)
	if err != nil {
		return nil, 0, fmt.Errorf("replica: %w", err)
	}
	msg, err := c.nc.RequestWithContext(ctx, subjects.StorageNode(node, subjects.NodeOpScan), data)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return nil, 0, fmt.Errorf("scan partition %d on %s: %w", req.Partition, node, ErrNodeDown)
	case err != nil:
		return nil, 0, fmt.Errorf("scan partition %d on %s: %w", req.Partition, node, err)
	}
	if e := subjects.ErrorFromHeaders(msg.Header.Get); e != nil {
		return nil, 0, batchError(e)
	}
	var rep subjects.PartitionScanReply
	// The records' states alias msg.Data, which is this reply's own.
	if err := wire.UnmarshalPartitionScanReply(msg.Data, &rep); err != nil {
		return nil, 0, fmt.Errorf("bad reply from %s: %w", node, err)
	}
	return &rep, len(msg.Data), nil
}

// AntiEntropy sends one step of an anti-entropy exchange to node (see
// subjects.AERequest) and waits for the answer until ctx ends. It sets
// req.Proto to the client's protocol. It returns the reply and its size
// in bytes on the wire. Errors are those of ScanPartition: ErrNodeDown, a
// *subjects.Error when the node refused the request (KindMapBehind,
// KindNotOwner, KindConflict, 400 for a malformed one), ctx's error, or
// "bad reply from <node>". A plain request-reply, like ScanPartition.
func (c *Client) AntiEntropy(ctx context.Context, node string, req *subjects.AERequest) (*subjects.AEReply, int, error) {
	if c.closed.Load() {
		return nil, 0, ErrStopping
	}
	req.Proto = c.Protocol()
	data, err := msgpack.Marshal(req)
	if err != nil {
		return nil, 0, fmt.Errorf("replica: encode anti-entropy %s: %w", req.Op, err)
	}
	msg, err := c.nc.RequestWithContext(ctx, subjects.StorageNode(node, subjects.NodeOpAE), data)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return nil, 0, fmt.Errorf("anti-entropy %s on %s: %w", req.Op, node, ErrNodeDown)
	case err != nil:
		return nil, 0, fmt.Errorf("anti-entropy %s on %s: %w", req.Op, node, err)
	}
	if e := subjects.ErrorFromHeaders(msg.Header.Get); e != nil {
		return nil, 0, batchError(e)
	}
	var rep subjects.AEReply
	if err := wire.CheckMsgpack(msg.Data); err != nil { // declared lengths are allocated up front
		return nil, 0, fmt.Errorf("bad reply from %s: %w", node, err)
	}
	if err := msgpack.Unmarshal(msg.Data, &rep); err != nil {
		return nil, 0, fmt.Errorf("bad reply from %s: %w", node, err)
	}
	return &rep, len(msg.Data), nil
}
