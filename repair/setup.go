package repair

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/quorumkv/quorumkv/subjects"
)

// JetStream error codes that mean "cannot place this many replicas".
const (
	errCodeNoPeers              jetstream.ErrorCode = 10005
	errCodeInsufficientResource jetstream.ErrorCode = 10023
	errCodeReplicasNotSupported jetstream.ErrorCode = 10074
	errCodeDuplicateInProcess   jetstream.ErrorCode = 10158 // "duplicate message id is in process"
)

// Ensure creates the work stream, its consumer and the dead-letter stream
// when they are missing, and checks them when they exist. Any process may
// call it at start; concurrent calls are safe. An existing object that
// differs from cfg is not changed: the error wraps [ErrConfigMismatch] and
// names every differing field, so an operator can decide which side to fix.
func Ensure(ctx context.Context, js jetstream.JetStream, cfg Config) error {
	if err := cfg.validate(); err != nil {
		return err
	}
	return ensure(ctx, js, &cfg)
}

// ensure is Ensure for a validated cfg.
func ensure(ctx context.Context, js jetstream.JetStream, cfg *Config) error {
	work, err := ensureStreams(ctx, js, cfg)
	if err != nil {
		return err
	}
	return ensureConsumer(ctx, work, consumerConfig(cfg))
}

// ensureStreams creates or checks the work and dead-letter streams only.
// Publishers (coordinators) need no more: the consumer's settings belong to
// the workers, so an operator can tune them (quorumkv repair --ack-wait …,
// or nats consumer edit) without every coordinator refusing to start.
func ensureStreams(ctx context.Context, js jetstream.JetStream, cfg *Config) (jetstream.Stream, error) {
	work, err := ensureStream(ctx, js, cfg, workStreamConfig(cfg))
	if err != nil {
		return nil, err
	}
	if _, err := ensureStream(ctx, js, cfg, deadStreamConfig(cfg)); err != nil {
		return nil, err
	}
	return work, nil
}

func workStreamConfig(cfg *Config) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        StreamName,
		Description: "quorumkv repair requests (read repair and hinted handoff), consumed by the repair workers",
		Subjects:    []string{subjects.RepairAll},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
		Duplicates:  cfg.Duplicates,
		Discard:     jetstream.DiscardNew,
	}
}

func deadStreamConfig(cfg *Config) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        DeadStreamName,
		Description: "quorumkv repair requests that exhausted their deliveries; see docs/REPAIR.md to inspect and replay",
		Subjects:    []string{subjects.RepairDeadAll},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
		Duplicates:  cfg.Duplicates,
		MaxAge:      cfg.DeadMaxAge,
	}
}

func consumerConfig(cfg *Config) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       ConsumerName,
		Description:   "quorumkv repair workers (shared pull consumer)",
		DeliverPolicy: jetstream.DeliverAllPolicy,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       cfg.AckWait,
		MaxDeliver:    cfg.MaxDeliver,
		MaxAckPending: cfg.MaxAckPending,
		FilterSubject: subjects.RepairAll,
	}
}

// ensureStream creates want or checks the existing stream of its name.
// With automatic replicas it tries fewer when the cluster cannot place
// them.
func ensureStream(ctx context.Context, js jetstream.JetStream, cfg *Config, want jetstream.StreamConfig) (jetstream.Stream, error) {
	s, err := js.Stream(ctx, want.Name)
	if err == nil {
		return s, checkStream(s.CachedInfo().Config, want, cfg.Replicas != 0)
	}
	if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, fmt.Errorf("repair: look up stream %s: %w", want.Name, err)
	}
	replicas := want.Replicas
	if replicas == 0 {
		replicas = autoReplicas(js.Conn())
	}
	for {
		want.Replicas = replicas
		s, err = js.CreateStream(ctx, want)
		var apiErr *jetstream.APIError
		switch {
		case err == nil:
			return s, nil
		case errors.Is(err, jetstream.ErrStreamNameAlreadyInUse):
			// Another process created it first; check what it made.
			s, lerr := js.Stream(ctx, want.Name)
			if lerr != nil {
				return nil, fmt.Errorf("repair: look up stream %s: %w", want.Name, lerr)
			}
			return s, checkStream(s.CachedInfo().Config, want, cfg.Replicas != 0)
		case cfg.Replicas == 0 && replicas > 1 && errors.As(err, &apiErr) &&
			(apiErr.ErrorCode == errCodeNoPeers || apiErr.ErrorCode == errCodeInsufficientResource || apiErr.ErrorCode == errCodeReplicasNotSupported):
			replicas--
		default:
			return nil, fmt.Errorf("repair: create stream %s (replicas %d): %w", want.Name, replicas, err)
		}
	}
}

