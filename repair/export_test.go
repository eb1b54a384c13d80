package repair

import (
	"context"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/quorumkv/quorumkv/subjects"
)

// NewWorkerWithHook starts a worker that calls beforeAck after a message's
// targets confirmed and before acknowledging it.
func NewWorkerWithHook(ctx context.Context, nc *nats.Conn, cfg Config, beforeAck func(*subjects.RepairRequest)) (*Worker, error) {
	return newWorker(ctx, nc, cfg, beforeAck)
}

// Backoff exposes the nak delay schedule.
func Backoff(cfg Config, delivery uint64) (d time.Duration, err error) {
	if err := cfg.validate(); err != nil {
		return 0, err
	}
	return cfg.backoff(delivery), nil
}
