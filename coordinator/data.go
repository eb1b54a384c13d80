package coordinator

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/micro"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/quorumkv/quorumkv/idempotency"
	"github.com/quorumkv/quorumkv/internal/wire"
	"github.com/quorumkv/quorumkv/metadata"
	"github.com/quorumkv/quorumkv/storage/replica"
	"github.com/quorumkv/quorumkv/subjects"
	"github.com/quorumkv/quorumkv/vclock"
)

// maxContextSkew is how far ahead of this coordinator's clock a context's
// counter may be.
const maxContextSkew = 5 * time.Minute

// dataRequest is a validated client request with its tenant resolved.
type dataRequest struct {
	subjects.Request
	tenant metadata.Tenant
	level  string
	ctxDot vclock.Dot        // lww: the context's dot
	dvvCtx vclock.DVVContext // siblings: the context's causal history
	after  func()            // work left once the client has its reply (repair); may be nil
}

// dataHandler serves op. release frees the request's MaxInflight slot: it
// is called just before the answer goes out, so a client that sends its
// next request on the answer finds the slot free, and the tail work after
// the answer (repair, hints: at most HintWindow) does not count as load.
func (c *Coordinator) dataHandler(op string) func(micro.Request, func()) {
	return func(req micro.Request, release func()) {
		start := time.Now()
		level := ""
		// Recorded just before the answer goes out, so a client that has
		// its answer sees it counted; the tail (repair, hints) is not part
		// of a request's latency.
		record := func(outcome string) { c.metrics.Request(op, level, outcome, time.Since(start)) }
		fail := func(err error) {
			release()
			record(errorKind(err))
			c.respondError(req, err)
		}
		timeout := c.cfg.Timeout
		r, err := decodeDataRequest(req, op)
		if err != nil {
			fail(err)
			return
		}
		if r.TimeoutMS > 0 {
			timeout = time.Duration(r.TimeoutMS) * time.Millisecond
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		if err := c.resolve(ctx, req.Subject(), r); err != nil {
			fail(err)
			return
		}
		level = r.level
		// A get and a write differ in the call and its reply; both seal
		// the reply's context and answer alike.
		var (
			reply    any
			replyCtx *string
			outcome  = "ok"
		)
		if op == subjects.OpGet {
			var g *subjects.GetReply
			if g, err = c.read(ctx, r); err == nil {
				reply, replyCtx = g, &g.Context
				if !g.Found {
					outcome = "not_found"
				}
			}
		} else {
			var w *subjects.WriteReply
			if w, err = c.writeOnce(ctx, r, op == subjects.OpDelete); err == nil {
				reply, replyCtx = w, &w.Context
			}
		}
		if err == nil {
			err = c.sealContext(r, replyCtx)
		}
		if err != nil {
			fail(err)
			return
		}
		release()
		record(outcome)
		c.respond(req, reply)
		r.runAfter()
	}
}

// errorKind is the metrics outcome of a failed request: its wire kind.
func errorKind(err error) string {
	var e *subjects.Error
	if errors.As(err, &e) {
		return e.Kind
	}
	return subjects.KindInternal
}

// decodeDataRequest decodes and checks everything that needs no tenant.
func decodeDataRequest(req micro.Request, op string) (*dataRequest, error) {
	isJSON := wire.IsJSONHeader(req.Headers())
	r := &dataRequest{}
	if err := wire.Unmarshal(isJSON, req.Data(), &r.Request); err != nil {
		return nil, err
	}
	switch {
	case len(r.Key) == 0:
		return nil, subjects.Errorf(subjects.KindInvalid, "key is empty; a key is 1..%d bytes", subjects.MaxKeyBytes)
	case len(r.Key) > subjects.MaxKeyBytes:
		return nil, subjects.Errorf(subjects.KindTooLarge, "key is %d bytes; the limit is %d", len(r.Key), subjects.MaxKeyBytes)
	case len(r.Value) > subjects.MaxValueBytes:
		return nil, subjects.Errorf(subjects.KindTooLarge, "value is %d bytes; the limit is %d", len(r.Value), subjects.MaxValueBytes)
	case r.Consistency != "" && !ValidLevel(r.Consistency):
		return nil, subjects.Errorf(subjects.KindInvalid, "unknown consistency %q; use one, quorum or all", r.Consistency)
	case r.TimeoutMS < 0 || r.TimeoutMS > subjects.MaxTimeoutMS:
		return nil, subjects.Errorf(subjects.KindInvalid, "timeout_ms %d out of range 0..%d (0 or absent: the coordinator's default)", r.TimeoutMS, subjects.MaxTimeoutMS)
	case len(r.IdempotencyKey) > maxIdempotencyKey:
		return nil, subjects.Errorf(subjects.KindInvalid, "idempotency_key is %d bytes; the limit is %d", len(r.IdempotencyKey), maxIdempotencyKey)
	}
	if op == subjects.OpDelete && len(r.Value) > 0 {
		return nil, subjects.Errorf(subjects.KindInvalid, "delete takes no value")
	}
	switch {
	case r.TTLMs < 0 || r.TTLMs > subjects.MaxTTLMs:
		return nil, subjects.Errorf(subjects.KindInvalid, "ttl_ms %d out of range 0..%d (10 years; 0 or absent: the tenant's default_ttl_ms)", r.TTLMs, subjects.MaxTTLMs)
	case r.TTLMs != 0 && op != subjects.OpPut:
		return nil, subjects.Errorf(subjects.KindInvalid, "ttl_ms is a field of put only")
	}
	if len(r.Context) > maxContextBytes {
		return nil, subjects.Errorf(subjects.KindInvalid, "context is %d bytes; the limit is %d", len(r.Context), maxContextBytes)
	}
	return r, nil
}

// maxContextBytes bounds a context: a siblings context grows by one actor
// per node incarnation that coordinated the key, far below this.
const maxContextBytes = 64 << 10

// sealContext turns the plain context a reply was built with into the
// authenticated one the client sees. Every context leaves through here:
// the read and write paths (and the idempotency store, which keeps replies
// as written) handle plain contexts only, so a stored reply stays valid
// across a key rotation and is sealed under the current key when replayed.
func (c *Coordinator) sealContext(r *dataRequest, ctx *string) error {
	sealed, err := c.keys.Seal(r.tenant.ID, *ctx)
	if err != nil {
		return fmt.Errorf("seal context: %w", err)
	}
	*ctx = sealed
	return nil
}

// parseContext verifies the request's context (it must be one this store
// sealed for this tenant) and decodes it for the tenant's policy.
func (r *dataRequest) parseContext(keys *vclock.ContextKeys) error {
	if r.Context == "" {
		return nil
	}
	siblings := r.tenant.ConflictPolicy == subjects.PolicySiblings
	// A context of the other policy is named plainly, genuine or not.
	switch p := vclock.PolicyOf(r.Context); {
	case siblings && p == subjects.PolicyLWW:
		return subjects.Errorf(subjects.KindInvalid, "context is an lww context, not one for this siblings tenant; read the key again for its context")
	case !siblings && p == subjects.PolicySiblings:
		return subjects.Errorf(subjects.KindInvalid, "context is a siblings context, not one for this lww tenant; read the key again for its context")
	}
	plain, err := keys.Open(r.tenant.ID, r.Context)
	if err != nil {
		return subjects.Errorf(subjects.KindInvalid, "%v", err)
	}
	if siblings {
		ctx, err := vclock.DecodeDVVContext(plain)
		if err != nil {
			return subjects.Errorf(subjects.KindInvalid, "context is not one this store issued for a siblings tenant: %v", err)
		}
		r.dvvCtx = ctx
		return nil
	}
	dot, err := vclock.DecodeContext(plain)
	if err != nil {
		return subjects.Errorf(subjects.KindInvalid, "context is not one this store issued: %v", err)
	}
	// A context from the far future would drag this coordinator's clock
	// (and every dot it mints) along. Only this store's own contexts get
	// here, but a genuine one stays bounded too (another coordinator's
	// clock may be ahead).
	if dot.Counter > vclock.CounterAt(time.Now().Add(maxContextSkew)) {
		return subjects.Errorf(subjects.KindInvalid, "context is dated %s, beyond the allowed clock skew of %s", vclock.Physical(dot.Counter).UTC().Format(time.RFC3339), maxContextSkew)
	}
	r.ctxDot = dot
	return nil
}

// resolve finds the tenant of subject and the level to apply.
func (c *Coordinator) resolve(ctx context.Context, subject string, r *dataRequest) error {
	id := subjects.TenantFromData(subject)
	if err := subjects.ValidateTenantID(id); err != nil {
		return subjects.Errorf(subjects.KindInvalid, "%v", err)
	}
	t, err := c.tenants.get(ctx, id)
	switch {
	case errors.Is(err, metadata.ErrNotFound):
		return subjects.Errorf(subjects.KindNoSuchTenant, "no tenant %q", id)
	case err != nil:
		return storeError("metadata store", err)
	}
	r.tenant = t
	r.level = r.Consistency
	if r.level == "" {
		r.level = t.DefaultConsistency
	}
	return r.parseContext(c.keys)
}

// storeError turns a dependency failure into a wire error naming it.
func storeError(name string, err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return subjects.Errorf(subjects.KindTimeout, "%s did not answer in time: %v", name, err)
	}
	return subjects.Errorf(subjects.KindUnavailable, "%s unavailable: %v", name, err)
}

