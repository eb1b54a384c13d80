package faults

import (
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/internal/natstest"
	"github.com/quorumkv/quorumkv/internal/proctest"
	"github.com/quorumkv/quorumkv/subjects"
	"github.com/quorumkv/quorumkv/vclock"
)

// startStorage runs `quorumkv storage` as a child process and waits until
// it answers on its dump subject.
func startStorage(t *testing.T, nc *nats.Conn, url, id, dir string) *proctest.Process {
	t.Helper()
	p := proctest.Start(t, "storage", "--nats", url, "--id", id, "--data", dir, "--log-format", "json")
	req, _ := msgpack.Marshal(&subjects.DumpRequest{Tenant: "t"})
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := nc.Request(subjects.StorageNode(id, subjects.NodeOpDump), req, 200*time.Millisecond); err == nil {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("storage %s never served; output:\n%s", id, p.Output())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestAcknowledgedWritesSurviveSIGKILL: writers send fsync'd writes straight
// to a storage node process (as coordinators do) and record every write the
// node acknowledged; the node is SIGKILLed mid-stream; after a restart,
// every acknowledged write is on its disk.
func TestAcknowledgedWritesSurviveSIGKILL(t *testing.T) {
	s := natstest.RunServer(t)
	nc := natstest.Connect(t, s)
	dir := filepath.Join(t.TempDir(), "dur-1")
	node := startStorage(t, nc, s.ClientURL(), "dur-1", dir)

	var (
		mu    sync.Mutex
		acked = map[string]string{}
		wg    sync.WaitGroup
		stop  = make(chan struct{})
	)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				// Each message carries a few items, so group commit and
				// multi-item batches are both exercised.
				var b subjects.NodeWriteBatch
				b.Proto = subjects.NodeProtocolVersion
				for j := 0; j < 3; j++ {
					key := fmt.Sprintf("w%d-%d-%d", w, i, j)
					b.Items = append(b.Items, subjects.NodeWrite{ID: uint64(j), Tenant: "t", Key: key,
						LWW: &vclock.Version{Dot: vclock.Dot{Counter: uint64(i + 1), Actor: "test"}, Value: []byte(key)}})
				}
				data, _ := msgpack.Marshal(&b)
				msg, err := nc.Request(subjects.StorageNode("dur-1", subjects.NodeOpWrite), data, time.Second)
				if err != nil {
					continue // not acknowledged: may or may not have landed
				}
				var r subjects.NodeWriteReply
				if msgpack.Unmarshal(msg.Data, &r) != nil {
					continue
				}
				mu.Lock()
				for _, res := range r.Results {
					if res.Err == "" {
						key := b.Items[res.ID].Key
						acked[key] = key
					}
				}
				mu.Unlock()
			}
		}()
	}
	time.Sleep(700 * time.Millisecond)
	node.Kill()
	time.Sleep(200 * time.Millisecond)
	close(stop)
	wg.Wait()
	mu.Lock()
	n := len(acked)
	mu.Unlock()
	if n < 100 {
		t.Fatalf("only %d writes acknowledged before the kill; the test proves little", n)
	}

	startStorage(t, nc, s.ClientURL(), "dur-1", dir)
	admin := client.NewAdmin(nc)
	entries, err := admin.DumpAll(t.Context(), "dur-1", "t")
	if err != nil {
		t.Fatal(err)
	}
	onDisk := map[string]string{}
	for _, e := range entries {
		onDisk[e.Key] = string(e.Value)
	}
	lost := 0
	for k, v := range acked {
		if onDisk[k] != v {
			lost++
			if lost <= 5 {
				t.Errorf("acknowledged write %q lost after SIGKILL", k)
			}
		}
	}
	if lost > 0 {
		t.Fatalf("%d of %d acknowledged writes lost", lost, n)
	}
	t.Logf("%d acknowledged writes, all on disk after SIGKILL (%d keys on disk)", n, len(onDisk))
}
