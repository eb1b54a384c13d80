package main

import (
	"testing"

	"github.com/quorumkv/quorumkv/storage"
)

// benchConfig parses bench flags as quorumkv bench does.
func benchConfig(t *testing.T, args ...string) (b benchFlags, cfgErr error) {
	t.Helper()
	fs := newFlags("bench", "", "")
	b.register(fs)
	if _, err := parse(fs, args); err != nil {
		t.Fatalf("parse %v: %v", args, err)
	}
	b.cfg, cfgErr = b.config(fs)
	return b, cfgErr
}

// TestBenchMembershipFlags: the membership cell runs by default with 1M
// records, 64 clients and the storage default transfer rate; --quick
// skips it, --matrix membership runs only it, and --transfer-rate takes
// MiB/s with 0 for unlimited.
func TestBenchMembershipFlags(t *testing.T) {
	b, err := benchConfig(t)
	if c := b.cfg; err != nil || c.MembershipRecords != 1_000_000 || c.MembershipConcurrency != 64 || c.TransferRate != storage.DefaultTransferRate || c.NoCells {
		t.Fatalf("defaults: %v %+v", err, c)
	}
	if b, err = benchConfig(t, "--quick"); err != nil || b.cfg.MembershipRecords != 0 {
		t.Fatalf("--quick: %v, membership records %d", err, b.cfg.MembershipRecords)
	}
	if b, err = benchConfig(t, "--quick", "--membership-records", "5000"); err != nil || b.cfg.MembershipRecords != 5000 {
		t.Fatalf("--quick --membership-records 5000: %v, %d", err, b.cfg.MembershipRecords)
	}
	b, err = benchConfig(t, "--matrix", "membership", "--membership-records", "200000", "--transfer-rate", "0")
	if c := b.cfg; err != nil || !c.NoCells || c.ScaleRecords != 0 || c.MembershipRecords != 200_000 || c.TransferRate != storage.Unlimited {
		t.Fatalf("--matrix membership: %v %+v", err, c)
	}
	if b, err = benchConfig(t, "--transfer-rate", "1.5"); err != nil || b.cfg.TransferRate != 3<<19 {
		t.Fatalf("--transfer-rate 1.5: %v, %d bytes/s", err, b.cfg.TransferRate)
	}
	if _, err = benchConfig(t, "--transfer-rate", "-1"); err == nil {
		t.Fatal("--transfer-rate -1 accepted")
	}
	if _, err = benchConfig(t, "--matrix", "members"); err == nil {
		t.Fatal("--matrix members accepted")
	}
	if b, err = benchConfig(t, "--membership-cpuprofile", "m.prof"); err != nil || b.cfg.MembershipCPUProfile != "m.prof" {
		t.Fatalf("--membership-cpuprofile m.prof: %v, %q", err, b.cfg.MembershipCPUProfile)
	}
	if _, err = benchConfig(t, "--cpuprofile", "a.prof", "--membership-cpuprofile", "m.prof"); err == nil {
		t.Fatal("--cpuprofile with --membership-cpuprofile accepted (the runtime keeps one profile at a time)")
	}
}
