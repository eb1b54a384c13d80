package vclock

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

var (
	secretA = bytes.Repeat([]byte("a"), MinContextSecret)
	secretB = bytes.Repeat([]byte("b"), MinContextSecret)
	secretC = []byte("a considerably longer secret, well over thirty-two bytes")
)

func mustKeys(t testing.TB, current, previous []byte) *ContextKeys {
	t.Helper()
	k, err := NewContextKeys(current, previous)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// plainContexts are contexts of both policies as the encoders make them.
func plainContexts() []string {
	return []string{
		EncodeContext(Dot{Counter: 1, Actor: "n1"}),
		EncodeContext(Dot{Counter: 1 << 60, Actor: ""}),
		EncodeContext(Dot{Counter: 42, Actor: strings.Repeat("long-actor-", 20)}),
		EncodeDVVContext(DVVContext{{Actor: "node-1.1", Counter: 3}}),
		EncodeDVVContext(DVVContext{{Actor: "a", Counter: 1}, {Actor: "b", Counter: 9}, {Actor: "c", Counter: 1 << 40}}),
	}
}

func TestNewContextKeysRefusesShortSecrets(t *testing.T) {
	for _, tc := range []struct {
		cur, prev []byte
		want      string
	}{
		{nil, nil, "context secret is 0 bytes"},
		{secretA[:MinContextSecret-1], nil, "context secret is 31 bytes; at least 32"},
		{secretA, secretB[:5], "previous context secret is 5 bytes"},
	} {
		if _, err := NewContextKeys(tc.cur, tc.prev); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewContextKeys(%d, %d bytes) = %v, want %q", len(tc.cur), len(tc.prev), err, tc.want)
		}
	}
	if _, err := NewContextKeys(secretA, nil); err != nil {
		t.Fatal(err)
	}
}

func TestSealRoundTrip(t *testing.T) {
	k := mustKeys(t, secretA, nil)
	for _, plain := range plainContexts() {
		sealed, err := k.Seal("tenant-a", plain)
		if err != nil {
			t.Fatalf("seal %q: %v", plain, err)
		}
		wantPrefix := SealedLWWPrefix
		if strings.HasPrefix(plain, DVVContextPrefix) {
			wantPrefix = SealedDVVPrefix
		}
		if !strings.HasPrefix(sealed, wantPrefix) {
			t.Fatalf("sealed %q: want prefix %q", sealed, wantPrefix)
		}
		if again, _ := k.Seal("tenant-a", plain); again != sealed {
			t.Fatalf("sealing is not deterministic: %q vs %q", again, sealed)
		}
		got, err := k.Open("tenant-a", sealed)
		if err != nil || got != plain {
			t.Fatalf("open(seal(%q)) = %q, %v", plain, got, err)
		}
		if in, err := InspectContext(sealed); err != nil || in != plain {
			t.Fatalf("inspect(%q) = %q, %v", sealed, in, err)
		}
		if PolicyOf(sealed) != PolicyOf(plain) || PolicyOf(sealed) == "" {
			t.Fatalf("policy of %q is %q, of %q is %q", sealed, PolicyOf(sealed), plain, PolicyOf(plain))
		}
	}
	if s, err := k.Seal("t", ""); s != "" || err != nil {
		t.Fatalf("seal of the empty context = %q, %v", s, err)
	}
	if s, err := k.Open("t", ""); s != "" || err != nil {
		t.Fatalf("open of the empty context = %q, %v", s, err)
	}
	for _, bad := range []string{"x1.AAAA", "l1.@@", "d1.!", "l1.", "l1.AA\nAA", SealedLWWPrefix + "AAAA"} {
		if _, err := k.Seal("t", bad); !errors.Is(err, ErrBadContext) {
			t.Errorf("seal(%q) = %v, want ErrBadContext", bad, err)
		}
	}
}

// TestSealTamperAnyByte changes every byte of every sealed context to
// every other character a context may hold (and a few it may not); none
// opens.
func TestSealTamperAnyByte(t *testing.T) {
	k := mustKeys(t, secretA, nil)
	alphabet := "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/\n\x00"
	for _, plain := range plainContexts() {
		sealed, err := k.Seal("t", plain)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < len(sealed); i++ {
			for j := 0; j < len(alphabet); j++ {
				if alphabet[j] == sealed[i] {
					continue
				}
				forged := sealed[:i] + string(alphabet[j]) + sealed[i+1:]
				if got, err := k.Open("t", forged); err == nil {
					t.Fatalf("tampered %q (byte %d of %q) opened to %q", forged, i, sealed, got)
				} else if !errors.Is(err, ErrUnauthenticContext) {
					t.Fatalf("tampered %q: %v, want ErrUnauthenticContext", forged, err)
				}
			}
		}
		// Truncated or extended.
		for n := 0; n < len(sealed); n++ {
			if _, err := k.Open("t", sealed[:n]); err == nil && n > 0 {
				t.Fatalf("prefix %q of %q opened", sealed[:n], sealed)
			}
		}
		for _, tail := range []string{"A", "AA", "AAAA", "."} {
			if _, err := k.Open("t", sealed+tail); err == nil {
				t.Fatalf("%q + %q opened", sealed, tail)
			}
		}
	}
}

