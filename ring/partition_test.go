package ring

import (
	"errors"
	"strconv"
	"testing"
)

func TestValidatePartitions(t *testing.T) {
	for _, tc := range []struct {
		q  int
		ok bool
	}{
		{1, true}, {2, true}, {64, true}, {1024, true}, {65536, true},
		{0, false}, {-1, false}, {3, false}, {1000, false}, {1 << 17, false},
	} {
		err := ValidatePartitions(tc.q)
		if (err == nil) != tc.ok || err != nil && !errors.Is(err, ErrPartitions) {
			t.Errorf("ValidatePartitions(%d) = %v, want ok=%v", tc.q, err, tc.ok)
		}
	}
}

func TestPartitionIsTopBitsOfKeyHash(t *testing.T) {
	for q := 1; q <= MaxPartitions; q *= 2 {
		counts := make([]int, q)
		for i := range 2000 {
			key := "key-" + strconv.Itoa(i)
			p := Partition("default", key, q)
			if int(p) >= q {
				t.Fatalf("q=%d: partition %d out of range", q, p)
			}
			h := KeyHash("default", key)
			// Partition p covers [p·2^64/q, (p+1)·2^64/q).
			if q > 1 && h>>(64-log2(q)) != uint64(p) {
				t.Fatalf("q=%d: partition %d of hash %#x", q, p, h)
			}
			// Doubling Q splits p into 2p and 2p+1.
			if q < MaxPartitions {
				if p2 := Partition("default", key, 2*q); p2>>1 != p {
					t.Fatalf("q=%d: %d at 2q is not a half of %d", q, p2, p)
				}
			}
			counts[p]++
		}
		if q == 1 && counts[0] != 2000 {
			t.Fatalf("q=1: counts %v", counts)
		}
	}
}

func log2(q int) int {
	n := 0
	for q > 1 {
		q >>= 1
		n++
	}
	return n
}

// TestPartitionGolden pins the key → partition mapping: it is part of the
// cluster protocol and of the storage layout (keys are stored partition
// first), so a change would misplace every stored key.
func TestPartitionGolden(t *testing.T) {
	for _, tc := range []struct {
		tenant, key string
		q           int
		want        uint32
	}{
		{"default", "user:1", 1024, 109},
		{"default", "", 1024, 413},
		{"t", "k", 65536, 7795},
		{"acme", "order/42", 64, 50},
		{"default", "user:1", 1, 0},
	} {
		if got := Partition(tc.tenant, tc.key, tc.q); got != tc.want {
			t.Errorf("Partition(%q, %q, %d) = %d, want %d", tc.tenant, tc.key, tc.q, got, tc.want)
		}
	}
}

// TestPartitionNoAlloc: Partition runs on every request, on the hot path of
// both the coordinator and the storage node's key encoding; an allocation
// there would be garbage per request for a computation that needs none.
func TestPartitionNoAlloc(t *testing.T) {
	key := "user:1234567"
	if a := testing.AllocsPerRun(100, func() { _ = Partition("default", key, DefaultPartitions) }); a != 0 {
		t.Fatalf("Partition allocates %.1f times per call", a)
	}
}

func TestPartitionOddQ(t *testing.T) {
	// Invalid q never yields an out-of-range partition.
	for _, q := range []int{-5, 0, 3, 6, 1000} {
		p := Partition("default", "user:1", q)
		if q <= 0 && p != 0 || q > 0 && int(p) >= q {
			t.Errorf("q=%d: partition %d", q, p)
		}
	}
}
