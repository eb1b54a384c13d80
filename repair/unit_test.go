package repair_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/quorumkv/quorumkv/internal/natstest"
	"github.com/quorumkv/quorumkv/repair"
	"github.com/quorumkv/quorumkv/subjects"
	"github.com/quorumkv/quorumkv/vclock"
)

func request(key string, counter uint64, targets ...string) subjects.RepairRequest {
	return subjects.RepairRequest{
		Tenant:  "t1",
		Key:     key,
		LWW:     &vclock.Version{Dot: vclock.Dot{Counter: counter, Actor: "a"}, Value: []byte("v")},
		Targets: targets,
		Reason:  subjects.RepairReasonRead,
	}
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	r := request("k", 7, "node-1", "node-2")
	data, err := repair.Encode(&r)
	if err != nil {
		t.Fatal(err)
	}
	got, err := repair.Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	if got.Tenant != r.Tenant || got.Key != r.Key || vclock.Compare(*got.LWW, *r.LWW) != 0 || strings.Join(got.Targets, ",") != "node-1,node-2" || got.Reason != r.Reason {
		t.Fatalf("round trip: %+v", got)
	}
}

func TestDecodeRejectsBadInput(t *testing.T) {
	valid := request("k", 7, "node-1")
	noVersion := valid
	noVersion.LWW = nil
	noTargets := valid
	noTargets.Targets = nil
	badTarget := valid
	badTarget.Targets = []string{"a.b"}
	badTenant := valid
	badTenant.Tenant = "Bad Tenant"
	for name, r := range map[string]subjects.RepairRequest{"no version": noVersion, "no targets": noTargets, "bad target": badTarget, "bad tenant": badTenant} {
		if _, err := repair.Encode(&r); err == nil {
			t.Errorf("%s: encoded", name)
		}
	}
	for _, data := range [][]byte{nil, {0xc1}, []byte("garbage"), {0x81, 0xa3, 'k', 'e', 'y'}} {
		if _, err := repair.Decode(data); err == nil {
			t.Errorf("decoded %q", data)
		}
	}
}

func TestMsgIDNamesTheWork(t *testing.T) {
	a := request("k", 7, "node-1", "node-2")
	b := request("k", 7, "node-2", "node-1")
	if repair.MsgID(&a) != repair.MsgID(&b) {
		t.Fatal("target order changed the id")
	}
	for name, other := range map[string]subjects.RepairRequest{
		"dot":     request("k", 8, "node-1", "node-2"),
		"key":     request("k2", 7, "node-1", "node-2"),
		"targets": request("k", 7, "node-1"),
	} {
		if repair.MsgID(&a) == repair.MsgID(&other) {
			t.Errorf("different %s, same id", name)
		}
	}
	// Expires is part of the version: a repair of the same dot with
	// another expiry is other work; a version without one keeps the id it
	// had before Expires existed (pinned below).
	exp := request("k", 7, "node-1", "node-2")
	v := *exp.LWW
	v.Expires = 1_700_000_000_000
	exp.LWW = &v
	if repair.MsgID(&a) == repair.MsgID(&exp) {
		t.Error("different Expires, same id")
	}
	if got, want := repair.MsgID(&a), "r1-2af4f0fad9fae244adae5a354c515a70"; got != want {
		t.Errorf("id of a version without Expires is %s, was %s before Expires existed", got, want)
	}
	sib := func(expires int64) subjects.RepairRequest {
		r := request("k", 7)
		r.LWW = nil
		r.DVV = &vclock.DVVSet{Entries: []vclock.DVVEntry{{Actor: "a", Counter: 1, Values: []vclock.Value{{Data: []byte("v"), Expires: expires}}}}}
		return r
	}
	s0, s1 := sib(0), sib(5)
	if repair.MsgID(&s0) == repair.MsgID(&s1) {
		t.Error("siblings: different Expires, same id")
	}
	hint := a
	hint.Reason = subjects.RepairReasonHint
	if repair.MsgID(&a) == repair.MsgID(&hint) {
		t.Error("different reason, same id")
	}
}

func TestBackoffDoublesUpToTheCap(t *testing.T) {
	cfg := repair.Config{Backoff: 100 * time.Millisecond, MaxBackoff: time.Second}
	want := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for i, w := range want {
		got, err := repair.Backoff(cfg, uint64(i+1))
		if err != nil {
			t.Fatal(err)
		}
		if got != w*time.Millisecond {
			t.Errorf("delivery %d: %s, want %s", i+1, got, w*time.Millisecond)
		}
	}
	if _, err := repair.Backoff(repair.Config{Backoff: time.Second, MaxBackoff: time.Millisecond}, 1); err == nil {
		t.Error("max back-off below back-off accepted")
	}
}

func TestEnsureIsIdempotentAndReportsMismatches(t *testing.T) {
	s := natstest.RunServer(t)
	js, err := jetstream.New(natstest.Connect(t, s))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// Several processes starting at once.
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Add(1)
		go func() { defer wg.Done(); errs <- repair.Ensure(ctx, js, repair.Config{}) }()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent ensure: %v", err)
		}
	}
	if err := repair.Ensure(ctx, js, repair.Config{}); err != nil {
		t.Fatalf("second ensure: %v", err)
	}
	info, err := js.Stream(ctx, repair.StreamName)
	if err != nil {
		t.Fatal(err)
	}
	if c := info.CachedInfo().Config; c.Retention != jetstream.WorkQueuePolicy || c.Storage != jetstream.FileStorage || c.Replicas != 1 || c.Duplicates != 2*time.Minute {
		t.Fatalf("work stream config %+v", c)
	}

	err = repair.Ensure(ctx, js, repair.Config{MaxDeliver: 5, AckWait: time.Minute})
	if !errors.Is(err, repair.ErrConfigMismatch) || !strings.Contains(err.Error(), "max deliver is 20, want 5") || !strings.Contains(err.Error(), "ack wait is 30s, want 1m0s") {
		t.Fatalf("consumer mismatch: %v", err)
	}
	err = repair.Ensure(ctx, js, repair.Config{Duplicates: time.Hour})
	if !errors.Is(err, repair.ErrConfigMismatch) || !strings.Contains(err.Error(), "stream KV_REPAIR: duplicate window is 2m0s, want 1h0m0s") {
		t.Fatalf("stream mismatch: %v", err)
	}
	err = repair.Ensure(ctx, js, repair.Config{Replicas: 3})
	if !errors.Is(err, repair.ErrConfigMismatch) || !strings.Contains(err.Error(), "replicas is 1, want 3") {
		t.Fatalf("replicas mismatch: %v", err)
	}
}
