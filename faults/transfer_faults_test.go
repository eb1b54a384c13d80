package faults

// Faults during a transfer (issue 14, "What must hold"): a fourth node
// joins a cluster of three, its transfer slowed by --transfer-rate so the
// fault lands while it streams; the streaming source is SIGKILLed, the
// target is SIGKILLed and restarted, a coordinator is SIGKILLed, or a NATS
// server is stopped. The transfer must resume or be retried, the node must
// become active, and nothing acknowledged may be lost, also after one more
// node is SIGKILLed. The continuous writer and checker run throughout.

import (
	"testing"
	"time"
)

// transferFault runs the schedule: preload, start node-4 slowly, apply
// fault once node-4 is joining, heal, wait for active, kill one more.
func transferFault(t *testing.T, name string, fault func(c *cluster, w *scenarioLoad), heal func(c *cluster, w *scenarioLoad)) {
	c, kv := startMembership(t, 3)
	w := startWorkload(t, kv, defaultLoad)
	// ~600 KiB per replica; node-4 pulls its share from every current
	// owner at 0.25 MiB/s: several seconds of transfer.
	w.preload(600, 1024, 4)
	w.waitAcked(700, time.Minute)

	w.phase("start node-4 (--transfer-rate 0.25)")
	start := time.Now()
	c.addStorage("node-4", "--transfer-rate", "0.25")
	c.waitStatuses(t, 30*time.Second, map[string]string{"node-4": "joining"})
	time.Sleep(1500 * time.Millisecond)
	if st, err := c.statuses(); err != nil || st["node-4"] != "joining" {
		t.Fatalf("node-4 finished its transfer before the fault (%v, %v): slow it down further; the fault would prove nothing", st, err)
	}
	t.Logf("node-4 during its transfer:\n%s", c.cli(10*time.Second, "node", "list").stdout)
	w.phase(name)
	fault(c, w)
	time.Sleep(3 * time.Second)
	w.phase("heal: " + name)
	heal(c, w)
	took := c.waitStatuses(t, transitionTimeout, map[string]string{"node-4": "active"})
	t.Logf("node-4 active %s after its start (%s after the heal)", time.Since(start).Round(time.Millisecond), took.Round(time.Millisecond))
	w.phase("node-4 active")
	w.fullPass("after the transfer with "+name, time.Minute)
	w.waitRounds(1, 2*time.Minute)

	id := victim(t, "node-1", "node-2", "node-3", "node-4")
	w.phase("SIGKILL " + id)
	c.kill(c.storageProc(t, id))
	w.fullPass("after SIGKILL of "+id, time.Minute)
	finish(t, w, c)
}

func TestTransferFaultSourceKilled(t *testing.T) {
	transferFault(t, "SIGKILL source node-1 mid-transfer",
		func(c *cluster, _ *scenarioLoad) { c.kill(c.storageProc(t, "node-1")) },
		func(c *cluster, _ *scenarioLoad) { c.start(c.storageProc(t, "node-1")) })
}

func TestTransferFaultTargetKilled(t *testing.T) {
	transferFault(t, "SIGKILL target node-4 mid-transfer",
		func(c *cluster, _ *scenarioLoad) { c.kill(c.storageProc(t, "node-4")) },
		func(c *cluster, _ *scenarioLoad) { c.start(c.storageProc(t, "node-4")) })
}

func TestTransferFaultCoordinatorKilled(t *testing.T) {
	transferFault(t, "SIGKILL coordinator-1 mid-transfer",
		func(c *cluster, _ *scenarioLoad) { c.kill(c.coords[0]) },
		func(c *cluster, _ *scenarioLoad) { c.start(c.coords[0]) })
}

func TestTransferFaultNATSServerStopped(t *testing.T) {
	transferFault(t, "stop NATS server nats-2 mid-transfer",
		func(c *cluster, _ *scenarioLoad) { c.stopNATS(1) },
		func(c *cluster, _ *scenarioLoad) {
			if err := c.restartNATS(1); err != nil {
				t.Fatal(err)
			}
		})
}