// autoReplicas is 1 outside a cluster, else min(3, servers known to nc).
func autoReplicas(nc *nats.Conn) int {
	if nc == nil || nc.ConnectedClusterName() == "" {
		return 1
	}
	return max(1, min(3, len(nc.Servers())))
}

// checkStream names every setting of have that differs from want.
func checkStream(have, want jetstream.StreamConfig, checkReplicas bool) error {
	var diffs []string
	diff := func(field string, h, w any) {
		diffs = append(diffs, fmt.Sprintf("%s is %v, want %v", field, h, w))
	}
	if !slices.Equal(have.Subjects, want.Subjects) {
		diff("subjects", have.Subjects, want.Subjects)
	}
	if have.Retention != want.Retention {
		diff("retention", have.Retention, want.Retention)
	}
	if have.Storage != want.Storage {
		diff("storage", have.Storage, want.Storage)
	}
	if have.Duplicates != want.Duplicates {
		diff("duplicate window", have.Duplicates, want.Duplicates)
	}
	if have.MaxAge != want.MaxAge {
		diff("max age", have.MaxAge, want.MaxAge)
	}
	if checkReplicas && have.Replicas != want.Replicas {
		diff("replicas", have.Replicas, want.Replicas)
	}
	if len(diffs) == 0 {
		return nil
	}
	return fmt.Errorf("%w: stream %s: %s (change the stream with `nats stream edit`, or start with matching settings)",
		ErrConfigMismatch, want.Name, strings.Join(diffs, "; "))
}

// ensureConsumer creates the shared consumer or checks the existing one.
func ensureConsumer(ctx context.Context, s jetstream.Stream, want jetstream.ConsumerConfig) error {
	c, err := s.Consumer(ctx, want.Durable)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		c, err = s.CreateConsumer(ctx, want)
		if errors.Is(err, jetstream.ErrConsumerExists) {
			c, err = s.Consumer(ctx, want.Durable) // created by someone else meanwhile
		} else if err == nil {
			return nil
		}
	}
	if err != nil {
		return fmt.Errorf("repair: consumer %s on %s: %w", want.Durable, StreamName, err)
	}
	return checkConsumer(c.CachedInfo().Config, want)
}

func checkConsumer(have, want jetstream.ConsumerConfig) error {
	var diffs []string
	diff := func(field string, h, w any) {
		diffs = append(diffs, fmt.Sprintf("%s is %v, want %v", field, h, w))
	}
	if have.AckPolicy != want.AckPolicy {
		diff("ack policy", have.AckPolicy, want.AckPolicy)
	}
	if have.AckWait != want.AckWait {
		diff("ack wait", have.AckWait, want.AckWait)
	}
	if have.MaxDeliver != want.MaxDeliver {
		diff("max deliver", have.MaxDeliver, want.MaxDeliver)
	}
	if have.MaxAckPending != want.MaxAckPending {
		diff("max ack pending", have.MaxAckPending, want.MaxAckPending)
	}
	if have.FilterSubject != want.FilterSubject {
		diff("filter subject", have.FilterSubject, want.FilterSubject)
	}
	if have.DeliverPolicy != want.DeliverPolicy {
		diff("deliver policy", have.DeliverPolicy, want.DeliverPolicy)
	}
	if len(diffs) == 0 {
		return nil
	}
	return fmt.Errorf("%w: consumer %s on %s: %s (change it with `nats consumer edit`, or start with matching settings)",
		ErrConfigMismatch, want.Durable, StreamName, strings.Join(diffs, "; "))
}
