// Package repair moves repairs through JetStream: coordinators publish a
// subjects.RepairRequest when a read sees replicas that lack the merge
// (read repair) or a primary did not acknowledge a write (hinted handoff);
// repair workers pull them from one durable consumer and merge the version
// into each target node.
//
// The pieces:
//
//   - [Ensure] creates the work stream KV_REPAIR (subjects kv.repair.*,
//     work-queue retention), its durable pull consumer, and the dead-letter
//     stream KV_REPAIR_DEAD (subjects kv.repair.dead.*), or checks that
//     existing ones match and reports every difference.
//   - [Publisher] is what a coordinator publishes with: asynchronous, with a
//     bounded queue and bounded in-flight, never blocking a request; what it
//     cannot publish it counts and logs.
//   - [Worker] is a repair worker. Any number may share the consumer.
//   - [ReadStatus], [ListDead] and [ReplayDead] are the operator's view.
//
// Repair only ever merges (max of lww versions), so a repair that races a
// newer write, runs twice, or arrives late is harmless: the newer dot wins
// on every replica. docs/REPAIR.md describes the settings and the operator's
// tasks.
package repair

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"time"
)

// Names of the JetStream objects. Their subjects are in package subjects:
// the work stream takes subjects.RepairAll, the dead-letter stream
// subjects.RepairDeadAll.
const (
	StreamName     = "KV_REPAIR"
	DeadStreamName = "KV_REPAIR_DEAD"
	ConsumerName   = "repair-workers"
	ServiceName    = "quorumkv-repair" // nats micro service of the workers (stats)
	// advisoryPrefix is the NATS server's advisory of a message that
	// exhausted its deliveries (not a quorumkv subject).
	advisoryPrefix = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"
)

// Headers on dead letters, beside the original message's headers.
const (
	HeaderError      = "Kv-Repair-Error"      // why the last delivery failed
	HeaderDeliveries = "Kv-Repair-Deliveries" // how many deliveries were tried
	HeaderStreamSeq  = "Kv-Repair-Stream-Seq" // sequence in KV_REPAIR
	HeaderSubject    = "Kv-Repair-Subject"    // the original subject
)

// ErrConfigMismatch is wrapped by Ensure's error when an existing stream or
// consumer differs from the configuration asked for.
var ErrConfigMismatch = errors.New("repair: existing JetStream configuration differs")

// Config configures the streams, the consumer, publishers and workers. The
// stream and consumer settings must agree between every process that calls
// Ensure; the rest is per process. Zero values take the defaults shown.
type Config struct {
	// Replicas of both streams. 0 = automatic: 1 on a server outside a
	// cluster, else min(3, servers the connection knows), lowered when the
	// cluster cannot place that many. An explicit value is also checked
	// against an existing stream.
	Replicas int
	// Duplicates is the stream's de-duplication window for Nats-Msg-Id
	// (2m): the same repair published by several coordinators, or twice by
	// one, is stored once.
	Duplicates time.Duration
	// AckWait is how long a worker may hold a delivered message before the
	// server gives it to another worker (30s). It bounds how long a crashed
	// worker's messages wait; it must exceed NodeTimeout times the writes a
	// batch makes to one node.
	AckWait time.Duration
	// MaxDeliver is how many deliveries a message gets before it moves to
	// the dead-letter stream (20). With the default back-off this is about
	// an hour of retries.
	MaxDeliver int
	// MaxAckPending bounds messages delivered but not acknowledged across
	// all workers (10000). Messages waiting out a nak delay count, so a
	// node that is down for long holds up to this many.
	MaxAckPending int
	// DeadMaxAge is how long dead letters are kept (30 days).
	DeadMaxAge time.Duration

	// Backoff is the nak delay after the first failed delivery (1s); it
	// doubles with every delivery up to MaxBackoff (5m).
	Backoff    time.Duration
	MaxBackoff time.Duration

	// Batch is how many messages a worker fetches at once (128).
	Batch int
	// FetchWait is how long one fetch waits for messages (5s); it also
	// bounds how long Stop waits for an idle worker.
	FetchWait time.Duration
	// NodeTimeout bounds one write request to a target node (5s).
	NodeTimeout time.Duration
	// Name names a worker in logs and stats (host-pid).
	Name string

	// QueueLen is how many repair requests a Publisher queues before it
	// drops new ones (16384); MaxInflight is how many publishes await their
	// stream ack at most (1024).
	QueueLen    int
	MaxInflight int

	// MaxSkew is how far ahead of the worker's clock an lww version's dot
	// may be dated (5m, the coordinators' bound). A repair request whose
	// version is dated beyond it is not merged: it would drag the clock of
	// every coordinator that later reads the key. It is dead-lettered at
	// once with the reason. Now is the worker's clock (time.Now).
	MaxSkew time.Duration
	Now     func() time.Time

	Logger *slog.Logger
}

func (c *Config) validate() error {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	defInt := func(d *int, v int) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.Duplicates, 2*time.Minute)
	def(&c.AckWait, 30*time.Second)
	def(&c.DeadMaxAge, 30*24*time.Hour)
	def(&c.Backoff, time.Second)
	def(&c.MaxBackoff, 5*time.Minute)
	def(&c.FetchWait, 5*time.Second)
	def(&c.NodeTimeout, 5*time.Second)
	def(&c.MaxSkew, 5*time.Minute)
	defInt(&c.MaxDeliver, 20)
	defInt(&c.MaxAckPending, 10000)
	defInt(&c.Batch, 128)
	defInt(&c.QueueLen, 16384)
	defInt(&c.MaxInflight, 1024)
	switch {
	case c.Replicas < 0 || c.Replicas > 5:
		return fmt.Errorf("repair: replicas %d out of range 0..5", c.Replicas)
	case c.Duplicates < 0, c.AckWait < 0, c.DeadMaxAge < 0, c.Backoff < 0, c.MaxBackoff < 0, c.FetchWait < 0, c.NodeTimeout < 0, c.MaxSkew < 0:
		return errors.New("repair: durations must not be negative")
	case c.MaxDeliver < 2:
		return fmt.Errorf("repair: max deliver %d: use at least 2", c.MaxDeliver)
	case c.MaxAckPending < 1, c.Batch < 1, c.QueueLen < 1, c.MaxInflight < 1:
		return errors.New("repair: counts must be positive")
	case c.MaxBackoff < c.Backoff:
		return fmt.Errorf("repair: max back-off %s is below back-off %s", c.MaxBackoff, c.Backoff)
	case c.Batch > c.MaxAckPending:
		return fmt.Errorf("repair: batch %d exceeds max ack pending %d", c.Batch, c.MaxAckPending)
	}
	if c.Name == "" {
		host, _ := os.Hostname()
		c.Name = host + "-" + strconv.Itoa(os.Getpid())
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

// backoff is the nak delay after delivery number n (1-based) failed.
func (c *Config) backoff(n uint64) time.Duration {
	d := c.Backoff
	for i := uint64(1); i < n && d < c.MaxBackoff; i++ {
		d *= 2
	}
	return min(d, c.MaxBackoff)
}