// writeOnce wraps write with the idempotency protocol: a request that names
// an idempotency key claims it first, under the request's fingerprint; a
// retry gets the first response, and a different request with the same key
// gets 409 idempotency_mismatch. Without a key, the reply's key is a sealed
// token carrying the response (idemtoken.go): a retry with it is answered
// from the token with no store round trip. When the token would be too
// long, a fresh random key is recorded in the store instead (one store
// write); when that record fails, the reply carries no idempotency key:
// only keys that will be honoured are returned.
func (c *Coordinator) writeOnce(ctx context.Context, r *dataRequest, del bool) (*subjects.WriteReply, error) {
	fp := requestFingerprint(r, del)
	if r.IdempotencyKey == "" {
		reply, err := c.write(ctx, r, del)
		if err != nil {
			return nil, err
		}
		if tok, ok := c.mintIdemToken(r.tenant.ID, fp, reply, c.cfg.Now()); ok {
			reply.IdempotencyKey = tok
			return reply, nil
		}
		r.IdempotencyKey = newIdempotencyKey()
		reply.IdempotencyKey = r.IdempotencyKey
		if err := c.recordGenerated(ctx, r, fp, reply); err != nil {
			c.log.Warn("idempotency record failed; the reply carries no idempotency key", "tenant", r.tenant.ID, "err", err)
			reply.IdempotencyKey = ""
		}
		return reply, nil
	}
	if tok, ok := c.openIdemToken(r.tenant.ID, r.IdempotencyKey, c.cfg.Now(), c.cfg.IdempotencyTTL); ok {
		if !bytes.Equal(tok.fingerprint, fp) {
			return nil, subjects.Errorf(subjects.KindIdempotencyMismatch,
				"idempotency key %q was issued for a different request (another key, operation, value or context); retry with the same request or use a new key", r.IdempotencyKey)
		}
		return &subjects.WriteReply{
			Success:        true,
			Key:            r.Key,
			Context:        tok.context,
			IdempotencyKey: r.IdempotencyKey,
			IsDuplicate:    true,
			ReplicaCount:   tok.replicas,
			Consistency:    tok.consistency,
		}, nil
	}
	key := idempotency.Key(r.tenant.ID, r.Key, r.IdempotencyKey)
	claim, err := c.cfg.Idempotency.Begin(ctx, key, fp, c.cfg.PendingTTL)
	switch {
	case errors.Is(err, idempotency.ErrInProgress):
		return nil, subjects.Errorf(subjects.KindInProgress, "a request with idempotency key %q is in progress; retry later", r.IdempotencyKey)
	case errors.Is(err, idempotency.ErrMismatch):
		return nil, subjects.Errorf(subjects.KindIdempotencyMismatch,
			"idempotency key %q was used for a different request on this key (another operation, value or context); retry with the same request or use a new key", r.IdempotencyKey)
	case err != nil:
		return nil, storeError("idempotency store", err)
	case !claim.Owned():
		var prev subjects.WriteReply
		if err := msgpack.Unmarshal(claim.Response, &prev); err != nil {
			return nil, fmt.Errorf("decode stored response for %q: %w", r.IdempotencyKey, err)
		}
		prev.IsDuplicate = true
		return &prev, nil
	}
	reply, werr := c.write(ctx, r, del)
	// The claim must be settled even when the request's own time is up.
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if werr != nil {
		if err := c.cfg.Idempotency.Abort(sctx, key, claim.Token); err != nil && !errors.Is(err, idempotency.ErrNotOwner) {
			c.log.Warn("idempotency abort failed; the marker expires by itself", "err", err)
		}
		return nil, werr
	}
	data, err := msgpack.Marshal(reply)
	if err == nil {
		err = c.cfg.Idempotency.Complete(sctx, key, claim.Token, data, c.cfg.IdempotencyTTL)
	}
	if err != nil {
		c.log.Warn("idempotency complete failed; a retry may write again", "err", err)
	}
	return reply, nil
}

