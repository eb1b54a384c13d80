package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/quorumkv/quorumkv/client"
	"github.com/quorumkv/quorumkv/subjects"
)

// kvFlags are the flags of put, get and delete.
type kvFlags struct {
	nf          natsFlags
	tenant      string
	consistency string
	context     string
	idemKey     string
	timeout     time.Duration
	json        bool
}

func (k *kvFlags) register(fs *flag.FlagSet, write bool) {
	k.nf.register(fs)
	fs.StringVar(&k.tenant, "tenant", "default", "tenant to act for")
	fs.StringVar(&k.consistency, "consistency", "", "one, quorum or all (default: the tenant's)")
	fs.DurationVar(&k.timeout, "timeout", 2*time.Second, "how long the coordinator waits for replicas")
	fs.BoolVar(&k.json, "json", false, "print the full reply as JSON")
	if write {
		fs.StringVar(&k.context, "context", "", "context from an earlier get, so this write supersedes what it saw")
		fs.StringVar(&k.idemKey, "idempotency-key", "", "name this write so retries are not applied twice")
	}
}

func (k *kvFlags) client() (*client.Client, *nats.Conn, error) {
	if k.consistency != "" && k.consistency != subjects.One && k.consistency != subjects.Quorum && k.consistency != subjects.All {
		return nil, nil, usagef("--consistency %q: use one, quorum or all", k.consistency)
	}
	nc, err := k.nf.connect("quorumkv-cli", nil)
	if err != nil {
		return nil, nil, err
	}
	kv, err := client.New(nc, k.tenant, client.WithDefaultTimeout(k.timeout))
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return kv, nc, nil
}

func (k *kvFlags) opts() []client.RequestOption {
	var o []client.RequestOption
	if k.consistency != "" {
		o = append(o, client.WithConsistency(k.consistency))
	}
	if k.context != "" {
		o = append(o, client.WithContext(k.context))
	}
	if k.idemKey != "" {
		o = append(o, client.WithIdempotencyKey(k.idemKey))
	}
	return o
}

// ttlValue is a duration flag that also takes whole days ("7d"), as TTLs
// are often given; set records that the flag was given at all (so 0 can
// clear a tenant's default).
type ttlValue struct {
	d   time.Duration
	set bool
}

func (v *ttlValue) String() string {
	if v == nil || v.d == 0 {
		return "0"
	}
	return v.d.String()
}

func (v *ttlValue) Set(s string) error {
	d, err := parseTTL(s)
	if err != nil {
		return err
	}
	v.d, v.set = d, true
	return nil
}

// parseTTL parses a Go duration ("10m", "1h30m") or a whole number of days
// ("7d"). The range (0..10 years) is the coordinator's to check.
func parseTTL(s string) (time.Duration, error) {
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseInt(days, 10, 64)
		if err != nil || n < -106_751 || n > 106_751 { // time.Duration holds ±292 years
			return 0, fmt.Errorf("%q: want a duration such as 10m, 1h or 7d", s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q: want a duration such as 10m, 1h or 7d", s)
	}
	return d, nil
}

// fmtTTL prints a TTL in milliseconds for the tenant table ("-" = none).
func fmtTTL(ms int64) string {
	if ms == 0 {
		return "-"
	}
	return (time.Duration(ms) * time.Millisecond).String()
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func runPut(args []string) error {
	fs := newFlags("put", "KEY [VALUE|-]", "Store VALUE under KEY. With - or no VALUE, the value is read from standard input.")
	var k kvFlags
	k.register(fs, true)
	var ttl ttlValue
	fs.Var(&ttl, "ttl", "time to live (10m, 2h, 7d): the value expires that long after the put; 0 = the tenant's default_ttl_ms")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) < 1 || len(pos) > 2 {
		return usagef("put takes KEY and VALUE (or - for standard input)")
	}
	var value []byte
	if len(pos) == 1 || pos[1] == "-" {
		if value, err = io.ReadAll(io.LimitReader(os.Stdin, subjects.MaxValueBytes+1)); err != nil {
			return fmt.Errorf("read value from standard input: %w", err)
		}
	} else {
		value = []byte(pos[1])
	}
	kv, nc, err := k.client()
	if err != nil {
		return err
	}
	defer nc.Close()
	opts := k.opts()
	if ttl.d != 0 {
		opts = append(opts, client.WithTTL(ttl.d))
	}
	res, err := kv.Put(context.Background(), pos[0], value, opts...)
	if err != nil {
		return err
	}
	if k.json {
		return printJSON(res)
	}
	fmt.Printf("ok: %s acknowledged (%s)\ncontext: %s\n", replicas(res.ReplicaCount), res.Consistency, res.Context)
	if ttl.d > 0 {
		fmt.Printf("expires: in %s (about %s)\n", ttl.d, time.Now().Add(ttl.d).UTC().Format(time.RFC3339))
	}
	return nil
}

func runDelete(args []string) error {
	fs := newFlags("delete", "KEY", "Delete KEY: writes a tombstone. lww: it supersedes every older version. siblings: without --context it supersedes every value the coordinating replica holds; with --context, exactly what that read returned.")
	var k kvFlags
	k.register(fs, true)
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("delete takes exactly one KEY")
	}
	kv, nc, err := k.client()
	if err != nil {
		return err
	}
	defer nc.Close()
	res, err := kv.Delete(context.Background(), pos[0], k.opts()...)
	if err != nil {
		return err
	}
	if k.json {
		return printJSON(res)
	}
	fmt.Printf("deleted: %s acknowledged (%s)\ncontext: %s\n", replicas(res.ReplicaCount), res.Consistency, res.Context)
	return nil
}