func TestSealBindsTenantAndPolicy(t *testing.T) {
	k := mustKeys(t, secretA, nil)
	for _, plain := range plainContexts() {
		sealed, _ := k.Seal("tenant-a", plain)
		for _, other := range []string{"tenant-b", "tenant-a ", "tenant-", "", "TENANT-A"} {
			if _, err := k.Open(other, sealed); !errors.Is(err, ErrUnauthenticContext) {
				t.Fatalf("context of tenant-a opened for %q: %v", other, err)
			}
		}
		// Relabelled as the other policy: same payload and tag.
		var relabelled string
		if strings.HasPrefix(sealed, SealedLWWPrefix) {
			relabelled = SealedDVVPrefix + sealed[len(SealedLWWPrefix):]
		} else {
			relabelled = SealedLWWPrefix + sealed[len(SealedDVVPrefix):]
		}
		if _, err := k.Open("tenant-a", relabelled); !errors.Is(err, ErrUnauthenticContext) {
			t.Fatalf("%q relabelled %q opened: %v", sealed, relabelled, err)
		}
	}
	// Tenant boundary: ("ab", body "c...") must not collide with ("a", "bc...").
	body := []byte("payload")
	if bytes.Equal(k.tag(k.current, 'l', "ab", body, nil), k.tag(k.current, 'l', "a", append([]byte("b"), body...), nil)) {
		t.Fatal("tenant and body are not separated in the tag")
	}
}

func TestSealUnauthenticatedFormatsRefused(t *testing.T) {
	k := mustKeys(t, secretA, nil)
	for _, plain := range plainContexts() {
		_, err := k.Open("t", plain)
		if !errors.Is(err, ErrUnauthenticContext) || !strings.Contains(err.Error(), "no longer accepted") {
			t.Fatalf("plain %q: %v, want a refusal naming the retired format", plain, err)
		}
	}
	for _, junk := range []string{"x", "l3.AAAA", "d2.", "l2.", "l2.@@@", "l2.AAAA", "\x00"} {
		if _, err := k.Open("t", junk); !errors.Is(err, ErrUnauthenticContext) {
			t.Fatalf("%q: %v", junk, err)
		}
	}
	if !strings.Contains(ErrUnauthenticContext.Error(), "context was not issued by this store") {
		t.Fatal("the refusal must say the context was not issued by this store")
	}
}

// TestSealRotation: contexts sealed under a secret open while it is the
// current or the previous one, and are refused once it is neither.
func TestSealRotation(t *testing.T) {
	plain := plainContexts()[0]
	k1 := mustKeys(t, secretA, nil)
	sealed1, _ := k1.Seal("t", plain)

	k2 := mustKeys(t, secretB, secretA) // step 1: new current, old previous
	if got, err := k2.Open("t", sealed1); err != nil || got != plain {
		t.Fatalf("old context under (new, old): %q, %v", got, err)
	}
	sealed2, _ := k2.Seal("t", plain)
	if sealed2 == sealed1 {
		t.Fatal("new keys seal like the old ones")
	}
	// A coordinator not yet rotated (still old current) whose previous is
	// the new secret also opens the new contexts: the order of the
	// rollout does not matter.
	kMix := mustKeys(t, secretA, secretB)
	if _, err := kMix.Open("t", sealed2); err != nil {
		t.Fatalf("new context under (old, new): %v", err)
	}
	k3 := mustKeys(t, secretB, nil) // step 2: previous dropped
	if _, err := k3.Open("t", sealed1); !errors.Is(err, ErrUnauthenticContext) {
		t.Fatalf("old context after the previous secret was dropped: %v", err)
	}
	if _, err := k3.Open("t", sealed2); err != nil {
		t.Fatalf("current context: %v", err)
	}
	k4 := mustKeys(t, secretC, secretB) // next rotation: A is two back
	if _, err := k4.Open("t", sealed1); !errors.Is(err, ErrUnauthenticContext) {
		t.Fatalf("context two secrets back: %v", err)
	}
}

func TestNewContextKeysCopiesSecrets(t *testing.T) {
	cur := append([]byte(nil), secretA...)
	k := mustKeys(t, cur, nil)
	sealed, _ := k.Seal("t", plainContexts()[0])
	cur[0] ^= 0xff
	if _, err := k.Open("t", sealed); err != nil {
		t.Fatalf("changing the caller's slice changed the keys: %v", err)
	}
}

// FuzzContextSeal: whatever the input, Open never panics; it accepts only
// what Seal made for the same tenant, and round-trips that.
func FuzzContextSeal(f *testing.F) {
	k := mustKeys(f, secretA, secretB)
	for _, p := range plainContexts() {
		s, _ := k.Seal("t", p)
		f.Add("t", s, p)
		f.Add("u", s, p)
	}
	f.Add("t", "l1.AaIUYfr9AABkMjMxOWMxZQ", "l1.AaIUYfr9AABkMjMxOWMxZQ")
	f.Add("", "d2.AAAAAAAAAAAAAAAAAAAAAAAAAAAA", "")
	f.Fuzz(func(t *testing.T, tenant, s, plain string) {
		if got, err := k.Open(tenant, s); err == nil && s != "" {
			// It verified: it must be exactly what Seal makes of got.
			again, serr := k.Seal(tenant, got)
			prev := mustKeys(t, secretB, nil)
			againPrev, _ := prev.Seal(tenant, got)
			if serr != nil || (again != s && againPrev != s) {
				t.Fatalf("Open(%q, %q) accepted %q, which Seal makes as %q / %q (%v)", tenant, s, got, again, againPrev, serr)
			}
		} else if err != nil && !errors.Is(err, ErrUnauthenticContext) {
			t.Fatalf("Open error %v does not wrap ErrUnauthenticContext", err)
		}
		sealed, err := k.Seal(tenant, plain)
		if err != nil {
			return
		}
		if got, err := k.Open(tenant, sealed); err != nil || got != plain {
			t.Fatalf("Open(Seal(%q)) = %q, %v", plain, got, err)
		}
		if tenant != "x" {
			if _, err := k.Open("x", sealed); err == nil && sealed != "" {
				t.Fatalf("context of %q opened for tenant x", tenant)
			}
		}
	})
}