// recordTimeout bounds recording a generated key's response: the write is
// done, and a slow or unreachable idempotency store must not hold its
// answer for long (the reply then goes out without the key).
const recordTimeout = 500 * time.Millisecond

// recordGenerated stores reply under r's generated idempotency key, within
// the request's time and recordTimeout.
func (c *Coordinator) recordGenerated(ctx context.Context, r *dataRequest, fp []byte, reply *subjects.WriteReply) error {
	data, err := msgpack.Marshal(reply)
	if err != nil {
		return fmt.Errorf("encode response for %q: %w", r.IdempotencyKey, err)
	}
	rctx, cancel := context.WithTimeout(ctx, recordTimeout)
	defer cancel()
	key := idempotency.Key(r.tenant.ID, r.Key, r.IdempotencyKey)
	if err := c.cfg.Idempotency.Record(rctx, key, fp, data, c.cfg.IdempotencyTTL); err != nil {
		return fmt.Errorf("record generated idempotency key: %w", err)
	}
	return nil
}

// requestFingerprint identifies what a write asks for, so an idempotency key
// reused for another request is told apart from a retry: a SHA-256 over the
// operation, the data key, the value and the context, each length-prefixed,
// cut to fingerprintBytes. The tenant is part of the store key already;
// consistency and timeout_ms are left out (they change how a write is
// carried out, not what it writes), so a retry may raise them.
func requestFingerprint(r *dataRequest, del bool) []byte {
	op := byte('p')
	if del {
		op = 'd'
	}
	h := sha256.New()
	var n [binary.MaxVarintLen64]byte
	part := func(b []byte) {
		h.Write(binary.AppendUvarint(n[:0], uint64(len(b))))
		h.Write(b)
	}
	part([]byte{op})
	part([]byte(r.Key))
	part(r.Value)
	part([]byte(r.Context))
	if r.TTLMs != 0 {
		// Only when set, so fingerprints of requests without a TTL stay
		// what they were (stored claims and tokens keep matching).
		part(binary.BigEndian.AppendUint64(nil, uint64(r.TTLMs)))
	}
	return h.Sum(nil)[:fingerprintBytes]
}

