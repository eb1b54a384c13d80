package faults

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/subjects"
)

// TestSlowCoordinatingReplicaAppliesTheWriteOnce: under the siblings
// policy a put goes first to the key's first primary (the coordinating
// replica). When that replica is slow rather than down (SIGSTOP here: a GC
// pause, a stalled disk), the coordinator lets the next primary coordinate
// the write. The slow replica still holds the first request; once it runs
// again it must not apply it as well, minting a second dot for one
// acknowledged write (the fault schedule found it doing so: one put read
// back as two identical siblings, and replicas differing until a read
// repaired them).
//
// The check is on the replicas' own dumps, not a read: reads list
// identical values once, which would hide a double application.
func TestSlowCoordinatingReplicaAppliesTheWriteOnce(t *testing.T) {
	c := startCluster(t, clusterConfig{storageNodes: 3, coordinators: 1})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("process output:\n%s", c.logs())
		}
	})
	ctx := context.Background()
	createTenants(t, c)
	kv, _ := client.New(c.nc, setTenant)
	const key = "slow-coordinator"
	first := c.ring(t).PreferenceList(setTenant, key, rf, nil)[0]
	var slow *proc
	for _, p := range c.storage {
		if p.name == first {
			slow = p
		}
	}

	c.pause(slow)
	res, err := kv.Put(ctx, key, []byte("v"), client.WithConsistency(subjects.Quorum), client.WithTimeout(8*time.Second)) // ample: CI runs packages in parallel under -race
	if err != nil {
		c.resume(slow)
		t.Fatalf("put with the first primary paused: %v", err)
	}
	t.Logf("put acknowledged by %d replicas while %s (the coordinating replica) was paused", res.ReplicaCount, slow.name)
	c.resume(slow)

	// The slow replica drains what it received while stopped, and the hint
	// brings it the write. Then every replica must hold the one dot.
	rg := c.ring(t)
	var last string
	if err := waitUntil(20*time.Second, func() error {
		dumps := c.dumps(t, setTenant)
		cv := checkConvergence(subjects.PolicySiblings, setTenant, rf, rg, dumps)
		last = ""
		for _, d := range cv.Details {
			if strings.HasPrefix(d, key+":") {
				last = d
			}
		}
		for node, es := range dumps {
			for _, e := range es {
				if e.Key == key && e.DVV != nil && e.DVV.Size() != 1 {
					last = node + " holds " + describeDVV(*e.DVV)
				}
			}
		}
		if last != "" {
			time.Sleep(200 * time.Millisecond)
			return errSlowReplica
		}
		return nil
	}); err != nil {
		t.Fatalf("one acknowledged put, yet the replicas' own dumps (without any read) show: %s", last)
	}
	got := c.readAll(t, kv, key)
	if len(got.Siblings) > 0 || string(got.Value) != "v" {
		t.Fatalf("read back %q with siblings %q, want the one value", got.Value, got.Siblings)
	}
}

var errSlowReplica = errorString("replicas differ or hold more than one value")

type errorString string

func (e errorString) Error() string { return string(e) }
