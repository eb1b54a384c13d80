package coordinator

import (
	"strings"
	"testing"
	"time"

	"github.com/quorumkv/quorumkv/subjects"
	"github.com/quorumkv/quorumkv/vclock"
)

func tokenCoordinator(t testing.TB, current, previous string) *Coordinator {
	t.Helper()
	var prev []byte
	if previous != "" {
		prev = []byte(previous)
	}
	keys, err := vclock.NewContextKeys([]byte(current), prev)
	if err != nil {
		t.Fatal(err)
	}
	return &Coordinator{keys: keys}
}

const (
	secretA = "0123456789abcdef0123456789abcdef-a"
	secretB = "0123456789abcdef0123456789abcdef-b"
)

// TestIdemTokenRoundTrip: a generated key opens to what it was minted
// from, for the tenant it was minted for, within the TTL, and under the
// previous secret after a rotation; nothing else opens.
func TestIdemTokenRoundTrip(t *testing.T) {
	c := tokenCoordinator(t, secretA, "")
	now := time.UnixMilli(1_800_000_000_123)
	fp := []byte("0123456789abcdef")
	reply := &subjects.WriteReply{Context: "l1.AAAAAAAAAAEAAnExAA", ReplicaCount: 2, Consistency: subjects.Quorum}
	tok, ok := c.mintIdemToken("acme", fp, reply, now)
	if !ok || !strings.HasPrefix(tok, idemTokenPrefix) || len(tok) > maxIdempotencyKey {
		t.Fatalf("mint: %q %v", tok, ok)
	}
	got, ok := c.openIdemToken("acme", tok, now.Add(time.Hour), 24*time.Hour)
	if !ok || !got.issued.Equal(now) || got.replicas != 2 || got.consistency != subjects.Quorum ||
		string(got.fingerprint) != string(fp) || got.context != reply.Context {
		t.Fatalf("open: %+v %v", got, ok)
	}
	if _, ok := c.openIdemToken("other", tok, now, 24*time.Hour); ok {
		t.Error("a token opened for another tenant")
	}
	if _, ok := c.openIdemToken("acme", tok, now.Add(25*time.Hour), 24*time.Hour); ok {
		t.Error("an expired token opened")
	}
	rotated := tokenCoordinator(t, secretB, secretA)
	if _, ok := rotated.openIdemToken("acme", tok, now, 24*time.Hour); !ok {
		t.Error("a token sealed under the previous secret did not open after rotation")
	}
	if _, ok := tokenCoordinator(t, secretB, "").openIdemToken("acme", tok, now, 24*time.Hour); ok {
		t.Error("a token opened under a secret that never sealed it")
	}
	// Every one-character change of the token is refused.
	for i := len(idemTokenPrefix); i < len(tok); i++ {
		for _, ch := range []byte{'A', 'z', '-', '_', '0'} {
			if tok[i] == ch {
				continue
			}
			bad := tok[:i] + string(ch) + tok[i+1:]
			if _, ok := c.openIdemToken("acme", bad, now, 24*time.Hour); ok {
				t.Fatalf("altered token %q opened", bad)
			}
		}
	}
	for _, key := range []string{"", "g1.", "order-42", "g1.!!!", "g1." + strings.Repeat("A", 40)} {
		if _, ok := c.openIdemToken("acme", key, now, 24*time.Hour); ok {
			t.Errorf("key %q opened as a token", key)
		}
	}
}

// TestIdemTokenTooLongFallsBack: a reply whose token would pass the key
// limit gets none (the caller records a random key instead).
func TestIdemTokenTooLongFallsBack(t *testing.T) {
	c := tokenCoordinator(t, secretA, "")
	reply := &subjects.WriteReply{Context: "d1." + strings.Repeat("x", 300), ReplicaCount: 3, Consistency: subjects.All}
	if tok, ok := c.mintIdemToken("acme", []byte("0123456789abcdef"), reply, time.Now()); ok {
		t.Fatalf("minted a %d-byte token", len(tok))
	}
}

// FuzzOpenIdemToken: opening any string never panics, and only minted
// tokens open.
func FuzzOpenIdemToken(f *testing.F) {
	c := tokenCoordinator(f, secretA, "")
	now := time.UnixMilli(1_800_000_000_000)
	tok, _ := c.mintIdemToken("t", []byte("0123456789abcdef"), &subjects.WriteReply{Context: "l1.AA", ReplicaCount: 1, Consistency: subjects.One}, now)
	f.Add(tok)
	f.Add("g1.AAAA")
	f.Add("order")
	f.Fuzz(func(t *testing.T, key string) {
		got, ok := c.openIdemToken("t", key, now, 24*time.Hour)
		if ok && key != tok {
			t.Fatalf("%q opened as %+v", key, got)
		}
	})
}