// fingerprintBytes is how much of the SHA-256 a fingerprint keeps (128
// bits; a collision could only make one client's own two requests look
// alike).
const fingerprintBytes = 16

func newIdempotencyKey() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// write stamps the value (or tombstone) with a new dot and sends it to every
// primary, answering once the level's count acknowledged.
//
// Under lww a primary acknowledges a write only when the write won its
// merge; one that holds a greater dot (minted by a coordinator whose clock
// runs ahead, or by a concurrent write) reports that dot instead. The
// coordinator then observes it, re-stamps the write past the greatest dot
// a quorum of answers reported and sends it to every primary again, so an
// acknowledged write is never superseded by one that finished before it
// started, whatever the coordinators' clocks say (see sendLWW).
func (c *Coordinator) write(ctx context.Context, r *dataRequest, del bool) (*subjects.WriteReply, error) {
	expires, err := c.expires(r, del)
	if err != nil {
		return nil, err
	}
	if r.tenant.ConflictPolicy == subjects.PolicySiblings {
		return c.writeSiblings(ctx, r, del, expires)
	}
	clock := c.clocks.get(r.tenant.ID)
	floor := r.ctxDot // the dot the write must beat
	for attempt := 0; ; attempt++ {
		dot, err := clock.TryStamp(c.cfg.Actor, floor)
		if err != nil {
			return nil, fmt.Errorf("stamp write: %w", err)
		}
		v := &vclock.Version{Dot: dot, Tombstone: del, Expires: expires}
		if !del {
			v.Value = r.Value
			if v.Value == nil {
				v.Value = []byte{}
			}
		}
		reply, sent, err := c.sendLWW(ctx, r, v, attempt > 0)
		var lost *lostWrite
		if errors.As(err, &lost) {
			within := c.observe(clock, lost.by.Counter, "write", r.tenant.ID)
			if floor, err = restamp(floor, lost, within, attempt); err != nil {
				return nil, err
			}
			c.metrics.Restamp()
			continue
		}
		if err != nil {
			return nil, err
		}
		if c.repair != nil {
			r.after = func() { c.hintMissing(ctx, sent.cl, r, sent.nodes, sent.outstanding, sent.acked, *v) }
		}
		return reply, nil
	}
}

