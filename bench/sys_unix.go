//go:build unix

package bench

import (
	"os"
	"syscall"
	"time"
)

// allocatedBytes is the disk space a file occupies (du), falling back to
// its length.
func allocatedBytes(info os.FileInfo) int64 {
	if st, ok := info.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return info.Size()
}

// processUsage returns the CPU time (user + system) this process has used
// and its peak resident set size in bytes (getrusage RUSAGE_SELF).
func processUsage() (cpu time.Duration, maxRSS int64) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, 0
	}
	cpu = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	return cpu, maxRSSBytes(ru.Maxrss)
}
