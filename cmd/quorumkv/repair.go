package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/quorumkv/quorumkv/metrics"
	"github.com/quorumkv/quorumkv/repair"
)

// registerRepairFlags binds the stream, consumer and worker flags to cfg;
// each flag's default is cfg's value (repair.DefaultConfig), and
// repair.NewWorker checks what they hold. The stream and consumer settings
// must agree between every process that creates the repair streams.
func registerRepairFlags(fs *flag.FlagSet, cfg *repair.Config) {
	fs.IntVar(&cfg.Replicas, "replicas", cfg.Replicas, "replicas of KV_REPAIR and KV_REPAIR_DEAD (0 = 1 outside a cluster, else up to 3)")
	fs.DurationVar(&cfg.Duplicates, "dedup-window", cfg.Duplicates, "de-duplication window of KV_REPAIR (Nats-Msg-Id)")
	fs.DurationVar(&cfg.AckWait, "ack-wait", cfg.AckWait, "how long a worker may hold a message before it is redelivered")
	fs.IntVar(&cfg.MaxDeliver, "max-deliver", cfg.MaxDeliver, "deliveries before a message moves to KV_REPAIR_DEAD")
	fs.IntVar(&cfg.MaxAckPending, "max-ack-pending", cfg.MaxAckPending, "messages delivered and not yet acked, across all workers")
	fs.DurationVar(&cfg.DeadMaxAge, "dead-max-age", cfg.DeadMaxAge, "how long dead letters are kept")
	fs.DurationVar(&cfg.Backoff, "backoff", cfg.Backoff, "retry delay after the first failed delivery; doubles per delivery")
	fs.DurationVar(&cfg.MaxBackoff, "max-backoff", cfg.MaxBackoff, "retry delay at most")
	fs.IntVar(&cfg.Batch, "batch", cfg.Batch, "messages fetched at once")
	fs.DurationVar(&cfg.NodeTimeout, "node-timeout", cfg.NodeTimeout, "how long a write to one storage node may take")
	fs.StringVar(&cfg.Name, "name", cfg.Name, "this worker's name in logs and stats (default host-pid)")
}

func runRepair(args []string) error {
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		switch args[0] {
		case "status":
			return runRepairStatus(args[1:])
		case "dead":
			return runRepairDead(args[1:])
		}
		return usagef("unknown repair verb %q: use status or dead (or no verb to run a worker)", args[0])
	}
	fs := newFlags("repair", "", "Run a repair worker: pull repair requests (read repair, hints) from the durable consumer\n"+
		"repair-workers on stream KV_REPAIR, merge each into its target storage nodes, ack once all confirmed,\n"+
		"retry with back-off, and move what exhausts its deliveries to KV_REPAIR_DEAD. Run as many as you like.\n"+
		"Also: `quorumkv repair status`, `quorumkv repair dead list|replay`. See docs/REPAIR.md.")
	var nf natsFlags
	nf.register(fs)
	cfg := repair.DefaultConfig()
	registerRepairFlags(fs, &cfg)
	metricsAddr := fs.String("metrics", "", "serve Prometheus metrics on HOST:PORT at /metrics (empty: off)")
	var lf logFlags
	lf.register(fs)
	if _, err := parse(fs, args); err != nil {
		return err
	}
	r, err := startRole("quorumkv-repair", &nf, &lf)
	if err != nil {
		return err
	}
	defer r.close()
	ctx, log, nc := r.ctx, r.log, r.nc
	cfg.Logger = log
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	w, err := repair.NewWorker(sctx, nc, cfg)
	if err != nil {
		return err
	}
	stopMetrics, err := serveMetrics(ctx, *metricsAddr, log, func(reg prometheus.Registerer) {
		metrics.NewRepairWorker(reg, func() metrics.RepairWorkerStats {
			s := w.Stats()
			return metrics.RepairWorkerStats{Applied: s.Applied, Failed: s.Failed, DeadLettered: s.DeadLettered, NodeWrites: s.NodeWrites, SkewRejected: s.SkewRejected, Backlog: repairBacklog(nc)}
		})
	})
	if err != nil {
		w.Stop()
		return err
	}
	defer stopMetrics()
	log.Info("repair worker ready", "nats", nc.ConnectedUrlRedacted())
	<-ctx.Done()
	log.Info("stopping: finishing the batch in hand")
	w.Stop()
	return nil
}

// repairBacklog is the consumer's pending plus unacknowledged messages, or
// -1 when JetStream does not answer within a second.
func repairBacklog(nc *nats.Conn) int64 {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	js, err := jetstream.New(nc)
	if err != nil {
		return -1
	}
	cons, err := js.Consumer(ctx, repair.StreamName, repair.ConsumerName)
	if err != nil {
		return -1
	}
	ci, err := cons.Info(ctx)
	if err != nil {
		return -1
	}
	return int64(ci.NumPending) + int64(ci.NumAckPending)
}