// expires returns the Expires of the version r writes (Unix ms; 0 =
// none): for a put, the coordinator's wall time plus ttl_ms, or the
// tenant's default_ttl_ms when the put sets none; for a delete, the wall
// time of the delete (a tombstone is a value that expired when it was
// deleted, so reaping ages every dead version alike). Versions carry
// Expires only in node protocol 3: while a node of the map speaks an
// older one, a delete writes a tombstone without it, and a put with a TTL
// is refused (503) rather than written without its TTL.
func (c *Coordinator) expires(r *dataRequest, del bool) (int64, error) {
	ttl := r.TTLMs
	if ttl == 0 && !del {
		ttl = r.tenant.DefaultTTLMs
	}
	ttlCapable := c.nodeProtocolNow() >= subjects.NodeProtocolTTL
	now := c.cfg.Now().UnixMilli()
	switch {
	case del && ttlCapable:
		return now, nil
	case del || ttl == 0:
		return 0, nil
	case !ttlCapable:
		what := "ttl_ms"
		if r.TTLMs == 0 {
			what = fmt.Sprintf("tenant %q's default_ttl_ms", r.tenant.ID)
		}
		nodes := "some storage nodes"
		if below := c.routing.belowTTL.Load(); below != nil {
			nodes = "storage nodes " + strings.Join(*below, ", ")
		}
		return 0, subjects.Errorf(subjects.KindUnavailable,
			"%s needs node protocol %d on every storage node, and %s speak an older one: upgrade them first; nothing was written",
			what, subjects.NodeProtocolTTL, nodes)
	}
	return now + ttl, nil
}

// sentWrite is what hintMissing needs of a write that met its level: the
// call, the write set it went to, how many of its outcomes are still to
// come, and the nodes that acknowledged.
type sentWrite struct {
	cl          *replica.Call
	nodes       []string
	outstanding int
	acked       []string
}

