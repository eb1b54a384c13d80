package redistest

import (
	"fmt"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestClientCleansPrefix(t *testing.T) {
	var prefix string
	t.Run("user", func(t *testing.T) {
		c, p := Client(t)
		prefix = p
		if !strings.HasPrefix(p, "quorumkv-test:") || !strings.HasSuffix(p, ":") {
			t.Fatalf("prefix %q", p)
		}
		for i := range 1200 { // more than one SCAN page
			if err := c.Set(t.Context(), fmt.Sprintf("%sk%d", p, i), "v", time.Minute).Err(); err != nil {
				t.Fatal(err)
			}
		}
	})
	c, other := Client(t)
	if other == prefix {
		t.Fatalf("two Clients share prefix %q", prefix)
	}
	keys, _, err := c.Scan(t.Context(), 0, prefix+"*", 10000).Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 0 {
		t.Fatalf("%d keys left under %q after cleanup", len(keys), prefix)
	}
}

// fatalTB records Fatalf and ends the calling goroutine, as testing.T does.
type fatalTB struct {
	testing.TB
	mu  sync.Mutex
	msg string
}

func (f *fatalTB) Helper() {}
func (f *fatalTB) Fatalf(format string, args ...any) {
	f.mu.Lock()
	f.msg = fmt.Sprintf(format, args...)
	f.mu.Unlock()
	runtime.Goexit()
}

func TestClientFailsClearlyWhenUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	t.Setenv(EnvURL, "redis://"+addr+"/0")

	tb := &fatalTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		Client(tb)
	}()
	<-done
	tb.mu.Lock()
	defer tb.mu.Unlock()
	if !strings.Contains(tb.msg, "unreachable") || !strings.Contains(tb.msg, addr) || !strings.Contains(tb.msg, EnvURL) {
		t.Fatalf("Fatalf message %q: want it to say Redis at %s is unreachable and name %s", tb.msg, addr, EnvURL)
	}
}