func runRepairStatus(args []string) error {
	fs := newFlags("repair status", "", "Show the repair backlog (KV_REPAIR consumer), the dead letters, and the counters of the running workers.")
	var nf natsFlags
	nf.register(fs)
	asJSON := fs.Bool("json", false, "print the status as JSON")
	wait := fs.Duration("wait", 500*time.Millisecond, "how long to collect answers from workers")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	nc, err := nf.connect("quorumkv-cli", nil)
	if err != nil {
		return err
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := repair.ReadStatus(ctx, nc, *wait)
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(st)
	}
	fmt.Printf("backlog:      %d (pending %d, delivered and not yet acked %d, of which redelivered %d)\n", st.Backlog, st.Pending, st.AckPending, st.Redelivered)
	fmt.Printf("dead letters: %d (quorumkv repair dead list)\n", st.Dead)
	fmt.Printf("workers:      %d answering; since their start: applied %d, failed deliveries %d, dead-lettered %d\n",
		len(st.Workers), st.Applied, st.Failed, st.DeadLettered)
	if len(st.Workers) == 0 {
		return nil
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "\nWORKER\tUP\tAPPLIED\tFAILED\tDEAD\tNODE WRITES\tBATCHES")
	for _, s := range st.Workers {
		fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%d\t%d\t%d\n", s.Name, time.Since(s.Started).Round(time.Second), s.Applied, s.Failed, s.DeadLettered, s.NodeWrites, s.Batches)
	}
	return w.Flush()
}

func runRepairDead(args []string) error {
	const verbs = "list|replay"
	verb, err := verbArg(args, "repair dead", verbs, "[SEQ...]")
	if err != nil {
		return err
	}
	fs := newFlags("repair dead "+verb, "[SEQ...]", "List the dead letters of KV_REPAIR_DEAD, or replay some (SEQ...) or all (--all):\n"+
		"a replayed request goes back to KV_REPAIR for another round of deliveries and leaves the dead letters.")
	var nf natsFlags
	nf.register(fs)
	asJSON := fs.Bool("json", false, "list: print JSON")
	from := fs.Uint64("from", 0, "list: start at this sequence")
	limit := fs.Int("limit", 100, "list: at most this many")
	all := fs.Bool("all", false, "replay: every dead letter")
	pos, err := parse(fs, args[1:])
	if err != nil {
		return err
	}
	nc, err := nf.connect("quorumkv-cli", nil)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	switch verb {
	case "list":
		if len(pos) > 0 {
			return usagef("repair dead list takes no arguments")
		}
		dead, err := repair.ListDead(ctx, js, *from, *limit)
		if err != nil {
			return err
		}
		if *asJSON {
			return printJSON(dead)
		}
		w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(w, "SEQ\tDEAD SINCE\tTENANT\tKEY\tTARGETS\tREASON\tDELIVERIES\tERROR")
		for _, d := range dead {
			tenant, key, targets, reason := "?", "?", "?", "?"
			if r := d.Request; r != nil {
				tenant, key, targets, reason = r.Tenant, strconv.Quote(r.Key), strings.Join(r.Targets, ","), r.Reason
			}
			errText := d.Error
			if d.DecodeErr != "" {
				errText = d.DecodeErr
			}
			fmt.Fprintf(w, "%d\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", d.Seq, d.Time.Format(time.RFC3339), tenant, key, targets, reason, d.Deliveries, errText)
		}
		return w.Flush()
	case "replay":
		var seqs []uint64
		switch {
		case *all && len(pos) > 0:
			return usagef("give SEQ... or --all, not both")
		case *all:
			for {
				dead, err := repair.ListDead(ctx, js, 0, 1000)
				if err != nil {
					return err
				}
				if len(dead) == 0 {
					break
				}
				for _, d := range dead {
					seqs = append(seqs, d.Seq)
				}
				if err := replay(ctx, js, seqs); err != nil {
					return err
				}
				seqs = seqs[:0]
			}
			return nil
		case len(pos) == 0:
			return usagef("repair dead replay needs SEQ... or --all")
		}
		for _, p := range pos {
			n, err := strconv.ParseUint(p, 10, 64)
			if err != nil {
				return usagef("%q is not a sequence number", p)
			}
			seqs = append(seqs, n)
		}
		return replay(ctx, js, seqs)
	}
	return usagef("unknown repair dead verb %q: use %s", verb, verbs)
}

func replay(ctx context.Context, js jetstream.JetStream, seqs []uint64) error {
	for _, seq := range seqs {
		d, err := repair.ReplayDead(ctx, js, seq)
		if err != nil {
			return err
		}
		fmt.Printf("replayed %d: tenant %s key %q to %s\n", seq, d.Request.Tenant, d.Request.Key, strings.Join(d.Request.Targets, ","))
	}
	return nil
}