func runGet(args []string) error {
	fs := newFlags("get", "KEY", "Print the value of KEY on standard output. Exit code 3 when the key does not exist.")
	var k kvFlags
	k.register(fs, false)
	showCtx := fs.Bool("show-context", false, "also print the context (to standard error) for a later put --context")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("get takes exactly one KEY")
	}
	kv, nc, err := k.client()
	if err != nil {
		return err
	}
	defer nc.Close()
	res, err := kv.Get(context.Background(), pos[0], k.opts()...)
	if err != nil && !errors.Is(err, client.ErrNotFound) {
		return err
	}
	if k.json {
		if perr := printJSON(res); perr != nil {
			return perr
		}
		if err != nil {
			return fmt.Errorf("%w: %q", err, pos[0])
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: %q", err, pos[0])
	}
	if len(res.Siblings) > 1 {
		// Concurrent values (siblings policy): one per line, and how to
		// resolve them.
		for _, v := range res.Siblings {
			os.Stdout.Write(v)
			fmt.Println()
		}
		fmt.Fprintf(os.Stderr, "%d concurrent values (siblings); resolve with: quorumkv put --tenant %s --context %s %s VALUE\n", len(res.Siblings), k.tenant, res.Context, strconv.Quote(pos[0]))
		return nil
	}
	os.Stdout.Write(res.Value)
	if fi, serr := os.Stdout.Stat(); serr == nil && fi.Mode()&os.ModeCharDevice != 0 {
		fmt.Println()
		if res.ExpiresAtMs != 0 { // at a terminal only: scripts read --json
			at := time.UnixMilli(res.ExpiresAtMs)
			fmt.Fprintf(os.Stderr, "expires: in %s (about %s)\n", time.Until(at).Round(time.Second), at.UTC().Format(time.RFC3339))
		}
	}
	if *showCtx {
		fmt.Fprintf(os.Stderr, "context: %s\n", res.Context)
	}
	return nil
}

// adminFlags are the flags of the tenant and node verbs.
type adminFlags struct {
	nf   natsFlags
	json bool
}

func (a *adminFlags) register(fs *flag.FlagSet) {
	a.nf.register(fs)
	fs.BoolVar(&a.json, "json", false, "print JSON instead of a table")
}

func (a *adminFlags) admin() (*client.Admin, *nats.Conn, error) {
	nc, err := a.nf.connect("quorumkv-cli", nil)
	if err != nil {
		return nil, nil, err
	}
	return client.NewAdmin(nc), nc, nil
}

func printTenants(asJSON bool, ts ...subjects.Tenant) error {
	if asJSON {
		if len(ts) == 1 {
			return printJSON(ts[0])
		}
		return printJSON(subjects.TenantList{Tenants: ts})
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "TENANT\tRF\tCONSISTENCY\tPOLICY\tVERSION\tUPDATED\tDEFAULT TTL\tTOMBSTONE GRACE")
	for _, t := range ts {
		fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%d\t%s\t%s\t%s\n", t.ID, t.ReplicationFactor, t.DefaultConsistency, t.ConflictPolicy, t.Version, t.UpdatedAt.Format(time.RFC3339), fmtTTL(t.DefaultTTLMs),
			formatGrace(t.TombstoneGraceMS))
	}
	return w.Flush()
}

