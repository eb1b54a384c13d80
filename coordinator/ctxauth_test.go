package coordinator_test

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/coordinator"
	idemnats "github.com/quorumkv/quorumkv/idempotency/natskv"
	"github.com/quorumkv/quorumkv/internal/devcluster"
	"github.com/quorumkv/quorumkv/subjects"
	"github.com/quorumkv/quorumkv/vclock"
)

// notIssued is what every refused context's 400 says.
const notIssued = "context was not issued by this store"

// issuedDot returns the dot inside an lww context the store issued,
// without verifying it (tests look inside; the store never does that).
func issuedDot(tb testing.TB, ctx string) vclock.Dot {
	tb.Helper()
	d, err := vclock.DecodeContext(plainContext(tb, ctx))
	if err != nil {
		tb.Fatalf("context %q: %v", ctx, err)
	}
	return d
}

// plainContext returns the plain context inside one the store issued, as
// a storage node's dump shows it.
func plainContext(tb testing.TB, ctx string) string {
	tb.Helper()
	plain, err := vclock.InspectContext(ctx)
	if err != nil {
		tb.Fatalf("context %q: %v", ctx, err)
	}
	return plain
}

// forgedSealed is an l2 context as a client without the secret can make
// one: a well-formed payload with a made-up tag.
func forgedSealed(counter uint64, actor string) string {
	raw := binary.BigEndian.AppendUint64(nil, counter)
	raw = append(raw, actor...)
	raw = append(raw, bytes.Repeat([]byte{0x5a}, vclock.ContextTagLen)...)
	return vclock.SealedLWWPrefix + base64.RawURLEncoding.EncodeToString(raw)
}

