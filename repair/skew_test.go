package repair_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/repair"
	"github.com/quorumkv/quorumkv/subjects"
	"github.com/quorumkv/quorumkv/vclock"
)

// Issue 12, item 1: a repair whose lww version is dated beyond the allowed
// skew ahead of the worker's clock is not merged (it would win every later
// write of the key and poison the clock of every coordinator reading it):
// it is dead-lettered at once with the reason. One within the skew is
// merged as before.
func TestRepairBeyondSkewIsDeadLettered(t *testing.T) {
	c := startCluster(t, testConfig())
	nc := connect(t, c)
	admin := client.NewAdmin(nc)
	ctx := ctxT(t, 30*time.Second)
	far := vclock.Version{Dot: vclock.Dot{Counter: vclock.CounterAt(time.Now().AddDate(1, 0, 0)), Actor: "rogue"}, Value: []byte("next year")}
	near := vclock.Version{Dot: vclock.Dot{Counter: vclock.CounterAt(time.Now().Add(time.Minute)), Actor: "fast"}, Value: []byte("a minute ahead")}
	for key, v := range map[string]*vclock.Version{"far": &far, "near": &near} {
		if !c.RepairPublisher().Publish(subjects.RepairRequest{Tenant: "default", Key: key, LWW: v, Targets: []string{"node-1"}, Reason: subjects.RepairReasonRead}) {
			t.Fatal("publish refused")
		}
	}
	var st *repair.Status
	eventually(t, 10*time.Second, "one applied, one dead-lettered", func() error {
		if st = status(t, nc); st.Applied != 1 || st.Dead != 1 || st.Backlog != 0 {
			return fmt.Errorf("%+v", st)
		}
		return nil
	})
	if len(st.Workers) != 1 || st.Workers[0].SkewRejected != 1 || st.Failed != 0 {
		t.Fatalf("status %+v: want one skew rejection without retries", st)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	dead, err := repair.ListDead(ctx, js, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(dead) != 1 || dead[0].Request == nil || dead[0].Request.Key != "far" || dead[0].Deliveries != 1 ||
		!strings.Contains(dead[0].Error, "beyond the allowed clock skew") {
		t.Fatalf("dead letters %+v", dead)
	}
	d, err := dump(ctx, admin, "node-1")
	if err != nil {
		t.Fatal(err)
	}
	if e, ok := d["far"]; ok {
		t.Fatalf("node-1 merged the far-future version: %+v", e)
	}
	if e := d["near"]; e.Value != "a minute ahead" {
		t.Fatalf("node-1 holds %+v for the version within the skew", e)
	}
}
