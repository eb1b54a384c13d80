package ring

import (
	"strings"
	"testing"

	"github.com/cespare/xxhash/v2"
)

func TestKeyHash(t *testing.T) {
	// Golden values: KeyHash is part of the cluster protocol.
	golden := []struct {
		tenant, key string
		want        uint64
	}{
		{"", "", 0xe934a84adb052768},
		{"default", "key-0", 0x0b5fb5ff6e0f7b25},
		{"default", "user:42", 0x3d1dfe079962b46d},
	}
	for _, g := range golden {
		if got := KeyHash(g.tenant, g.key); got != g.want {
			t.Errorf("KeyHash(%q, %q) = %#x, want %#x", g.tenant, g.key, got, g.want)
		}
	}

	// Both the stack-buffer and the streaming path equal the definition,
	// around the switch-over length and across xxhash's 32-byte blocks.
	for _, tl := range []int{0, 1, 7, 31, 32, 100, 254, 255, 256, 300} {
		for _, kl := range []int{0, 1, 31, 32, 33, 254 - tl, 255 - tl, 256 - tl, 1000} {
			if kl < 0 {
				continue
			}
			tenant, key := strings.Repeat("t", tl), strings.Repeat("k", kl)
			want := xxhash.Sum64String(tenant + "\x00" + key)
			if got := KeyHash(tenant, key); got != want {
				t.Errorf("KeyHash(len %d, len %d) = %#x, want %#x", tl, kl, got, want)
			}
		}
	}

	// The separator keeps tenants apart.
	if KeyHash("ab", "c") == KeyHash("a", "bc") {
		t.Error(`KeyHash("ab", "c") == KeyHash("a", "bc")`)
	}
}

func TestKeyHashNoAlloc(t *testing.T) {
	long := strings.Repeat("k", 1000)
	if a := testing.AllocsPerRun(100, func() { _ = KeyHash("default", "user:42") + KeyHash("default", long) }); a != 0 {
		t.Errorf("KeyHash allocates %v times", a)
	}
}