// sendLWW sends v to the key's write set and waits for the level among
// its current owners: the reply, and what hintMissing needs. On a first
// attempt, primaries that report the write lost do not count; once the
// level's number of primaries answered and some reported a loss, the wait
// ends with a *lostWrite naming the greatest dot they hold. restamped (a
// later attempt) counts a loss as an acknowledgement: the write was
// stamped past every version that quorum of answers held, which includes
// every write acknowledged before this one started (quorums overlap), so a
// greater dot now is a concurrent write's, and losing to a concurrent
// write breaks no promise. Without that, writers contending for one key
// would re-stamp past each other until they failed.
//
// A node that refuses v as not_owner means the map is stale: once the
// level cannot be met, v (the same version) is sent again under the
// reloaded map, at most maxNotOwnerRetries times (retryNotOwner).
func (c *Coordinator) sendLWW(ctx context.Context, r *dataRequest, v *vclock.Version, restamped bool) (*subjects.WriteReply, sentWrite, error) {
	deadline, _ := ctx.Deadline()
	for try := 0; ; try++ {
		rt, err := c.route(r, true)
		if err != nil {
			return nil, sentWrite{}, err
		}
		cl := rt.newCall(len(rt.nodes))
		for _, node := range rt.nodes {
			c.rep.Write(cl, node, deadline, subjects.NodeWrite{Tenant: r.tenant.ID, Key: r.Key, LWW: v})
		}
		t := rt.writeTally()
		t.lossIsAck = restamped
		var acked []string
		heard := 0
		err = c.await(ctx, cl, &t, r.level, nil, func(o replica.Outcome) {
			heard++
			if _, lost := o.LostTo(); o.Err == nil && !lost {
				acked = append(acked, o.Node)
			}
		})
		if retry, err := c.retryNotOwner(ctx, notOwnerf(&t, rt.pl.version, err), try); retry {
			continue
		} else if err != nil {
			return nil, sentWrite{}, err
		}
		return &subjects.WriteReply{
				Success:        true,
				Key:            r.Key,
				Context:        vclock.EncodeContext(v.Dot),
				IdempotencyKey: r.IdempotencyKey,
				ReplicaCount:   t.acks,
				Consistency:    r.level,
			}, sentWrite{
				cl: cl, nodes: rt.nodes, acked: acked,
				outstanding: len(rt.nodes) - heard,
			}, nil
	}
}

// lostWrite is await's error when a primary reports that an lww write lost
// its merge to the greater dot by: the write would vanish once that
// version reaches every replica, so it must not count as acknowledged.
type lostWrite struct {
	node string
	by   vclock.Dot
}

func (e *lostWrite) Error() string {
	return fmt.Sprintf("%s holds a newer version (%d@%s)", e.node, e.by.Counter, e.by.Actor)
}

// restamp decides what an lww write does after attempt (0-based) lost to
// lost: it returns the dot the next stamp must beat, or the error to answer
// with. within reports whether lost's counter is within the allowed skew
// (and so was observed into the clock): a write cannot be ordered after a
// version dated further ahead without dragging the tenant's clock there.
// restamp is pure.
func restamp(floor vclock.Dot, lost *lostWrite, within bool, attempt int) (vclock.Dot, error) {
	switch {
	case !within:
		return floor, subjects.Errorf(subjects.KindUnavailable,
			"the key holds a version dated %s, beyond the allowed clock skew of %s ahead of this coordinator's clock; writes to this key are refused until the wall time comes within that skew of it",
			vclock.Physical(lost.by.Counter).Format(time.RFC3339), maxClockSkew)
	case attempt >= maxRestamps:
		return floor, subjects.Errorf(subjects.KindUnavailable,
			"the key kept receiving newer versions: the write lost to a newer one %d times (last: %v); retry", attempt+1, lost)
	}
	if lost.by.Compare(floor) > 0 {
		floor = lost.by
	}
	return floor, nil
}

