package wiring

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/quorumkv/quorumkv/metadata"
)

func TestRetryRetriesOnlyTransientFailures(t *testing.T) {
	calls := 0
	v, err := retry(context.Background(), func(context.Context) (int, error) {
		calls++
		if calls < 3 {
			return 0, fmt.Errorf("open: %w", metadata.ErrUnavailable)
		}
		return 7, nil
	})
	if err != nil || v != 7 || calls != 3 {
		t.Fatalf("got %d, %v after %d calls", v, err, calls)
	}
	calls = 0
	bad := errors.New("config mismatch")
	if _, err := retry(context.Background(), func(context.Context) (int, error) { calls++; return 0, bad }); !errors.Is(err, bad) || calls != 1 {
		t.Fatalf("a permanent error was retried: %v after %d calls", err, calls)
	}
	calls = 0
	if _, err := retry(context.Background(), func(ctx context.Context) (int, error) { calls++; return 0, context.DeadlineExceeded }); err == nil || calls != openAttempts {
		t.Fatalf("timeouts: %v after %d calls", err, calls)
	}
}
