package repair

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"

	"github.com/quorumkv/quorumkv/internal/microsvc"
	"github.com/quorumkv/quorumkv/storage/replica"
	"github.com/quorumkv/quorumkv/subjects"
	"github.com/quorumkv/quorumkv/vclock"
)

// Version is the repair worker's version as nats micro reports it.
const Version = "0.1.0"

// WorkerStats counts what one worker did since it started.
type WorkerStats struct {
	Name         string    `json:"name"`
	Started      time.Time `json:"started"`
	Applied      uint64    `json:"applied"`       // messages whose every target confirmed the merge (acked)
	Failed       uint64    `json:"failed"`        // deliveries that failed and were nak'd for a retry with back-off
	DeadLettered uint64    `json:"dead_lettered"` // messages moved to the dead-letter stream
	NodeWrites   uint64    `json:"node_writes"`   // merges confirmed by a target node (one per message and target)
	SkewRejected uint64    `json:"skew_rejected"` // messages dead-lettered because their version was dated beyond MaxSkew
	Batches      uint64    `json:"batches"`       // fetched batches processed
}

// Worker is a repair worker: it pulls repair requests from the shared
// durable consumer in batches, sends each request's version to its target
// nodes as a merge, and acknowledges a message only once every target
// confirmed it. A message with a target that failed is nak'd with an
// exponential back-off; on its last delivery it moves to the dead-letter
// stream. Any number of workers may run on any number of hosts.
type Worker struct {
	cfg    Config
	nc     *nats.Conn
	js     jetstream.JetStream
	stream jetstream.Stream
	cons   jetstream.Consumer
	log    *slog.Logger
	svc    *microsvc.Service
	adv    *nats.Subscription
	rep    *replica.Client // writes merges to the target nodes

	started                                         time.Time
	applied, failed, dead, nodeWrites, batchesCount atomic.Uint64
	skewRejected                                    atomic.Uint64

	exhausted chan uint64 // stream sequences the server gave up on (advisories)
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	stopOnce  sync.Once

	// beforeAck, when set (tests only), runs after a message's targets
	// confirmed and before it is acknowledged.
	beforeAck func(*subjects.RepairRequest)
}

// NewWorker starts a worker on nc, which the caller keeps owning. It calls
// Ensure first, so the first process to start creates the streams.
func NewWorker(ctx context.Context, nc *nats.Conn, cfg Config) (*Worker, error) {
	return newWorker(ctx, nc, cfg, nil)
}

func newWorker(ctx context.Context, nc *nats.Conn, cfg Config, beforeAck func(*subjects.RepairRequest)) (*Worker, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("repair: jetstream: %w", err)
	}
	if err := ensure(ctx, js, &cfg); err != nil {
		return nil, err
	}
	w := &Worker{
		cfg:       cfg,
		nc:        nc,
		js:        js,
		log:       cfg.Logger.With("repair_worker", cfg.Name),
		started:   time.Now(),
		exhausted: make(chan uint64, 1024),
		beforeAck: beforeAck,
	}
	if w.stream, err = js.Stream(ctx, StreamName); err != nil {
		return nil, fmt.Errorf("repair: stream %s: %w", StreamName, err)
	}
	if w.cons, err = w.stream.Consumer(ctx, ConsumerName); err != nil {
		return nil, fmt.Errorf("repair: consumer %s: %w", ConsumerName, err)
	}
	// Every worker listens, one (queue group) handles each advisory.
	w.adv, err = nc.QueueSubscribe(advisoryPrefix+"."+StreamName+"."+ConsumerName, ConsumerName+"-dead", w.onMaxDeliveries)
	if err != nil {
		return nil, fmt.Errorf("repair: subscribe max-delivery advisories: %w", err)
	}
	if err := w.addService(); err != nil {
		_ = w.adv.Unsubscribe()
		return nil, err
	}
	// One fetched batch queues at most Batch merges per node.
	w.rep, err = replica.New(nc, replica.Config{QueueLen: max(replica.DefaultConfig().QueueLen, 2*cfg.Batch)})
	if err != nil {
		w.svc.Stop()
		_ = w.adv.Unsubscribe()
		return nil, fmt.Errorf("repair: %w", err)
	}
	bg, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	w.wg.Add(2)
	go func() { defer w.wg.Done(); w.run(bg) }()
	go func() { defer w.wg.Done(); w.runExhausted(bg) }()
	w.log.Info("repair worker started", "batch", cfg.Batch, "ack_wait", cfg.AckWait, "max_deliver", cfg.MaxDeliver)
	return w, nil
}

