package coordinator

import "github.com/nats-io/nats.go"

// Conn is the coordinator's NATS connection, for tests that make it
// reconnect.
func (c *Coordinator) Conn() *nats.Conn { return c.nc }
