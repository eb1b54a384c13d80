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

	"github.com/quorumkv/quorumkv/internal/settings"
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
// Ensure; the rest is per process. Start from [DefaultConfig]; a zero field
// takes its value from DefaultConfig (the values shown).
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
	// worker's messages wait; it must exceed NodeTimeout (a batch's merges
	// to all its targets get one NodeTimeout).
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
	// DrainTimeout is how long a Publisher's Stop waits for what is queued
	// to be published and acknowledged by the stream (2s); past it, the
	// rest is dropped and counted.
	DrainTimeout time.Duration

	// MaxSkew is how far ahead of the worker's clock an lww version's dot
	// may be dated (5m, the coordinators' bound). A repair request whose
	// version is dated beyond it is not merged: it would drag the clock of
	// every coordinator that later reads the key. It is dead-lettered at
	// once with the reason. Now is the worker's clock (time.Now).
	MaxSkew time.Duration
	Now     func() time.Time

	Logger *slog.Logger
}

// ErrInvalidConfig is wrapped by the error of a constructor whose Config
// is out of range; the message names the setting.
var ErrInvalidConfig = errors.New("repair: invalid configuration")

// DefaultConfig returns the settings of the repair streams, consumer,
// publishers and workers unless told otherwise: every field but Name
// (host-pid), Logger and Now. The repair command's flags take their
// defaults from it.
func DefaultConfig() Config {
	return Config{
		Duplicates:    2 * time.Minute,
		AckWait:       30 * time.Second,
		MaxDeliver:    20,
		MaxAckPending: 10000,
		DeadMaxAge:    30 * 24 * time.Hour,
		Backoff:       time.Second,
		MaxBackoff:    5 * time.Minute,
		Batch:         128,
		FetchWait:     5 * time.Second,
		NodeTimeout:   5 * time.Second,
		QueueLen:      16384,
		MaxInflight:   1024,
		DrainTimeout:  2 * time.Second,
		MaxSkew:       5 * time.Minute,
	}
}

// validate is the one check of a Config: it fills zero fields from
// DefaultConfig (and Name, Logger, Now) and refuses values out of range,
// naming the setting.
func (c *Config) validate() (err error) {
	defer func() { err = settings.Invalid(err, ErrInvalidConfig) }()
	d := DefaultConfig()
	for _, err := range []error{
		settings.Default("repair: dedup window", &c.Duplicates, d.Duplicates),
		settings.Default("repair: ack wait", &c.AckWait, d.AckWait),
		settings.Default("repair: dead max age", &c.DeadMaxAge, d.DeadMaxAge),
		settings.Default("repair: back-off", &c.Backoff, d.Backoff),
		settings.Default("repair: max back-off", &c.MaxBackoff, d.MaxBackoff),
		settings.Default("repair: fetch wait", &c.FetchWait, d.FetchWait),
		settings.Default("repair: node timeout", &c.NodeTimeout, d.NodeTimeout),
		settings.Default("repair: drain timeout", &c.DrainTimeout, d.DrainTimeout),
		settings.Default("repair: max skew", &c.MaxSkew, d.MaxSkew),
		settings.Default("repair: max deliver", &c.MaxDeliver, d.MaxDeliver),
		settings.Default("repair: max ack pending", &c.MaxAckPending, d.MaxAckPending),
		settings.Default("repair: batch", &c.Batch, d.Batch),
		settings.Default("repair: queue length", &c.QueueLen, d.QueueLen),
		settings.Default("repair: max inflight", &c.MaxInflight, d.MaxInflight),
	} {
		if err != nil {
			return err
		}
	}
	switch {
	case c.Replicas < 0 || c.Replicas > 5:
		return fmt.Errorf("repair: replicas %d out of range 0..5", c.Replicas)
	case c.MaxDeliver < 2:
		return fmt.Errorf("repair: max deliver %d: use at least 2", c.MaxDeliver)
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