// read asks the primaries readTargets picks and answers with the merge of
// the first replies that meet the level; the others are asked when one of
// those fails or is slow (see await).
func (c *Coordinator) read(ctx context.Context, r *dataRequest) (*subjects.GetReply, error) {
	for try := 0; ; try++ {
		reply, err := c.readOnce(ctx, r)
		if retry, err := c.retryNotOwner(ctx, err, try); retry {
			continue
		} else if err != nil {
			return nil, err
		}
		return reply, nil
	}
}

// readOnce is one attempt of read under the current map; a not_owner
// refusal that left the level unmet ends it with a *notOwnerError.
func (c *Coordinator) readOnce(ctx context.Context, r *dataRequest) (*subjects.GetReply, error) {
	rt, err := c.route(r, false)
	if err != nil {
		return nil, err
	}
	pref, need := rt.nodes, rt.need
	deadline, _ := ctx.Deadline()
	cl := rt.newCall(len(pref))
	send := func(node string) {
		c.rep.Read(cl, node, deadline, subjects.NodeRead{Tenant: r.tenant.ID, Key: r.Key})
	}
	var ask, rest []string
	t := tally{required: need}
	if rt.target != nil {
		// A joint read (see route): need answers among the current row
		// and among the target row, each node counting in its rows.
		ask, rest = c.jointReadTargets(&rt, r.level)
		t.total, t.counted, t.target = rt.counted, rt.nodes[:rt.counted], rt.target
	} else {
		ask, rest = c.readTargets(pref, need, r.level)
		t.total = len(ask)
	}
	for _, node := range ask {
		send(node)
	}
	var sp *spares
	if len(rest) > 0 {
		sp = &spares{asked: ask, rest: rest, send: send, delay: c.cfg.SpeculativeRetry}
		if sp.delay == 0 {
			sp.delay = c.rep.SpeculativeDelay()
		}
	}
	var versions [7]vclock.Version
	got := versions[:0]
	var replies []ReplicaVersion
	heard := 0
	err = c.await(ctx, cl, &t, r.level, sp, func(o replica.Outcome) {
		heard++
		if o.Err == nil && o.Read != nil && o.Read.LWW != nil {
			got = append(got, *o.Read.LWW)
		}
		if o.Err == nil && o.Read != nil {
			replies = append(replies, ReplicaVersion{Node: o.Node, LWW: o.Read.LWW, DVV: o.Read.DVV})
		}
	})
	if err != nil {
		return nil, notOwnerf(&t, rt.pl.version, err)
	}
	if c.repair != nil {
		asked := len(ask)
		if sp != nil {
			asked = len(sp.asked)
		}
		current := rt.nodes[:rt.counted]
		r.after = func() { c.repairRead(ctx, cl, r, asked-heard, replies, current) }
	}
	reply := &subjects.GetReply{Success: true, Key: r.Key, ReplicaCount: t.acks, Consistency: r.level}
	if r.tenant.ConflictPolicy == subjects.PolicySiblings {
		c.siblingsReply(r, reply, replies)
		return reply, nil
	}
	if merged, ok := vclock.MergeAll(got); ok {
		c.observe(c.clocks.get(r.tenant.ID), merged.Dot.Counter, "read", r.tenant.ID)
		reply.Context = vclock.EncodeContext(merged.Dot)
		// An expired value reads as a tombstone does: not found, with the
		// context, so a write with it replaces the value.
		if merged.LiveAt(c.cfg.Now().UnixMilli()) {
			reply.Found = true
			reply.Value = merged.Value
			reply.ExpiresAtMs = merged.Expires
		}
	}
	return reply, nil
}

