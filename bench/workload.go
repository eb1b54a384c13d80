package bench

import (
	"fmt"
	"strings"
)

// Workload is a YCSB core-style operation mix over preloaded records.
type Workload struct {
	Name  string  // as in reports and JSON
	Label string  // for people
	Reads float64 // fraction of operations that are reads; the rest are updates
}

// The workloads, in report order: write-only plus YCSB core workloads C, B
// and A (read-only, 95/5, 50/50).
var Workloads = []Workload{
	{Name: "write-only", Label: "write-only (100% update)", Reads: 0},
	{Name: "ycsb-c", Label: "YCSB C (100% read)", Reads: 1},
	{Name: "ycsb-b", Label: "YCSB B (95% read, 5% update)", Reads: 0.95},
	{Name: "ycsb-a", Label: "YCSB A (50% read, 50% update)", Reads: 0.5},
}

// Key distributions.
const (
	DistUniform = "uniform"
	DistZipfian = "zipfian"
)

// Distributions in report order.
var Distributions = []string{DistUniform, DistZipfian}

// Durability pairs quorumkv and JetStream settings of matching strength.
type Durability struct {
	Name  string // as in reports and JSON
	Label string
	Fsync bool // quorumkv: fsync every write batch; JetStream: sync_interval always
}

// The durability pairs, in report order.
var Durabilities = []Durability{
	{Name: "async", Label: "quorumkv --fsync=false vs JetStream default (fsync every 2 min)", Fsync: false},
	{Name: "fsync", Label: "quorumkv fsync per batch vs JetStream sync_interval: always", Fsync: true},
}

// Systems compared, in report order.
const (
	SysNATS     = "nats-reqrep"
	SysJetKV    = "jetstream-kv"
	SysQuorumKV = "quorumkv"
)

// Systems in report order.
var Systems = []string{SysNATS, SysJetKV, SysQuorumKV}

// NewKeyGen returns the generator of distribution dist over n records.
func NewKeyGen(dist string, n uint64) (KeyGen, error) {
	switch dist {
	case DistUniform:
		return NewUniform(n), nil
	case DistZipfian:
		return NewScrambledZipfian(n), nil
	}
	return nil, fmt.Errorf("unknown distribution %q: use %s", dist, strings.Join(Distributions, " or "))
}

// RecordKey is the key of record i: "user" and 12 digits, a valid
// JetStream KV key and quorumkv key alike.
func RecordKey(i uint64) string { return fmt.Sprintf("user%012d", i) }

// appendRecordKey appends RecordKey(i) to dst without allocating.
func appendRecordKey(dst []byte, i uint64) []byte {
	dst = append(dst, "user"...)
	var d [12]byte
	for j := len(d) - 1; j >= 0; j-- {
		d[j] = byte('0' + i%10)
		i /= 10
	}
	return append(dst, d[:]...)
}

// workloadByName finds a workload.
func workloadNames() (names []string) {
	for _, w := range Workloads {
		names = append(names, w.Name)
	}
	return names
}

func durabilityNames() (names []string) {
	for _, d := range Durabilities {
		names = append(names, d.Name)
	}
	return names
}

func workloadByName(name string) (Workload, bool) {
	for _, w := range Workloads {
		if w.Name == name {
			return w, true
		}
	}
	return Workload{}, false
}

func durabilityByName(name string) (Durability, bool) {
	for _, d := range Durabilities {
		if d.Name == name {
			return d, true
		}
	}
	return Durability{}, false
}
