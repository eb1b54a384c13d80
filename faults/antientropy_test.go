package faults

// Issue 15's measured scenario, with separate processes: one storage node
// is down while 500 writes are acknowledged at quorum; the hints queued for
// it are purged from KV_REPAIR through the JetStream API (as a lost stream,
// a flushed disk or an operator's mistake would); the node comes back.
// With anti-entropy on, the node must hold all 500 within two intervals
// with no read at all, and once the two other replicas are stopped a read
// at `one` must find every key with its acknowledged value. Before
// anti-entropy it held 0 of 500 after 120 s.

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/repair"
	"github.com/quorumkv/quorumkv/subjects"
)

// aeInterval is the anti-entropy interval of the scenario's nodes.
const aeInterval = 3 * time.Second

func TestAntiEntropyHealsPurgedHints(t *testing.T) {
	env := append([]string{"QUORUMKV_ANTI_ENTROPY_INTERVAL=" + aeInterval.String()}, memberEnv...)
	c, kv := startMembershipEnv(t, 3, env)
	ctx := context.Background()

	victim := c.storageProc(t, "node-3")
	c.stopStorage(t, victim)

	const keys = 500
	want := map[string]string{}
	for i := range keys {
		k, v := fmt.Sprintf("ae-%04d", i), "v-"+strconv.Itoa(i)
		if err := waitUntil(30*time.Second, func() error {
			_, err := kv.Put(ctx, k, []byte(v), client.WithConsistency(subjects.Quorum), client.WithTimeout(3*time.Second))
			return err
		}); err != nil {
			t.Fatalf("put %s at quorum with node-3 down: %v", k, err)
		}
		want[k] = v
	}

	// Purge the hints: nothing but anti-entropy may heal node-3 now.
	js, err := jetstream.New(c.nc)
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, repair.StreamName)
	if err != nil {
		t.Fatalf("repair stream: %v", err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs == 0 {
		t.Fatal("no hints were queued for node-3: the scenario would prove nothing")
	}
	hints := info.State.Msgs
	if err := st.Purge(ctx); err != nil {
		t.Fatalf("purge %s: %v", repair.StreamName, err)
	}
	t.Logf("purged %d hints from %s", hints, repair.StreamName)

	c.mu.Lock()
	victim.down = false
	c.mu.Unlock()
	back := time.Now()
	c.start(victim)

	// No reads from here until node-3 is checked: only its own dump.
	held := func() (int, error) {
		es, err := c.admin.DumpAll(ctx, "node-3", memberTenant)
		if err != nil {
			return 0, err
		}
		n := 0
		for _, e := range es {
			if v, ok := want[e.Key]; ok && !e.Tombstone && string(e.Value) == v {
				n++
			}
		}
		return n, nil
	}
	if n, err := held(); err == nil {
		t.Logf("node-3 holds %d of %d right after its start", n, keys)
	}
	// Two intervals is the contract; the slack covers a pass's own length
	// and process start under the race detector on a shared machine.
	deadline := 2*aeInterval + 30*time.Second
	var last int
	err = waitUntil(deadline, func() error {
		n, err := held()
		if err != nil {
			return err
		}
		last = n
		if n < keys {
			time.Sleep(200 * time.Millisecond)
			return fmt.Errorf("node-3 holds %d of %d", n, keys)
		}
		return nil
	})
	took := time.Since(back)
	if err != nil {
		t.Fatalf("anti-entropy did not heal node-3 within %s: %v (last %d of %d)", deadline, err, last, keys)
	}
	t.Logf("node-3 held all %d keys %s after its start (anti-entropy interval %s)", keys, took.Round(time.Millisecond), aeInterval)

	if out := c.cli(10*time.Second, "node", "list", "--json"); out.code != 0 {
		t.Errorf("node list --json: %s", out)
	} else {
		t.Logf("node list --json:\n%s", out.stdout)
	}

	// The other two replicas stop: node-3 alone answers at `one`.
	c.stopStorage(t, c.storageProc(t, "node-1"))
	c.stopStorage(t, c.storageProc(t, "node-2"))
	missing, wrong := 0, 0
	for k, v := range want {
		var (
			g        *client.GetResult
			notFound bool
		)
		err := waitUntil(20*time.Second, func() error {
			var err error
			g, err = kv.Get(ctx, k, client.WithConsistency(subjects.One), client.WithTimeout(3*time.Second))
			if errors.Is(err, client.ErrNotFound) {
				notFound, err = true, nil
			}
			return err
		})
		switch {
		case err != nil:
			t.Fatalf("get %s at one with only node-3 up: %v", k, err)
		case notFound:
			missing++
		case string(g.Value) != v:
			wrong++
		}
	}
	if missing > 0 || wrong > 0 {
		t.Errorf("with only node-3 up, reads at one: %d of %d not found, %d wrong", missing, keys, wrong)
	}
}
