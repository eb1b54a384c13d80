// Command quorumkv is the one binary of quorumkv: the servers (dev,
// coordinator, storage, migrate) and the client verbs (put, get, delete,
// tenant, node). Run `quorumkv help` for the list.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/coordinator"
	"github.com/quorumkv/quorumkv/repair"
	"github.com/quorumkv/quorumkv/storage"
)

// Exit codes, one per error class, so scripts can branch on them.
const (
	exitOK          = 0
	exitInternal    = 1 // anything unexpected (500)
	exitUsage       = 2 // bad flags or arguments, or an invalid request (400, 413)
	exitNotFound    = 3 // key, tenant or node not found (404)
	exitConflict    = 4 // every 409: stale version, in progress, exists, tenant_not_empty, node_active, node_live, …
	exitUnavailable = 5 // level not reachable, timeout, overloaded, no coordinator (503, 504, 429)
)

func commands() []command {
	return []command{
		{"dev", "", "Run everything in one process: embedded NATS with JetStream, 3 storage nodes, a coordinator, tenant default.", runDev},
		{"coordinator", "", "Run a coordinator: serves kv.v1.<tenant>.put|get|delete and the admin API in queue group coordinators.", runCoordinator},
		{"storage", "", "Run a storage node: Pebble on local disk, serving kv.node.<id>.>.", runStorage},
		{"repair", "[status|dead list|dead replay]", "Run a repair worker (KV_REPAIR consumer); status shows the backlog, dead lists and replays dead letters.", runRepair},
		{"migrate", "", "Apply the PostgreSQL schema migrations of the metadata store.", runMigrate},
		{"put", "KEY [VALUE|-]", "Store VALUE (or standard input with -) under KEY.", runPut},
		{"get", "KEY", "Print the value of KEY.", runGet},
		{"delete", "KEY", "Delete KEY (writes a tombstone).", runDelete},
		{"tenant", "create|get|list|update|delete ...", "Manage tenants.", runTenant},
		{"node", "list|drain|join|replace|remove|dump ...", "Manage storage nodes: their lifecycle (joining, active, leaving, left) and data.", runNode},
		{"bench", "", "Benchmark quorumkv against JetStream KV and raw NATS in one run (--quick, --json, --html).", runBench},
		{"status", "", "Show storage nodes (state, ring share), coordinators and tenants.", runStatus},
		{"version", "", "Print the version.", func([]string) error { fmt.Println("quorumkv", version); return nil }},
	}
}

const version = "0.1.0"

func usage() {
	fmt.Fprintf(os.Stderr, "quorumkv %s: a replicated, multi-tenant key-value store on NATS.\n\nusage: quorumkv COMMAND [flags] [args]\n\ncommands:\n", version)
	for _, c := range commands() {
		fmt.Fprintf(os.Stderr, "  %-12s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(os.Stderr, "\nRun `quorumkv COMMAND --help` for a command's flags. Quick start: `quorumkv dev`.\n")
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		usage()
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return exitCode(c.run(args[1:]))
		}
	}
	fmt.Fprintf(os.Stderr, "quorumkv: unknown command %q\n\n", args[0])
	usage()
	return exitUsage
}

// exitCode prints err and maps it to the exit code of its class.
func exitCode(err error) int {
	if err == nil {
		return exitOK
	}
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	fmt.Fprintf(os.Stderr, "quorumkv: %s\n", strings.TrimPrefix(err.Error(), "quorumkv: "))
	var ue usageError
	switch {
	case errors.As(err, &ue), errors.Is(err, client.ErrInvalid), errors.Is(err, client.ErrTooLarge),
		errors.Is(err, coordinator.ErrInvalidConfig), errors.Is(err, storage.ErrInvalidConfig), errors.Is(err, repair.ErrInvalidConfig):
		return exitUsage
	case errors.Is(err, client.ErrNotFound), errors.Is(err, client.ErrNoSuchTenant), errors.Is(err, client.ErrNoSuchNode):
		return exitNotFound
	case errors.Is(err, client.ErrConflict):
		return exitConflict
	case errors.Is(err, client.ErrUnavailable), errors.Is(err, client.ErrTimeout), errors.Is(err, client.ErrOverloaded),
		errors.Is(err, errWait): // a node change --wait cannot see finish
		return exitUnavailable
	}
	return exitInternal
}

// signalContext is cancelled by SIGINT or SIGTERM.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}