// readTargets splits pref into the primaries a read asks at once and the
// ones it keeps in reserve. A quorum read asks the first need primaries of
// pref, those not suspected of failing or being slow first, except for a
// ReadRepairChance share of reads, which ask every primary. Reads at one
// and all ask every primary: all needs them, and one wants the fastest
// answer (and the freshest: a put at one is acknowledged by one replica,
// and a get at one that asked a single other replica would miss it far
// more often). Each node comes first in 1/rf of the preference lists, so
// reads stay spread evenly.
func (c *Coordinator) readTargets(pref []string, need int, level string) (ask, rest []string) {
	chance := c.cfg.ReadRepairChance
	if level != subjects.Quorum || need >= len(pref) || chance >= 1 || (chance > 0 && mrand.Float64() < chance) {
		return pref, nil
	}
	now := time.Now()
	ordered := make([]string, 0, len(pref))
	for _, node := range pref {
		if !c.rep.Suspected(node, now) {
			ordered = append(ordered, node)
		}
	}
	for _, node := range pref {
		if c.rep.Suspected(node, now) {
			ordered = append(ordered, node)
		}
	}
	return ordered[:need], ordered[need:]
}

// jointReadTargets is readTargets for a joint read of a moving
// partition (rt.target set): quorum reads ask, healthy nodes first and
// among them those in both rows first, each node that still adds to a
// row short of rt.need, and keep the rest in reserve; the
// ReadRepairChance share asks every current owner besides, as a read of a
// partition that does not move does, but a receiver only where the joint
// level needs it: a receiver still pulling the partition lacks most keys,
// and asking it in that share made every such read a repair of the
// receiver (a JetStream publish and a write; the membership cell's
// foreground fell from 0.71x to 0.44x of its value before the join).
// Reads at one and all ask every node of both rows.
func (c *Coordinator) jointReadTargets(rt *route, level string) (ask, rest []string) {
	if level != subjects.Quorum {
		return rt.nodes, nil
	}
	now := time.Now()
	ask, rest = pickJoint(rt.nodes, rt.counted, rt.target, rt.need, func(node string) bool { return c.rep.Suspected(node, now) })
	if chance := c.cfg.ReadRepairChance; chance >= 1 || (chance > 0 && mrand.Float64() < chance) {
		for _, node := range rt.nodes[:rt.counted] {
			if !slices.Contains(ask, node) {
				ask = append(ask, node)
				rest = slices.DeleteFunc(rest, func(n string) bool { return n == node })
			}
		}
	}
	return ask, rest
}

// pickJoint splits nodes (the current row nodes[:counted], then the
// target row's other members; target is the target row) into the nodes a
// joint quorum read asks and the ones it keeps in reserve: in the order
// unsuspected before suspected, and within each nodes in both rows
// before the others (each in nodes' order), a node is asked when a row it
// counts in still has fewer than need of the nodes asked. Pure, for the
// exhaustive test.
func pickJoint(nodes []string, counted int, target []string, need int, suspected func(string) bool) (ask, rest []string) {
	cur := nodes[:counted]
	// Each node is ranked once (suspected asks the replica client's
	// shared state) and placed by rank, keeping nodes' order within one:
	// a stable sort calling it per comparison cost a read of a moving
	// partition more than the rest of its routing.
	var buf [16]int8
	ranks := buf[:0]
	for _, node := range nodes {
		r := int8(0)
		if suspected(node) {
			r = 2
		}
		if !slices.Contains(cur, node) || !slices.Contains(target, node) {
			r++
		}
		ranks = append(ranks, r)
	}
	ordered := make([]string, 0, len(nodes))
	for r := range int8(4) {
		for i, node := range nodes {
			if ranks[i] == r {
				ordered = append(ordered, node)
			}
		}
	}
	inCur, inTgt := 0, 0
	for _, node := range ordered {
		c, g := slices.Contains(cur, node), slices.Contains(target, node)
		if (c && inCur < need) || (g && inTgt < need) {
			ask = append(ask, node)
			if c {
				inCur++
			}
			if g {
				inTgt++
			}
			continue
		}
		rest = append(rest, node)
	}
	return ask, rest
}
