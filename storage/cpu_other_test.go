//go:build !unix

package storage

import "time"

// processCPU is 0: this system's process CPU time is not read here.
func processCPU() time.Duration { return 0 }
