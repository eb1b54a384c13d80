package idempotency

import (
	"regexp"
	"strings"
	"testing"
	"time"
)

// jsKey is a valid JetStream KV key (nats.go's rule) without leading,
// trailing or doubled dots.
var jsKey = regexp.MustCompile(`^[-/_=a-zA-Z0-9]+(\.[-/_=a-zA-Z0-9]+)*$`)

func TestKeyFormat(t *testing.T) {
	for _, tc := range []struct{ tenant, key, idem string }{
		{"acme", "users/42", "req-1"},
		{"acme", "", ""},
		{"t_1-x", "\x00\xff.*> \r\n", "é ✓"},
		{"acme", strings.Repeat("k", 1<<16), strings.Repeat("i", 300)},
	} {
		k := Key(tc.tenant, tc.key, tc.idem)
		if !strings.HasPrefix(k, tc.tenant+".") || len(k) != len(tc.tenant)+1+keyHexLen {
			t.Errorf("Key(%q, %q, %q) = %q: want %q + 32 hex digits", tc.tenant, tc.key, tc.idem, k, tc.tenant+".")
		}
		if !jsKey.MatchString(k) {
			t.Errorf("Key(%q, %q, %q) = %q: not a valid JetStream KV key", tc.tenant, tc.key, tc.idem, k)
		}
		if k2 := Key(tc.tenant, tc.key, tc.idem); k2 != k {
			t.Errorf("Key is not deterministic: %q then %q", k, k2)
		}
	}
}

func TestKeyDistinguishesParts(t *testing.T) {
	seen := map[string][3]string{}
	for _, p := range [][3]string{
		{"a", "b", "c"},
		{"a", "b", "C"},
		{"a", "B", "c"},
		{"A", "b", "c"},
		// Shifting bytes between parts, even across NUL separators, must
		// change the key.
		{"a", "b\x00c", ""},
		{"a", "b", "\x00c"},
		{"a", "b\x00", "c"},
		{"a", "", "b\x00c"},
		{"a", "bc", ""},
		{"a", "", "bc"},
		{"a", "b", "c\x00"},
	} {
		k := Key(p[0], p[1], p[2])
		if prev, dup := seen[k]; dup {
			t.Errorf("Key(%q) == Key(%q) == %q", p, prev, k)
		}
		seen[k] = p
	}
}

func TestClaimOwned(t *testing.T) {
	if (Claim{}).Owned() {
		t.Error("zero Claim is owned")
	}
	if !(Claim{Token: "x"}).Owned() {
		t.Error("Claim with a token is not owned")
	}
	if (Claim{Response: []byte{}}).Owned() {
		t.Error("duplicate Claim is owned")
	}
}

func TestCheckTTL(t *testing.T) {
	if err := CheckTTL("ttl", time.Nanosecond); err != nil {
		t.Errorf("CheckTTL(1ns) = %v", err)
	}
	for _, d := range []time.Duration{0, -time.Second} {
		if err := CheckTTL("ttl", d); err == nil || !strings.Contains(err.Error(), "ttl") {
			t.Errorf("CheckTTL(%v) = %v, want an error naming ttl", d, err)
		}
	}
}

func TestFingerprintsMatch(t *testing.T) {
	for _, tc := range []struct {
		stored, fp string
		want       bool
	}{
		{"", "", true},
		{"", "a", true},  // an entry from before fingerprints
		{"a", "", true},  // a caller without fingerprints
		{"a", "a", true}, // the same request
		{"a", "b", false},
		{"a", "ab", false},
		{"ab", "a", false},
	} {
		if got := FingerprintsMatch([]byte(tc.stored), []byte(tc.fp)); got != tc.want {
			t.Errorf("FingerprintsMatch(%q, %q) = %t, want %t", tc.stored, tc.fp, got, tc.want)
		}
	}
	if err := CheckFingerprint(make([]byte, MaxFingerprintBytes)); err != nil {
		t.Errorf("CheckFingerprint(%d bytes) = %v", MaxFingerprintBytes, err)
	}
	if err := CheckFingerprint(make([]byte, MaxFingerprintBytes+1)); err == nil {
		t.Errorf("CheckFingerprint(%d bytes) = nil, want an error", MaxFingerprintBytes+1)
	}
}
