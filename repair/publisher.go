package repair

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/quorumkv/quorumkv/subjects"
)

// PublisherStats counts a Publisher's requests since it started.
type PublisherStats struct {
	Queued    uint64 // accepted by Publish
	Published uint64 // stored in KV_REPAIR (or recognised as a duplicate)
	Dropped   uint64 // lost: queue full, invalid, or JetStream refused or did not answer
	Pending   int    // queued or awaiting the stream's ack now
}

// Publisher publishes repair requests for a coordinator. Publish never
// blocks: it queues, and one goroutine publishes asynchronously with at
// most MaxInflight publishes awaiting their ack. A request that cannot be
// stored (queue full, JetStream unavailable) is dropped, counted and
// logged: the client's read or write has been answered already, and a
// later read repairs what a lost request would have.
type Publisher struct {
	cfg Config
	js  jetstream.JetStream
	log *slog.Logger

	queue chan *subjects.RepairRequest

	queued, published, dropped atomic.Uint64
	inflight                   atomic.Int64
	lastLog                    atomic.Int64 // unix nanos of the last drop logged
	abandon                    atomic.Bool  // Stop timed out: drop what is still queued

	mu     sync.RWMutex // guards closed against sends on queue
	closed bool
	done   chan struct{}
}

// NewPublisher starts a publisher on nc. It calls Ensure; a configuration
// mismatch is an error, while an unreachable JetStream is only logged (the
// coordinator must serve without it, and counts what it loses).
func NewPublisher(ctx context.Context, nc *nats.Conn, cfg Config) (*Publisher, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	p := &Publisher{
		cfg:   cfg,
		log:   cfg.Logger.With("component", "repair-publisher"),
		queue: make(chan *subjects.RepairRequest, cfg.QueueLen),
		done:  make(chan struct{}),
	}
	js, err := jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(cfg.MaxInflight),
		jetstream.WithPublishAsyncTimeout(cfg.NodeTimeout),
		jetstream.WithPublishAsyncAckHandler(func(jetstream.JetStream, *nats.Msg, *jetstream.PubAck) {
			p.inflight.Add(-1)
			p.published.Add(1)
		}),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, m *nats.Msg, err error) {
			p.inflight.Add(-1)
			var apiErr *jetstream.APIError
			if errors.As(err, &apiErr) && apiErr.ErrorCode == errCodeDuplicateInProcess {
				// The same repair (same Nats-Msg-Id) is being stored right
				// now by another publish: not a loss.
				p.published.Add(1)
				return
			}
			p.drop(m.Subject, err)
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("repair: jetstream: %w", err)
	}
	p.js = js
	if _, err := ensureStreams(ctx, js, &p.cfg); err != nil {
		if errors.Is(err, ErrConfigMismatch) {
			return nil, err
		}
		p.log.Warn("repair streams not ready; repair requests are dropped until a repair worker creates them", "err", err)
	}
	go p.run()
	return p, nil
}

// Publish queues r and reports whether it was accepted. It never blocks.
func (p *Publisher) Publish(r subjects.RepairRequest) bool {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed {
		p.drop(subjects.Repair(r.Tenant), errors.New("publisher closed"))
		return false
	}
	select {
	case p.queue <- &r:
		p.queued.Add(1)
		return true
	default:
		p.drop(subjects.Repair(r.Tenant), fmt.Errorf("queue full (%d)", cap(p.queue)))
		return false
	}
}

// run publishes queued requests until Stop.
func (p *Publisher) run() {
	defer close(p.done)
	for r := range p.queue {
		subject := subjects.Repair(r.Tenant)
		if p.abandon.Load() {
			p.drop(subject, errors.New("publisher closed before it was sent"))
			continue
		}
		data, err := Encode(r)
		if err != nil {
			p.drop(subject, err)
			continue
		}
		m := nats.NewMsg(subject)
		m.Data = data
		m.Header.Set(jetstream.MsgIDHeader, MsgID(r))
		p.inflight.Add(1)
		// Blocks (up to the stall wait) while MaxInflight acks are due.
		if _, err := p.js.PublishMsgAsync(m, jetstream.WithStallWait(p.cfg.NodeTimeout)); err != nil {
			p.inflight.Add(-1)
			p.drop(subject, err)
		}
	}
}

// drop counts a lost request and logs it, at most once a second.
func (p *Publisher) drop(subject string, err error) {
	n := p.dropped.Add(1)
	now := time.Now().UnixNano()
	last := p.lastLog.Load()
	if now-last >= int64(time.Second) && p.lastLog.CompareAndSwap(last, now) {
		p.log.Warn("repair request lost; a later read repairs the key", "subject", subject, "err", err, "lost_total", n)
	}
}

// Stats returns the publisher's counters.
func (p *Publisher) Stats() PublisherStats {
	return PublisherStats{
		Queued:    p.queued.Load(),
		Published: p.published.Load(),
		Dropped:   p.dropped.Load(),
		Pending:   len(p.queue) + int(p.inflight.Load()),
	}
}

// Stop stops taking requests, publishes what is queued and waits up to
// Config.DrainTimeout for the stream's acks; past it, what is left is
// dropped and counted. It returns once its goroutine has stopped and does
// not close the connection. Safe to call more than once.
func (p *Publisher) Stop() {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.closed = true
	close(p.queue)
	p.mu.Unlock()
	timer := time.NewTimer(p.cfg.DrainTimeout)
	defer timer.Stop()
	select {
	case <-p.done:
	case <-timer.C:
		p.log.Warn("repair publisher closing with requests still queued; dropping them", "queued", len(p.queue))
		p.abandon.Store(true)
		<-p.done
		return
	}
	select {
	case <-p.js.PublishAsyncComplete():
	case <-timer.C:
		p.log.Warn("repair publisher closing with acks outstanding", "inflight", p.inflight.Load())
	}
}
