//go:build !unix

package bench

import (
	"os"
	"time"
)

func allocatedBytes(info os.FileInfo) int64 { return info.Size() }

func processUsage() (time.Duration, int64) { return 0, 0 }