// TestContextFromOneCoordinatorVerifiesOnAnother: contexts are sealed, and
// coordinators of one cluster (no secret configured: they share the one
// in the metadata store) accept each other's.
func TestContextFromOneCoordinatorVerifiesOnAnother(t *testing.T) {
	c := startCluster(t, 3)
	ctx := ctxT(t)
	if err := c.WaitForNodes(ctx, 3); err != nil {
		t.Fatal(err)
	}
	kv := kvClient(t, c, "default")
	carts := siblingsTenant(t, c, "carts")

	// Through coordinator X (the only one running).
	put, err := kv.Put(ctx, "k", []byte("v1"), client.WithConsistency(subjects.All))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(put.Context, vclock.SealedLWWPrefix) {
		t.Fatalf("lww context %q is not sealed", put.Context)
	}
	got, err := kv.Get(ctx, "k", client.WithConsistency(subjects.All))
	if err != nil || got.Context != put.Context {
		t.Fatalf("get: %v, context %q, want the put's %q", err, got.Context, put.Context)
	}
	if _, err := carts.Put(ctx, "cart", []byte("a"), client.WithConsistency(subjects.All)); err != nil {
		t.Fatal(err)
	}
	if _, err := carts.Put(ctx, "cart", []byte("b"), client.WithConsistency(subjects.All)); err != nil {
		t.Fatal(err)
	}
	sib, err := carts.Get(ctx, "cart", client.WithConsistency(subjects.All))
	if err != nil || len(sib.Siblings) != 2 {
		t.Fatalf("siblings get: %v %+v", err, sib)
	}
	if !strings.HasPrefix(sib.Context, vclock.SealedDVVPrefix) {
		t.Fatalf("siblings context %q is not sealed", sib.Context)
	}

	// Only coordinator Y from now on.
	if _, err := c.AddCoordinator(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitForNodes(ctx, 3); err != nil {
		t.Fatal(err)
	}
	c.StopCoordinator(0)

	var put2 *client.WriteResult
	err = pastStopping(t, func() (err error) {
		put2, err = kv.Put(ctx, "k", []byte("v2"), client.WithContext(got.Context), client.WithConsistency(subjects.All))
		return err
	})
	if err != nil {
		t.Fatalf("X's context on Y: %v", err)
	}
	if d1, d2 := issuedDot(t, put.Context), issuedDot(t, put2.Context); d2.Compare(d1) <= 0 || d1.Actor == d2.Actor {
		t.Fatalf("Y's write %+v does not follow X's %+v", d2, d1)
	}
	got, err = kv.Get(ctx, "k", client.WithConsistency(subjects.All))
	if err != nil || string(got.Value) != "v2" || got.Context != put2.Context {
		t.Fatalf("get through Y: %v %+v, want v2 with context %q", err, got, put2.Context)
	}
	if _, err := carts.Put(ctx, "cart", []byte("ab"), client.WithContext(sib.Context), client.WithConsistency(subjects.All)); err != nil {
		t.Fatalf("X's siblings context on Y: %v", err)
	}
	resolved, err := carts.Get(ctx, "cart", client.WithConsistency(subjects.All))
	if err != nil || len(resolved.Siblings) != 0 || string(resolved.Value) != "ab" {
		t.Fatalf("after resolving through Y: %v %+v", err, resolved)
	}
}

// TestForgedContextRefused: a context the store did not seal is a 400 and
// moves no clock, so another tenant's next write is stamped at about now
// (issue 12: a forged context 4m50s ahead made other tenants' later writes
// lose to earlier ones).
func TestForgedContextRefused(t *testing.T) {
	c := startCluster(t, 3)
	ctx := ctxT(t)
	if err := c.WaitForNodes(ctx, 3); err != nil {
		t.Fatal(err)
	}
	admin := client.NewAdmin(connect(t, c))
	if _, err := admin.CreateTenant(ctx, "victim", client.TenantSpec{}); err != nil {
		t.Fatal(err)
	}
	attacker := kvClient(t, c, "default")
	victim := kvClient(t, c, "victim")
	carts := siblingsTenant(t, c, "carts")
	if _, err := attacker.Put(ctx, "k", []byte("v")); err != nil {
		t.Fatal(err)
	}

	ahead := vclock.CounterAt(time.Now().Add(4*time.Minute + 50*time.Second))
	plain := vclock.EncodeContext(vclock.Dot{Counter: ahead, Actor: "evil"})
	stranger, err := vclock.NewContextKeys(bytes.Repeat([]byte("s"), 32), nil)
	if err != nil {
		t.Fatal(err)
	}
	otherSecret, err := stranger.Seal("default", plain)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, forged string }{
		{"unauthenticated l1, 4m50s ahead", plain},
		{"l2 with a made-up tag", forgedSealed(ahead, "evil")},
		{"l2 under another key", otherSecret},
		{"l2 with no tag at all", vclock.SealedLWWPrefix + base64.RawURLEncoding.EncodeToString(binary.BigEndian.AppendUint64(nil, ahead))},
		{"unknown format", "x9.AAAA"},
		{"truncated", forgedSealed(ahead, "evil")[:20]},
	} {
		_, err := attacker.Put(ctx, "k", []byte("forged"), client.WithContext(tc.forged))
		assertCodeNamed(t, tc.name+", put", err, 400, notIssued)
		_, err = attacker.Delete(ctx, "k", client.WithContext(tc.forged))
		assertCodeNamed(t, tc.name+", delete", err, 400, notIssued)
	}
	for name, forged := range map[string]string{
		"unauthenticated d1": vclock.EncodeDVVContext(vclock.DVVContext{{Actor: "evil", Counter: 1 << 40}}),
		"d2 with a made-up tag": vclock.SealedDVVPrefix + base64.RawURLEncoding.EncodeToString(
			append([]byte("\x04evil\x80\x80\x80\x80\x80\x80\x01"), bytes.Repeat([]byte{1}, vclock.ContextTagLen)...)),
	} {
		_, err := carts.Put(ctx, "cart", []byte("forged"), client.WithContext(forged))
		assertCodeNamed(t, name, err, 400, notIssued)
	}

	// The refused contexts dragged no clock: the victim's write is stamped
	// at about now, and a value written later wins.
	res, err := victim.Put(ctx, "k", []byte("first"), client.WithConsistency(subjects.All))
	if err != nil {
		t.Fatal(err)
	}
	if at := vclock.Physical(issuedDot(t, res.Context).Counter); at.After(time.Now().Add(time.Minute)) {
		t.Fatalf("victim's write is stamped %s, dragged ahead by a forged context", at.UTC().Format(time.RFC3339Nano))
	}
	got, err := attacker.Get(ctx, "k", client.WithConsistency(subjects.All))
	if err != nil || string(got.Value) != "v" {
		t.Fatalf("the attacker's key changed: %v %+v", err, got)
	}
}

