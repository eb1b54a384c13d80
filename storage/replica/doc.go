// Package replica is the client side of the storage-node protocol: the
// one place where a process (a coordinator, a repair worker, later a
// partition transfer or a hash-tree exchange) sends work to storage nodes
// on kv.node.<id>.<op> and turns their replies into one outcome per item.
// The server side is package storage (node.go). New node operations (range
// streaming, hash-tree exchange) are added to this package and nowhere
// else, so the protocol has one client.
//
// # Using it
//
//	rc, err := replica.New(nc, replica.DefaultConfig())
//	defer rc.Stop()
//	call := replica.NewCallAt(len(nodes), placement.Version()) // NewCall: unfenced
//	for _, n := range nodes {
//		rc.Write(call, n, deadline, subjects.NodeWrite{Tenant: t, Key: k, LWW: v})
//	}
//	for range nodes {
//		select {
//		case o := <-call.Outcomes(): // o.Node, o.Write or o.Err
//		case <-time.After(time.Until(deadline)): // no outcome is owed any more
//		}
//	}
//
// A Call collects the outcomes of one caller's items; it has room for every
// item the caller sends through it, so the client never blocks delivering.
// Each item sent gets exactly one outcome, unless its deadline passed
// first: then it may get none, and the caller must stop waiting at its
// deadline (that is how a silent node is detected).
//
// # The node protocol
//
// This is the contract between Client and storage.Node; both sides keep it.
//
// Messages. A request is one batch for one node and one operation:
// subjects.NodeWriteBatch on kv.node.<id>.write or subjects.NodeReadBatch on
// kv.node.<id>.read, msgpack, with Proto = the client's protocol
// (SetProtocol; subjects.NodeProtocolVersion unless set). A
// batch holds 1..Config.MaxBatch items of that operation, for any tenants
// and keys (the same key may appear twice), and its encoded size stays
// below PayloadLimit of the connection's max payload, except that a single
// item larger than that still goes alone. Every item carries an ID unique
// among the items in flight from this client; the client assigns it.
//
// Node protocol 2 and fencing. In protocol 2 a batch carries a map
// version: the version of the placement map its items were routed by
// (NewCallAt), or 0 for unfenced work (NewCall: repair, hints, handoff,
// which target explicit nodes and only merge). Only items of one map
// version share a batch; queued items of another wait for the next one,
// in order. A node refuses an item of a partition whose rows changed
// after that version in the node's map (subjects.KindNotOwner: nothing
// applied; Outcome.Err matches ErrNotOwner): the caller reloads its map
// and retries under it. In protocol 1 (SetProtocol(1), while some node is
// not upgraded) batches are the 2-element arrays of that protocol, without
// a map version, and nothing is fenced. Nodes accept both
// (subjects.NodeProtocolMin..NodeProtocolVersion).
//
// Ordering. A node applies a write batch's items in order, as one Pebble
// batch with one fsync, and answers only once they are durable. Batches
// to one node may be in flight concurrently (Config.MaxInflight per node
// and operation) and are applied in the order the node receives them; two
// items of one caller to one node carry no order the caller may rely on
// unless it waits for the first's outcome.
//
// Replies. A node answers a batch on its reply subject with
// subjects.NodeWriteReply or subjects.NodeReadReply: one result per item,
// in the batch's order, each naming its item's ID. A reply too large for one
// message is chunked: every chunk but the last has More set, and the
// batch stays open until the chunk without More arrives. An item that the
// last chunk leaves unanswered fails with "node <id> did not answer the
// item". A result whose ID names no item of the batch is ignored.
//
// What a result means, per item (the Outcome's Write or Read is set even
// when the result carries an error):
//   - Err empty: the item was applied (write) or answered (read; a nil
//     version means the node holds nothing for the key).
//   - Err set: the item failed on the node, with Kind naming the wire error
//     (e.g. too_large, too_many_siblings, not_owner); Outcome.Err is that
//     text (matching ErrNotOwner for not_owner, which a read result names
//     only as the first word of Err). Other items of the batch are
//     unaffected.
//   - A write of an lww version that lost its merge to a greater dot is not
//     an error: the result names the winner (Outcome.LostTo), the node
//     keeps the greater version, and the caller decides whether the write
//     counts.
//
// Errors that fail a whole batch, and so every item in it that has no
// outcome yet:
//   - ErrNodeDown: nobody serves the node's subject (NATS no responders,
//     status 503). It arrives at once, so a stopped node costs no timeout,
//     except within Config.RestartGrace (2s) of the node's last reply: the node
//     is then most likely restarting, and the batch's resendable items
//     (below) are sent again every 50ms instead; those that are not fail.
//   - a *subjects.Error read from the reply's error headers: the node
//     refused the batch (400 for a malformed batch, another protocol
//     version or a node that is stopping; 429 when its queue is full,
//     which also matches ErrOverloaded).
//   - "bad reply from <node>": the reply did not decode.
//   - a publish error from the connection, and ErrStopping after Stop.
//
// Errors that fail an item without sending it: ErrQueueFull (the client's
// queue for the node holds Config.QueueLen items) and ErrStopping.
//
// Deadlines. Each item has a deadline (normally its request's). Items
// whose deadline passed before they left are dropped unsent; a batch
// whose every item's deadline passed stops holding an in-flight slot
// (within 50ms), so a node that is subscribed but silent (paused,
// partitioned) cannot hold its queue forever. An item the node has not
// answered by its deadline may never get an outcome; the caller times it
// out itself. A node gives no deadline of its own to the batch, except
// the one a siblings coordinating write carries (subjects.Coordinate).
//
// Lost batches. A node that stops (or crashes) with a batch received and
// not answered never answers it, and nothing on the wire says so. A batch
// is presumed lost when a batch sent to the same node after it is
// answered with no responders (the subject lost its subscriber in
// between), or when it stays unanswered for lostAfter (1s, or 16 mean read
// round trips if longer). A lost batch lends its in-flight slot to the
// queue, MaxInflight lent per queue at most, so the items behind it leave
// at once; and its resendable items with no outcome yet are sent again,
// once for a presumption by age. Resendable are reads and merge writes
// (lww versions, siblings states): applying one twice is applying it once.
// A siblings coordinating write is never sent again: the node mints a dot
// for it, so it would be a second value; it keeps waiting for its reply or
// deadline, and its caller moves on to the next owner. A batch presumed
// lost by age may only be slow: its reply still delivers, and each item
// has one outcome, whichever of its copies is answered first (a slow node
// gets an item twice at most). A batch lost with its node (no responders)
// delivers nothing more; its items' copies do.
//
// Replies reach the client on one wildcard subscription of a private
// inbox (<inbox>.<batch id>); no request creates an inbox or a
// subscription, and no goroutine exists per node or per item.
//
// # Partition scan (transfer)
//
// ScanPartition is the pull request of a partition transfer: a node that
// is to own a partition asks a node that holds it for one page at a time
// (storage.Node.PullPartition drives it). It is plain request-reply, one
// message each way, not batched:
//
//   - Request: subjects.PartitionScan on kv.node.<id>.scan, msgpack array,
//     Proto = the client's protocol, MapVersion = the asker's map version
//     (protocol 2; a source whose map is older answers
//     subjects.KindMapBehind, 503), Partitions = the asker's Q,
//     Partition in 0..Q-1, Cursor nil (from the start) or the Cursor of
//     the previous reply, Limit records (0: 1000, at most 10000), MaxBytes
//     of records (0: the node's reply limit, PayloadLimit of its max
//     payload; never more). At least one record is answered whatever
//     MaxBytes says. Tenants, when not empty (sorted, distinct), limits
//     the page to those tenants' records (an eighth element; omitted when
//     empty).
//   - Reply: subjects.PartitionScanReply: the partition's next records in
//     (tenant, key) order, every one of the requested partition, each
//     with its complete stored state (PartitionRecord.State: msgpack
//     [lww version] or [nil, DVVSet]), and the Cursor to continue from, nil
//     once the partition has no more. An empty partition answers no
//     records and a nil cursor.
//   - Consistency: each page is read through its own Pebble iterator, a
//     consistent view at the moment the request arrives; the source keeps
//     no state between pages (no snapshot, no transfer id, nothing to time
//     out). A key written after the scan passed it is not sent again, and
//     pages see later versions than the transfer's start, never earlier:
//     merges only grow a record. So a transfer yields at least what the
//     source held when it began, and the writes made during it must reach
//     the receiver by another path (pending owners write to current ∪
//     pending). A cursor stays valid across writes and restarts of either
//     side, and any node holding the partition answers it.
//   - Errors (error headers): 400 for a body that does not decode, another
//     protocol version, a Q other than the node's, a partition ≥ Q, or a
//     cursor that is not tenant 0x00 key of a key in that partition; 413
//     when a single record does not fit one message; 500 when Pebble
//     fails. No responders (ErrNodeDown) when the node is not serving; a
//     node that stops with a request queued never answers it, so the
//     asker's timeout ends that page.
//   - The receiver merges every record (NodeWrite.LWW or NodeWrite.DVV
//     semantics: a newer version it holds stays; siblings are synced),
//     never stores a state as it came, and refuses a page with a record
//     outside the partition or a state that does not decode.
//
// Health. The client marks a node suspected for a second when a caller
// reports it failed or slow (Suspect), and keeps a moving average of read
// round trips (SpeculativeDelay), so callers can ask the nodes most likely
// to answer first and ask spares when one is slow.
package replica