func runTenant(args []string) error {
	const verbs = "create|get|list|update|delete"
	verb, err := verbArg(args, "tenant", verbs, "[TENANT]")
	if err != nil {
		return err
	}
	fs := newFlags("tenant "+verb, "TENANT", "Manage tenants through the admin API (kv.v1.admin.tenant.*).")
	var a adminFlags
	a.register(fs)
	rf := fs.Int("rf", 0, "replication factor 1..7 (create default 3)")
	level := fs.String("consistency", "", "default consistency: one, quorum or all (create default quorum)")
	policy := fs.String("policy", "", "conflict policy: lww (create default lww)")
	ver := fs.Int64("version", 0, "update: the version you read (default: read it now)")
	force := fs.Bool("force", false, "delete even if the tenant still holds data")
	var defTTL ttlValue
	fs.Var(&defTTL, "default-ttl", "time to live of values put without --ttl (10m, 2h, 7d; at most 10 years); 0 = they never expire (create default 0)")
	grace := fs.String("tombstone-grace", "", "how long deleted keys' tombstones are kept before they are reaped, 1s..10 years, as 7d, 36h or 90m (create default 7d)")
	pos, err := parse(fs, args[1:])
	if err != nil {
		return err
	}
	spec := client.TenantSpec{}
	if *grace != "" {
		d, err := parseGrace(*grace)
		if err != nil {
			return usagef("--tombstone-grace: %v", err)
		}
		spec.TombstoneGrace = &d
	}
	if *rf != 0 {
		spec.ReplicationFactor = rf
	}
	if *level != "" {
		spec.DefaultConsistency = level
	}
	if *policy != "" {
		spec.ConflictPolicy = policy
	}
	if defTTL.set {
		spec.DefaultTTL = &defTTL.d
	}
	needID := func() (string, error) {
		if len(pos) != 1 {
			return "", usagef("tenant %s takes exactly one TENANT", verb)
		}
		return pos[0], nil
	}
	ad, nc, err := a.admin()
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx := context.Background()
	switch verb {
	case "list":
		ts, err := ad.ListTenants(ctx)
		if err != nil {
			return err
		}
		if a.json {
			return printJSON(subjects.TenantList{Tenants: ts})
		}
		return printTenants(false, ts...)
	case "create", "get", "update", "delete":
		id, err := needID()
		if err != nil {
			return err
		}
		var t *subjects.Tenant
		switch verb {
		case "create":
			t, err = ad.CreateTenant(ctx, id, spec)
		case "get":
			t, err = ad.GetTenant(ctx, id)
		case "update":
			v := *ver
			if v == 0 {
				cur, gerr := ad.GetTenant(ctx, id)
				if gerr != nil {
					return gerr
				}
				v = cur.Version
			}
			t, err = ad.UpdateTenant(ctx, id, v, spec)
		case "delete":
			if err := ad.DeleteTenant(ctx, id, *force); err != nil {
				return err
			}
			fmt.Printf("deleted tenant %s\n", id)
			return nil
		}
		if err != nil {
			return err
		}
		return printTenants(a.json, *t)
	}
	return usagef("unknown tenant verb %q: use %s", verb, verbs)
}

// verbArg returns the verb that starts the arguments of `quorumkv cmd`
// (one of verbs, which the caller checks), or the usage of cmd, whose
// operands follow its flags.
func verbArg(args []string, cmd, verbs, operands string) (string, error) {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		return "", usagef("usage: quorumkv %s %s [flags] %s", cmd, verbs, operands)
	}
	return args[0], nil
}

// replicas is "1 replica" or "N replicas".
func replicas(n int) string {
	if n == 1 {
		return "1 replica"
	}
	return fmt.Sprintf("%d replicas", n)
}

// parseGrace reads a tombstone grace: a whole number of days ("7d") or a
// Go duration ("36h", "90m", "1h30m"). The range is the coordinators'
// to check (400 outside 1s..10 years).
func parseGrace(s string) (time.Duration, error) {
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseInt(days, 10, 64)
		if err != nil || n < 0 || n > 100*365 {
			return 0, fmt.Errorf("%q is not a number of days (like 7d)", s)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q is neither days (7d) nor a duration (36h, 90m)", s)
	}
	return d, nil
}

// formatGrace prints a grace in milliseconds as days when whole, else as
// a Go duration.
func formatGrace(ms int64) string {
	d := time.Duration(ms) * time.Millisecond
	if day := 24 * time.Hour; d >= day && d%day == 0 {
		return fmt.Sprintf("%dd", d/day)
	}
	return d.String()
}
