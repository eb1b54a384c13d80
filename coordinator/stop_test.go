package coordinator_test

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/subjects"
)

// TestStopServesWhatWasRoutedToIt: a coordinator that stops (a rolling
// restart) serves the requests NATS already routed to it, and the other
// coordinator the rest: clients see no 503 "coordinator is stopping".
func TestStopServesWhatWasRoutedToIt(t *testing.T) {
	c := startCluster(t, 3)
	if _, err := c.AddCoordinator(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	kv := kvClient(t, c, "default")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	var ok, stopping atomic.Int64
	var firstErr atomic.Value
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				_, err := kv.Put(context.Background(), "k", []byte("v"), client.WithConsistency(subjects.One), client.WithTimeout(5*time.Second))
				switch {
				case err == nil:
					ok.Add(1)
				case strings.Contains(err.Error(), "stopping"):
					stopping.Add(1)
				default:
					firstErr.CompareAndSwap(nil, err)
				}
			}
		}()
	}
	// Both coordinators take requests, then the first stops mid-stream.
	for ok.Load() < 200 {
		time.Sleep(5 * time.Millisecond)
	}
	c.Coordinators()[0].Stop()
	before := ok.Load()
	for ok.Load() < before+200 {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	wg.Wait()
	if err := firstErr.Load(); err != nil {
		t.Fatalf("a put failed: %v", err)
	}
	if n := stopping.Load(); n > 0 {
		t.Fatalf("%d of %d puts were answered 503 'coordinator is stopping'", n, n+ok.Load())
	}
}