// TestContextBoundToTenant: a genuine context of one tenant is refused by
// another, under either policy; a context of the other policy says so.
func TestContextBoundToTenant(t *testing.T) {
	c := startCluster(t, 3)
	ctx := ctxT(t)
	if err := c.WaitForNodes(ctx, 3); err != nil {
		t.Fatal(err)
	}
	admin := client.NewAdmin(connect(t, c))
	if _, err := admin.CreateTenant(ctx, "tenant-b", client.TenantSpec{}); err != nil {
		t.Fatal(err)
	}
	a := kvClient(t, c, "default")
	b := kvClient(t, c, "tenant-b")
	sa := siblingsTenant(t, c, "sib-a")
	sb := siblingsTenant(t, c, "sib-b")

	resA, err := a.Put(ctx, "k", []byte("a"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Put(ctx, "k", []byte("b")); err != nil {
		t.Fatal(err)
	}
	_, err = b.Put(ctx, "k", []byte("b2"), client.WithContext(resA.Context))
	assertCodeNamed(t, "lww context of another tenant", err, 400, notIssued)
	_, err = b.Delete(ctx, "k", client.WithContext(resA.Context))
	assertCodeNamed(t, "lww context of another tenant, delete", err, 400, notIssued)
	if _, err := a.Put(ctx, "k", []byte("a2"), client.WithContext(resA.Context)); err != nil {
		t.Fatalf("the context on its own tenant: %v", err)
	}

	resSA, err := sa.Put(ctx, "k", []byte("a"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sb.Put(ctx, "k", []byte("b")); err != nil {
		t.Fatal(err)
	}
	_, err = sb.Put(ctx, "k", []byte("b2"), client.WithContext(resSA.Context))
	assertCodeNamed(t, "siblings context of another tenant", err, 400, notIssued)
	got, err := sb.Get(ctx, "k", client.WithConsistency(subjects.All))
	if err != nil || len(got.Siblings) != 0 || string(got.Value) != "b" {
		t.Fatalf("tenant sib-b after the refused write: %v %+v", err, got)
	}
	if _, err := sa.Put(ctx, "k", []byte("a2"), client.WithContext(resSA.Context)); err != nil {
		t.Fatalf("the siblings context on its own tenant: %v", err)
	}

	// Policy mix-ups stay a clear 400.
	_, err = sa.Put(ctx, "k", []byte("x"), client.WithContext(resA.Context))
	assertCodeNamed(t, "lww context on a siblings tenant", err, 400, "siblings tenant")
	_, err = a.Put(ctx, "k", []byte("x"), client.WithContext(resSA.Context))
	assertCodeNamed(t, "siblings context on an lww tenant", err, 400, "lww tenant")
}

// TestContextSecretRotation: secrets given to the coordinators; during a
// rotation (new current, old previous) contexts sealed under the old one
// still work, and once the previous secret is dropped they are refused.
func TestContextSecretRotation(t *testing.T) {
	oldSecret := bytes.Repeat([]byte("o"), 32)
	newSecret := bytes.Repeat([]byte("n"), 40)
	c := startClusterWith(t, devcluster.Config{Nodes: 3, Coordinator: coordinator.Config{ContextSecret: oldSecret}})
	ctx := ctxT(t)
	if err := c.WaitForNodes(ctx, 3); err != nil {
		t.Fatal(err)
	}
	kv := kvClient(t, c, "default")
	first, err := kv.Put(ctx, "k", []byte("v1"), client.WithConsistency(subjects.All))
	if err != nil {
		t.Fatal(err)
	}

	js, err := jetstream.New(connect(t, c))
	if err != nil {
		t.Fatal(err)
	}
	idem, err := idemnats.Open(ctx, js, idemnats.Options{})
	if err != nil {
		t.Fatal(err)
	}
	start := func(current, previous []byte) *coordinator.Coordinator {
		t.Helper()
		co, err := coordinator.New(ctx, connect(t, c), coordinator.Config{
			Metadata: c.Metadata(), Idempotency: idem, Logger: quietLogger(),
			ContextSecret: current, ContextSecretPrevious: previous,
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(co.Stop)
		waitFor(t, 10*time.Second, func() error {
			if n := co.ActiveNodes(); n < 3 {
				return fmt.Errorf("%d active nodes", n)
			}
			return nil
		})
		return co
	}

	// Step 1: the new secret is current, the old one previous.
	rotating := start(newSecret, oldSecret)
	c.StopCoordinator(0)
	var second *client.WriteResult
	err = pastStopping(t, func() (err error) {
		second, err = kv.Put(ctx, "k", []byte("v2"), client.WithContext(first.Context), client.WithConsistency(subjects.All))
		return err
	})
	if err != nil {
		t.Fatalf("old context while the old secret is previous: %v", err)
	}
	got, err := kv.Get(ctx, "k", client.WithConsistency(subjects.All))
	if err != nil || got.Context != second.Context {
		t.Fatalf("get: %v %+v", err, got)
	}

	// Step 2: the previous secret is dropped.
	start(newSecret, nil)
	rotating.Stop()
	err = pastStopping(t, func() error {
		_, err := kv.Put(ctx, "k", []byte("v3"), client.WithContext(first.Context))
		return err
	})
	assertCodeNamed(t, "old context after the old secret was dropped", err, 400, notIssued)
	if _, err := kv.Put(ctx, "k", []byte("v3"), client.WithContext(second.Context)); err != nil {
		t.Fatalf("context sealed under the current secret: %v", err)
	}
}

// TestContextSecretConfigChecked: a secret too short, or a previous one
// without a current one, stops a coordinator from starting.
func TestContextSecretConfigChecked(t *testing.T) {
	c := startCluster(t, 1)
	ctx := ctxT(t)
	js, err := jetstream.New(connect(t, c))
	if err != nil {
		t.Fatal(err)
	}
	idem, err := idemnats.Open(ctx, js, idemnats.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		current, previous []byte
		want              string
	}{
		{[]byte("short"), nil, "context secret is 5 bytes; at least 32"},
		{bytes.Repeat([]byte("x"), 32), []byte("short"), "previous context secret is 5 bytes"},
		{nil, bytes.Repeat([]byte("x"), 32), "previous context secret needs a current one"},
	} {
		co, err := coordinator.New(ctx, connect(t, c), coordinator.Config{
			Metadata: c.Metadata(), Idempotency: idem, Logger: quietLogger(),
			ContextSecret: tc.current, ContextSecretPrevious: tc.previous,
		})
		if err == nil {
			co.Stop()
			t.Fatalf("secrets %q / %q accepted", tc.current, tc.previous)
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("secrets %q / %q: %v, want %q", tc.current, tc.previous, err, tc.want)
		}
	}
}

// pastStopping runs req until no coordinator answers it with "coordinator
// is stopping": right after a coordinator stops, the server may still hand
// it a request, which it refuses before doing anything (so retrying is
// safe, as it is for any client).
func pastStopping(t *testing.T, req func() error) error {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := req()
		var e *client.Error
		if !errors.As(err, &e) || e.Code != 503 || !strings.Contains(e.Message, "coordinator is stopping") || time.Now().After(deadline) {
			return err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func assertCodeNamed(t *testing.T, name string, err error, code int, msgPart string) {
	t.Helper()
	var e *client.Error
	if !errors.As(err, &e) {
		t.Fatalf("%s: got %v, want a %d error", name, err, code)
	}
	if e.Code != code || !strings.Contains(e.Message, msgPart) {
		t.Fatalf("%s: got %d %q, want %d containing %q", name, e.Code, e.Message, code, msgPart)
	}
}
