//go:build unix && !linux && !darwin

package bench

// maxRSSBytes converts ru_maxrss, in KiB on the BSDs, to bytes.
func maxRSSBytes(v int64) int64 { return v * 1024 }
