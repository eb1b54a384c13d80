package natskv_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/quorumkv/quorumkv/internal/natstest"
	"github.com/quorumkv/quorumkv/metadata"
	"github.com/quorumkv/quorumkv/metadata/natskv"
)

// TestListNodesCompleteUnderHeartbeats: while every node re-registers
// (heartbeats) as fast as it can, each ListNodes still returns every node.
// The placement map is claimed from this list, so a short list would move
// partitions off live nodes.
func TestListNodesCompleteUnderHeartbeats(t *testing.T) {
	s := natstest.RunServer(t)
	js := newJetStream(t, natstest.Connect(t, s))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := natskv.Open(ctx, js, natskv.Options{BucketPrefix: "heartbeats"})
	if err != nil {
		t.Fatal(err)
	}
	const nodes = 5
	for i := range nodes {
		if _, err := st.RegisterNode(ctx, metadata.Node{ID: nodeID(i), Epoch: uint64(i + 1)}); err != nil {
			t.Fatal(err)
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, _ = st.RegisterNode(ctx, metadata.Node{ID: nodeID(i), Epoch: uint64(i + 1)})
			}
		}()
	}
	short := 0
	for range 300 {
		ns, err := st.ListNodes(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(ns) != nodes {
			short++
		}
	}
	close(stop)
	wg.Wait()
	if short > 0 {
		t.Fatalf("%d of 300 listings missed a node while the nodes heartbeat", short)
	}
}

func nodeID(i int) string { return "node-" + string(rune('a'+i)) }