// addService registers the worker as nats micro service quorumkv-repair, so
// `quorumkv repair status` and `nats micro stats quorumkv-repair` see its
// counters.
func (w *Worker) addService() error {
	svc, err := microsvc.New(w.nc, microsvc.Config{
		Name:        ServiceName,
		Version:     Version,
		Description: "quorumkv repair worker",
		QueueGroup:  "q", // micro's default
		Metadata:    map[string]string{"name": w.cfg.Name},
		StatsData:   func() any { return w.Stats() },
	})
	if err != nil {
		return fmt.Errorf("repair: add micro service: %w", err)
	}
	err = svc.AddEndpoint("stats", subjects.RepairWorkersStats, func(req micro.Request) {
		_ = req.RespondJSON(w.Stats())
	})
	if err != nil {
		svc.Stop()
		return fmt.Errorf("repair: add stats endpoint: %w", err)
	}
	w.svc = svc
	return nil
}

// Stats returns the worker's counters.
func (w *Worker) Stats() WorkerStats {
	return WorkerStats{
		Name:         w.cfg.Name,
		Started:      w.started,
		Applied:      w.applied.Load(),
		Failed:       w.failed.Load(),
		DeadLettered: w.dead.Load(),
		NodeWrites:   w.nodeWrites.Load(),
		SkewRejected: w.skewRejected.Load(),
		Batches:      w.batchesCount.Load(),
	}
}

// Stop stops fetching, lets the batch in hand finish (each of its messages
// is acked or nak'd; any the server already sent beyond it are redelivered
// after AckWait), and returns once every goroutine of the worker ended. It
// does not close the connection. Safe to call more than once.
func (w *Worker) Stop() {
	w.stopOnce.Do(func() {
		w.cancel()
		_ = w.adv.Unsubscribe()
		w.wg.Wait()
		w.rep.Stop()
		w.svc.Stop()
		w.log.Info("repair worker stopped", "stats", w.Stats())
	})
}

