package bench

// maxRSSBytes converts ru_maxrss, in KiB on Linux, to bytes.
func maxRSSBytes(v int64) int64 { return v * 1024 }