// run fetches and processes batches until ctx ends.
func (w *Worker) run(ctx context.Context) {
	failing := false
	for ctx.Err() == nil {
		msgs, err := w.fetch(ctx)
		if len(msgs) > 0 {
			w.process(msgs)
		}
		switch {
		case err == nil || ctx.Err() != nil:
			if failing {
				w.log.Info("repair consumer reachable again")
				failing = false
			}
			continue
		case errors.Is(err, nats.ErrConnectionClosed):
			w.log.Warn("repair worker's NATS connection closed; stopping")
			return
		}
		if !failing {
			w.log.Warn("fetching repair requests failed; retrying", "err", err)
			failing = true
		}
		if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
			ectx, cancel := context.WithTimeout(ctx, w.cfg.NodeTimeout)
			if err := ensure(ectx, w.js, &w.cfg); err != nil {
				w.log.Warn("recreating repair stream and consumer failed", "err", err)
			}
			cancel()
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// fetch returns what is available at once, up to Batch; when nothing is,
// it waits up to FetchWait for one message and then takes what else came.
func (w *Worker) fetch(ctx context.Context) ([]jetstream.Msg, error) {
	msgs, err := drain(w.cons.FetchNoWait(w.cfg.Batch))
	if len(msgs) > 0 || err != nil {
		return msgs, err
	}
	fctx, cancel := context.WithTimeout(ctx, w.cfg.FetchWait)
	defer cancel()
	msgs, err = drain(w.cons.Fetch(1, jetstream.FetchContext(fctx)))
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		err = nil
	}
	if len(msgs) == 0 || err != nil || w.cfg.Batch == 1 {
		return msgs, err
	}
	more, err := drain(w.cons.FetchNoWait(w.cfg.Batch - 1))
	return append(msgs, more...), err
}

func drain(b jetstream.MessageBatch, err error) ([]jetstream.Msg, error) {
	if err != nil {
		return nil, err
	}
	var msgs []jetstream.Msg
	for m := range b.Messages() {
		msgs = append(msgs, m)
	}
	return msgs, b.Error()
}

// job is one delivered message being processed.
type job struct {
	msg   jetstream.Msg
	req   *subjects.RepairRequest
	meta  *jetstream.MsgMetadata
	fails []string // "node: reason" of each target that did not confirm
}

// process carries out a batch: every message's version goes to each of
// its targets as a merge (batched per node by the replica client, all
// nodes at once), then each message is acked or nak'd by the outcome of
// all its targets.
func (w *Worker) process(msgs []jetstream.Msg) {
	w.batchesCount.Add(1)
	jobs := make([]*job, 0, len(msgs))
	byNode := map[string][]int{}
	for _, m := range msgs {
		meta, err := m.Metadata()
		if err != nil {
			w.log.Warn("repair message without metadata; leaving it for redelivery", "err", err)
			continue
		}
		req, err := Decode(m.Data())
		if err != nil {
			// Poison: no retry can help. Keep it for the operator.
			w.deadLetterMsg(&job{msg: m, meta: meta, fails: []string{err.Error()}})
			continue
		}
		if reason := w.beyondSkew(req); reason != "" {
			// No retry can help either: the version stays as far ahead.
			w.skewRejected.Add(1)
			w.deadLetterMsg(&job{msg: m, meta: meta, fails: []string{reason}})
			continue
		}
		jobs = append(jobs, &job{msg: m, req: req, meta: meta})
		seen := map[string]bool{}
		for _, t := range req.Targets {
			if !seen[t] {
				seen[t] = true
				byNode[t] = append(byNode[t], len(jobs)-1)
			}
		}
	}
	w.writeTargets(jobs, byNode)
	var unsettled int
	var lastErr error
	for _, j := range jobs {
		if err := w.settle(j); err != nil {
			unsettled, lastErr = unsettled+1, err
		}
	}
	if unsettled > 0 {
		w.log.Warn("could not ack or nak messages; the server redelivers them after the ack wait, and merging again is harmless",
			"messages", unsettled, "err", lastErr)
	}
}

// beyondSkew returns why req must not be merged when its lww version is
// dated beyond MaxSkew ahead of the worker's clock, or "". Such a version
// was minted by a clock far ahead of this deployment's (or forged): merged
// into a replica, it would win every later write of the key and, read by a
// coordinator, would be refused by its clock anyway.
func (w *Worker) beyondSkew(req *subjects.RepairRequest) string {
	if req.LWW == nil || vclock.WithinSkew(req.LWW.Dot.Counter, w.cfg.Now(), w.cfg.MaxSkew) {
		return ""
	}
	return fmt.Sprintf("lww version %d@%s is dated %s, beyond the allowed clock skew of %s ahead of this worker's clock; not merged",
		req.LWW.Dot.Counter, req.LWW.Dot.Actor, vclock.Physical(req.LWW.Dot.Counter).Format(time.RFC3339), w.cfg.MaxSkew)
}

// settle acks, naks or dead-letters one processed message. An error means
// the server did not hear the ack or nak.
func (w *Worker) settle(j *job) error {
	if len(j.fails) == 0 {
		if w.beforeAck != nil {
			w.beforeAck(j.req)
		}
		if err := j.msg.Ack(); err != nil {
			return fmt.Errorf("ack: %w", err)
		}
		w.applied.Add(1)
		return nil
	}
	if j.meta.NumDelivered >= uint64(w.cfg.MaxDeliver) {
		w.deadLetterMsg(j)
		return nil
	}
	w.failed.Add(1)
	delay := w.cfg.backoff(j.meta.NumDelivered)
	w.log.Debug("repair failed; retrying later", "tenant", j.req.Tenant, "delivery", j.meta.NumDelivered, "delay", delay, "err", strings.Join(j.fails, "; "))
	if err := j.msg.NakWithDelay(delay); err != nil {
		return fmt.Errorf("nak: %w", err)
	}
	return nil
}

// writeTargets sends each job's version to each of its targets as a
// merge (byNode: the jobs of each target, by index) and records in the
// jobs the targets that did not confirm it. The replica client batches a
// node's merges into as few messages as fit; every merge gets NodeTimeout
// from now.
func (w *Worker) writeTargets(jobs []*job, byNode map[string][]int) {
	type sent struct {
		job  int
		node string
	}
	pending := map[uint64]sent{} // by item ID
	deadline := time.Now().Add(w.cfg.NodeTimeout)
	n := 0
	for _, idx := range byNode {
		n += len(idx)
	}
	call := replica.NewCall(n)
	for node, idx := range byNode {
		ws := make([]subjects.NodeWrite, len(idx))
		for k, i := range idx {
			r := jobs[i].req
			ws[k] = subjects.NodeWrite{Tenant: r.Tenant, Key: r.Key, LWW: r.LWW, DVV: r.DVV}
		}
		w.rep.Write(call, node, deadline, ws...)
		for k, i := range idx {
			pending[ws[k].ID] = sent{job: i, node: node}
		}
	}
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	for len(pending) > 0 {
		select {
		case o := <-call.Outcomes():
			s, ok := pending[o.ID]
			if !ok {
				continue
			}
			delete(pending, o.ID)
			if o.Err != nil {
				jobs[s.job].fails = append(jobs[s.job].fails, s.node+": "+failReason(o.Err))
			} else {
				w.nodeWrites.Add(1)
			}
		case <-timer.C:
			for _, s := range pending {
				jobs[s.job].fails = append(jobs[s.job].fails, fmt.Sprintf("%s: no reply within %s", s.node, w.cfg.NodeTimeout))
			}
			return
		}
	}
}

// failReason is how a failed merge reads in logs and dead letters.
func failReason(err error) string {
	if errors.Is(err, replica.ErrNodeDown) {
		return "node is down (no responders)"
	}
	return err.Error()
}

// deadLetterMsg moves a delivered message to the dead-letter stream and
// terminates it. If the move fails the message is left alone: the server
// stops delivering it and announces that with an advisory, which moves it.
func (w *Worker) deadLetterMsg(j *job) {
	reason := strings.Join(j.fails, "; ")
	ctx, cancel := context.WithTimeout(context.Background(), w.cfg.NodeTimeout)
	defer cancel()
	if err := w.deadLetter(ctx, j.msg.Subject(), j.msg.Data(), j.msg.Headers(), j.meta.Sequence.Stream, j.meta.NumDelivered, reason); err != nil {
		w.log.Error("moving a repair request to the dead-letter stream failed", "seq", j.meta.Sequence.Stream, "err", err)
		return
	}
	if err := j.msg.TermWithReason("moved to " + DeadStreamName); err != nil {
		w.log.Warn("terminating a dead-lettered message failed", "seq", j.meta.Sequence.Stream, "err", err)
	}
}

// deadLetter publishes a copy of a KV_REPAIR message to the dead-letter
// stream, with why it failed. Its Nats-Msg-Id derives from the stream
// sequence, so a message moved by two paths is stored once.
func (w *Worker) deadLetter(ctx context.Context, subject string, data []byte, hdr nats.Header, seq, deliveries uint64, reason string) error {
	tenant := strings.TrimPrefix(subject, subjects.RepairPrefix+".")
	if !validToken(tenant) {
		tenant = "_invalid"
	}
	m := nats.NewMsg(subjects.RepairDead(tenant))
	m.Data = data
	for k, v := range hdr {
		if !strings.HasPrefix(k, "Nats-") {
			m.Header[k] = v
		}
	}
	m.Header.Set(HeaderError, reason)
	m.Header.Set(HeaderDeliveries, strconv.FormatUint(deliveries, 10))
	m.Header.Set(HeaderStreamSeq, strconv.FormatUint(seq, 10))
	m.Header.Set(HeaderSubject, subject)
	m.Header.Set(jetstream.MsgIDHeader, "dead-"+strconv.FormatUint(seq, 10))
	if _, err := w.js.PublishMsg(ctx, m); err != nil {
		return fmt.Errorf("publish to %s: %w", m.Subject, err)
	}
	w.dead.Add(1)
	w.log.Warn("repair request dead-lettered", "seq", seq, "subject", subject, "deliveries", deliveries, "err", reason)
	return nil
}

// validToken reports whether s can be one subject token.
func validToken(s string) bool {
	return s != "" && !strings.ContainsAny(s, ".*> \t\r\n")
}

// maxDeliveriesAdvisory is the part of the server's
// io.nats.jetstream.advisory.v1.max_deliver event the worker reads.
type maxDeliveriesAdvisory struct {
	StreamSeq  uint64 `json:"stream_seq"`
	Deliveries uint64 `json:"deliveries"`
}

// onMaxDeliveries hears that the server gave up on a message that no
// worker settled on its last delivery (a worker crashed or ran past
// AckWait), and hands it to runExhausted.
func (w *Worker) onMaxDeliveries(m *nats.Msg) {
	var a maxDeliveriesAdvisory
	if err := json.Unmarshal(m.Data, &a); err != nil || a.StreamSeq == 0 {
		return
	}
	select {
	case w.exhausted <- a.StreamSeq:
	default:
		w.log.Warn("too many exhausted repair requests at once; one stays in KV_REPAIR undelivered", "seq", a.StreamSeq)
	}
}

// runExhausted moves messages the server stopped delivering to the
// dead-letter stream until ctx ends.
func (w *Worker) runExhausted(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case seq := <-w.exhausted:
			if err := w.moveExhausted(ctx, seq); err != nil {
				w.log.Error("moving an exhausted repair request to the dead-letter stream failed; it stays in KV_REPAIR", "seq", seq, "err", err)
			}
		}
	}
}

func (w *Worker) moveExhausted(ctx context.Context, seq uint64) error {
	ctx, cancel := context.WithTimeout(ctx, w.cfg.NodeTimeout)
	defer cancel()
	raw, err := w.stream.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil // settled meanwhile
	}
	if err != nil {
		return fmt.Errorf("get message %d: %w", seq, err)
	}
	reason := fmt.Sprintf("delivered %d times without an ack (a worker crashed or exceeded the ack wait)", w.cfg.MaxDeliver)
	if err := w.deadLetter(ctx, raw.Subject, raw.Data, raw.Header, seq, uint64(w.cfg.MaxDeliver), reason); err != nil {
		return err
	}
	if err := w.stream.DeleteMsg(ctx, seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("delete message %d: %w", seq, err)
	}
	return nil
}
