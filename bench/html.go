package bench

import (
	"fmt"
	"html"
	"io"
	"math"
	"slices"
	"strings"
	"time"
)

// Colours of the systems in every chart.
var systemColour = map[string]string{
	SysNATS:     "#8b95a5",
	SysJetKV:    "#2f7ed8",
	SysQuorumKV: "#e8590c",
}

// WriteHTML writes a self-contained report: no scripts, no external
// resources, charts as inline SVG.
func (r *Report) WriteHTML(w io.Writer) error {
	var b strings.Builder
	b.WriteString(`<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>quorumkv bench</title><style>
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1200px;padding:24px;color:#1d2430;background:#fbfcfd}
h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;margin:36px 0 8px;border-bottom:1px solid #dde3ea;padding-bottom:4px}h3{font-size:16px;margin:20px 0 6px}
.sub{color:#5b6675}.grid{display:flex;flex-wrap:wrap;gap:12px}.card{background:#fff;border:1px solid #e3e8ee;border-radius:8px;padding:6px}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}td,th{padding:3px 9px;text-align:right;border-bottom:1px solid #eef1f4}th{background:#f3f6f9;position:sticky;top:0}
td.l,th.l{text-align:left}.nw{white-space:nowrap}.ok{color:#13795b;font-weight:600}.bad{color:#c92a2a;font-weight:600}.na{color:#8b95a5}
.legend span{display:inline-block;margin-right:18px}.legend i{display:inline-block;width:14px;height:4px;margin-right:6px;vertical-align:middle}
.kpi{display:flex;gap:14px;flex-wrap:wrap;margin:14px 0}.kpi div{background:#fff;border:1px solid #e3e8ee;border-radius:8px;padding:10px 14px;min-width:210px}
.kpi b{display:block;font-size:24px}.heat td{min-width:58px}details{margin:10px 0}summary{cursor:pointer;color:#2f5fa7}
code{background:#eef1f4;padding:1px 4px;border-radius:3px}
</style></head><body>`)
	m := r.Machine
	fmt.Fprintf(&b, `<h1>quorumkv against JetStream KV and raw NATS</h1><div class="sub">%s run of %s, %s · %d CPUs (%s), %s, %s · one process, embedded 3-server NATS cluster · %s records × %d bytes · %gs per cell after %gs warm-up</div>`,
		esc(r.Config.Mode), r.Started.Format(time.DateTime), r.Elapsed.Round(time.Second), m.CPUs, esc(m.CPUModel), esc(m.Memory), esc(m.Go),
		count(r.Config.Records), r.Config.ValueSize, r.Config.DurationSeconds, r.Config.WarmupSeconds)
	b.WriteString(legend(r.Config.Systems))

	r.htmlHeadline(&b)
	r.htmlTargets(&b)
	for _, d := range r.Config.Durabilities {
		dur, _ := durabilityByName(d)
		fmt.Fprintf(&b, `<h2>Durability “%s”</h2><div class="sub">%s</div>`, esc(d), esc(dur.Label))
		r.htmlThroughput(&b, d)
		r.htmlLatency(&b, d)
		r.htmlHeat(&b, d)
	}
	r.htmlScale(&b)
	r.htmlMembership(&b)
	r.htmlMethod(&b)
	r.htmlData(&b)
	b.WriteString("</body></html>\n")
	if _, err := io.WriteString(w, b.String()); err != nil {
		return fmt.Errorf("write HTML: %w", err)
	}
	return nil
}

func esc(s string) string { return html.EscapeString(s) }

func legend(systems []string) string {
	var b strings.Builder
	b.WriteString(`<p class="legend">`)
	for _, s := range systems {
		fmt.Fprintf(&b, `<span><i style="background:%s"></i>%s</span>`, systemColour[s], esc(s))
	}
	b.WriteString(`</p>`)
	return b.String()
}

// htmlHeadline shows the ratios at 64 clients, uniform, as big numbers.
func (r *Report) htmlHeadline(b *strings.Builder) {
	b.WriteString(`<div class="kpi">`)
	for _, d := range r.Config.Durabilities {
		for _, wl := range []struct{ name, label string }{{"write-only", "put"}, {"ycsb-c", "get"}} {
			q := r.find(SysQuorumKV, wl.name, DistUniform, d, 64)
			if q == nil {
				continue
			}
			vsJS, vsNATS := r.ratios(q)
			cls := "bad"
			if vsJS >= 1 {
				cls = "ok"
			}
			fmt.Fprintf(b, `<div><span class="sub">%s · %s · 64 clients</span><b class="%s">%s vs JetStream KV</b>%.0f ops/s · %s of raw NATS</div>`,
				esc(wl.label), esc(d), cls, fmtRatio(vsJS), q.OpsPerSec, fmtRatio(vsNATS))
		}
	}
	b.WriteString(`</div>`)
}

func (r *Report) htmlTargets(b *strings.Builder) {
	if len(r.Targets) == 0 {
		return
	}
	b.WriteString(`<h2>Targets</h2><table><tr><th class="l">target</th><th>goal</th><th>measured</th><th class="l">result</th><th class="l">detail</th></tr>`)
	for _, t := range r.Targets {
		res, cls, val := "met", "ok", t.value()
		switch {
		case t.Missing:
			res, cls = "not measured", "na"
		case !t.Met:
			res, cls = "missed", "bad"
		}
		fmt.Fprintf(b, `<tr><td class="l">%s</td><td class="nw">%s</td><td>%s</td><td class="l %s">%s</td><td class="l sub">%s</td></tr>`,
			esc(t.Name), esc(t.Goal), val, cls, res, esc(t.Detail))
	}
	b.WriteString(`</table>`)
}

// htmlThroughput draws ops/s against clients, one chart per workload and
// distribution.
func (r *Report) htmlThroughput(b *strings.Builder, d string) {
	b.WriteString(`<h3>Throughput against concurrency</h3><div class="grid">`)
	for _, wl := range r.Config.Workloads {
		for _, dist := range r.Config.Distributions {
			var ss []series
			for _, s := range r.Config.Systems {
				se := series{name: s, colour: systemColour[s]}
				for _, c := range r.Config.Concurrency {
					v := math.NaN()
					if x := r.find(s, wl, dist, d, c); x != nil {
						v = x.OpsPerSec
					}
					se.ys = append(se.ys, v)
				}
				ss = append(ss, se)
			}
			w, _ := workloadByName(wl)
			b.WriteString(`<div class="card">`)
			b.WriteString(lineChart(w.Label+" · "+dist, r.Config.Concurrency, ss, "ops/s"))
			b.WriteString(`</div>`)
		}
	}
	b.WriteString(`</div>`)
}

// htmlLatency draws p50/p99/p99.9 per system at one and at 64 clients (or
// the concurrencies measured), uniform keys.
func (r *Report) htmlLatency(b *strings.Builder, d string) {
	concs := []int{}
	for _, c := range []int{1, 64} {
		if slices.Contains(r.Config.Concurrency, c) {
			concs = append(concs, c)
		}
	}
	if len(concs) == 0 {
		concs = r.Config.Concurrency[:1]
	}
	b.WriteString(`<h3>Latency percentiles (uniform keys; bars p50, p99, p99.9, log scale)</h3><div class="grid">`)
	for _, c := range concs {
		for _, wl := range r.Config.Workloads {
			var groups []barGroup
			for _, s := range r.Config.Systems {
				x := r.find(s, wl, DistUniform, d, c)
				if x == nil {
					continue
				}
				groups = append(groups, barGroup{name: s, colour: systemColour[s], vals: []float64{x.P50US, x.P99US, x.P999US}})
			}
			if len(groups) == 0 {
				continue
			}
			w, _ := workloadByName(wl)
			b.WriteString(`<div class="card">`)
			b.WriteString(barChart(fmt.Sprintf("%s · %d client(s)", w.Label, c), groups, []string{"p50", "p99", "p99.9"}))
			b.WriteString(`</div>`)
		}
	}
	b.WriteString(`</div>`)
}

// htmlHeat is a table of quorumkv/jetstream-kv ratios, coloured.
func (r *Report) htmlHeat(b *strings.Builder, d string) {
	if !slices.Contains(r.Config.Systems, SysQuorumKV) || !slices.Contains(r.Config.Systems, SysJetKV) {
		return
	}
	b.WriteString(`<h3>quorumkv ÷ JetStream KV throughput</h3><table class="heat"><tr><th class="l">workload</th><th class="l">keys</th>`)
	for _, c := range r.Config.Concurrency {
		fmt.Fprintf(b, `<th>%d clients</th>`, c)
	}
	b.WriteString(`</tr>`)
	for _, wl := range r.Config.Workloads {
		for _, dist := range r.Config.Distributions {
			fmt.Fprintf(b, `<tr><td class="l">%s</td><td class="l">%s</td>`, esc(wl), esc(dist))
			for _, c := range r.Config.Concurrency {
				q := r.find(SysQuorumKV, wl, dist, d, c)
				if q == nil {
					b.WriteString(`<td class="na">-</td>`)
					continue
				}
				vs, _ := r.ratios(q)
				fmt.Fprintf(b, `<td style="background:%s">%s</td>`, heatColour(vs), fmtRatio(vs))
			}
			b.WriteString(`</tr>`)
		}
	}
	b.WriteString(`</table>`)
}

// heatColour is green above 1, red below, white at 1.
func heatColour(v float64) string {
	if v <= 0 {
		return "#fff"
	}
	t := math.Max(-1, math.Min(1, math.Log2(v))) // ±1 at 2× and 0.5×
	if t >= 0 {
		return fmt.Sprintf("rgba(19,121,91,%.2f)", 0.12+0.45*t)
	}
	return fmt.Sprintf("rgba(201,42,42,%.2f)", 0.12+0.45*-t)
}

func (r *Report) htmlScale(b *strings.Builder) {
	s := r.Scale
	if s == nil {
		return
	}
	fmt.Fprintf(b, `<h2>Scale: %s records</h2><p>A fresh quorumkv (durability %s) preloaded with %s records, measured at %d clients with uniform keys, against the same cells at %s records.</p>`,
		count(s.Records), esc(s.Durability), count(s.Records), s.Concurrency, count(s.BaseRecords))
	b.WriteString(`<table><tr><th class="l">workload</th><th>ops/s</th><th>p50</th><th>p99</th><th>p99.9</th><th>ops/s at base</th><th>ratio</th></tr>`)
	for _, x := range s.Rows {
		base := r.find(SysQuorumKV, x.Workload, DistUniform, s.Durability, s.Concurrency)
		bo, ratio := "-", "-"
		if base != nil && base.OpsPerSec > 0 {
			bo, ratio = fmt.Sprintf("%.0f", base.OpsPerSec), fmt.Sprintf("%.2f×", x.OpsPerSec/base.OpsPerSec)
		}
		fmt.Fprintf(b, `<tr><td class="l">%s</td><td>%.0f</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>`,
			esc(x.Workload), x.OpsPerSec, fmtUS(x.P50US), fmtUS(x.P99US), fmtUS(x.P999US), bo, ratio)
	}
	fmt.Fprintf(b, `</table><p>Storage: %s in the three node data directories (du, WAL included) = <b>%.0f bytes per key per replica</b> for %d-byte values. Peak RSS: <b>%s</b> — getrusage ru_maxrss of the single process that runs all three nats-servers, JetStream, the storage nodes, the coordinator(s) and the clients; there is no per-role figure.</p>`,
		bytesIEC(s.StorageBytes), s.BytesPerKeyPerReplica, r.Config.ValueSize, bytesIEC(s.PeakRSSBytes))
}

// htmlMembership shows the membership cell: the foreground before and
// during the transfer side by side, and the transfer.
func (r *Report) htmlMembership(b *strings.Builder) {
	m := r.Membership
	if m == nil {
		return
	}
	x := &m.Transfer
	fmt.Fprintf(b, `<h2>Membership: adding a 4th node under load</h2><p>A fresh quorumkv (durability %s) preloaded with %s records of %d bytes on 3 storage nodes, RF 3, runs %s with %d closed-loop clients, uniform keys. After a window without a transfer, %s starts, registers (joining), receives its partitions and becomes active while the load goes on; “during” runs from its registration to its status active. Storage <code>--transfer-rate</code> %s.</p>`,
		esc(m.Durability), count(m.Records), m.ValueSize, esc(m.Workload), m.Concurrency, esc(x.Node), esc(fmtRateLimit(x.RateLimit)))
	b.WriteString(`<table><tr><th class="l">phase</th><th>seconds</th><th>ops/s</th><th>p50</th><th>p99</th><th>p99.9</th><th>cpu s/1k</th><th>errors</th><th>vs before</th></tr>`)
	for _, row := range []struct {
		name string
		x    *Row
	}{{"before (3 nodes)", &m.Before}, {"during the transfer", &m.During}} {
		rel := "-"
		if row.x == &m.During && m.Before.OpsPerSec > 0 {
			rel = fmt.Sprintf("%.2f×", m.During.OpsPerSec/m.Before.OpsPerSec)
		}
		fmt.Fprintf(b, `<tr><td class="l">%s</td><td>%.1f</td><td>%.0f</td><td>%s</td><td>%s</td><td>%s</td><td>%.3f</td><td>%d</td><td>%s</td></tr>`,
			esc(row.name), row.x.Seconds, row.x.OpsPerSec, fmtUS(row.x.P50US), fmtUS(row.x.P99US), fmtUS(row.x.P999US), row.x.CPUSecPer1kOps, row.x.Errors, rel)
	}
	fmt.Fprintf(b, `</table><p>Transfer into %s (its TransferStatus): %s, %d keys, %d partitions in %.1f s from its first to its last byte = <b>%.1f MB/s</b>, %.0f keys/s (highest 10-second rate seen %.1f MB/s). Active <b>%.1f s</b> after registering.</p>`,
		esc(x.Node), bytesIEC(x.Bytes), x.Keys, x.PartitionsTotal, x.Seconds, x.MBPerSec, x.KeysPerSec, x.PeakRateBytes/1e6, x.ActiveSeconds)
}

func (r *Report) htmlMethod(b *strings.Builder) {
	c := r.Config
	b.WriteString(`<h2>Method</h2><ul>`)
	fmt.Fprintf(b, `<li>One process: three nats-servers clustered over loopback routes, each with JetStream (file store); %d client connections per server shared round-robin by the closed-loop clients.</li>`, c.ConnsPerServer)
	fmt.Fprintf(b, `<li><b>quorumkv</b>: RF 3, consistency quorum, one storage node (Pebble) per server, %d coordinator(s), metadata and idempotency stores on JetStream KV R3. <b>jetstream-kv</b>: one bucket, R3, file storage, history 1, Put and Get. <b>nats-reqrep</b>: an echo queue group with a responder on every server (the floor: one request, one reply, no storage).</li>`, c.Coordinators)
	b.WriteString(`<li>Workloads in YCSB core style over preloaded records: write-only, C (read-only), B (95/5), A (50/50); keys uniform or scrambled zipfian (YCSB's ScrambledZipfianGenerator, θ 0.99).</li>`)
	b.WriteString(`<li>Each cell: closed-loop clients, warm-up, then a fixed measured window; operations that start and end in the window count. Latencies in log-linear histograms (0.8% resolution). CPU per 1000 ops is the whole process's user+system time (getrusage) over the window.</li>`)
	b.WriteString(`<li>Durability pairs: “async” = quorumkv <code>--fsync=false</code> against JetStream's default (fsync every 2 minutes); “fsync” = quorumkv fsync per group-committed batch against JetStream <code>sync_interval: always</code>. Raw NATS has no storage and is measured once (durability “none”, key distribution irrelevant).</li>`)
	b.WriteString(`<li>Reproduce with <code>go run ./cmd/quorumkv bench --html bench.html --json bench.json</code>.</li></ul>`)
}

func (r *Report) htmlData(b *strings.Builder) {
	b.WriteString(`<details><summary>All rows</summary><table><tr><th class="l">system</th><th class="l">workload</th><th class="l">keys</th><th class="l">durability</th><th>clients</th><th>ops/s</th><th>p50</th><th>p99</th><th>p99.9</th><th>cpu s/1k</th><th>×js</th><th>×nats</th><th>errors</th></tr>`)
	for i := range r.Rows {
		x := &r.Rows[i]
		vsJS, vsNATS := r.ratios(x)
		fmt.Fprintf(b, `<tr><td class="l">%s</td><td class="l">%s</td><td class="l">%s</td><td class="l">%s</td><td>%d</td><td>%.0f</td><td>%s</td><td>%s</td><td>%s</td><td>%.3f</td><td>%s</td><td>%s</td><td>%d</td></tr>`,
			esc(x.System), esc(x.Workload), esc(x.Distribution), esc(x.Durability), x.Concurrency, x.OpsPerSec,
			fmtUS(x.P50US), fmtUS(x.P99US), fmtUS(x.P999US), x.CPUSecPer1kOps, fmtRatio(vsJS), fmtRatio(vsNATS), x.Errors)
	}
	b.WriteString(`</table></details>`)
}

// series is one line of a line chart; NaN marks a missing point.
type series struct {
	name, colour string
	ys           []float64
}

// Chart geometry.
const (
	chartW, chartH              = 370, 240
	padL, padR, padTop, padBott = 58, 12, 30, 40
)

// lineChart draws series against categorical x values (equally spaced).
func lineChart(title string, xs []int, ss []series, yLabel string) string {
	var b strings.Builder
	ymax := 0.0
	for _, s := range ss {
		for _, y := range s.ys {
			if !math.IsNaN(y) {
				ymax = math.Max(ymax, y)
			}
		}
	}
	top, step := niceScale(ymax)
	pw, ph := float64(chartW-padL-padR), float64(chartH-padTop-padBott)
	xAt := func(i int) float64 {
		if len(xs) == 1 {
			return padL + pw/2
		}
		return padL + pw*float64(i)/float64(len(xs)-1)
	}
	yAt := func(v float64) float64 { return padTop + ph*(1-v/top) }
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-size="11" font-family="system-ui,sans-serif">`, chartW, chartH, chartW, chartH)
	fmt.Fprintf(&b, `<text x="%d" y="16" font-size="12.5" font-weight="600">%s</text>`, padL-50, esc(title))
	for v := 0.0; v <= top+step/2; v += step {
		y := yAt(v)
		fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#e6eaef"/><text x="%d" y="%.1f" text-anchor="end" fill="#5b6675">%s</text>`,
			padL, chartW-padR, y, y, padL-6, y+4, shortNum(v))
	}
	for i, x := range xs {
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle" fill="#5b6675">%d</text>`, xAt(i), chartH-padBott+16, x)
	}
	fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle" fill="#5b6675">clients</text>`, padL+pw/2, chartH-6)
	fmt.Fprintf(&b, `<text x="12" y="%.1f" transform="rotate(-90 12 %.1f)" text-anchor="middle" fill="#5b6675">%s</text>`, padTop+ph/2, padTop+ph/2, esc(yLabel))
	// Throughput grows with clients, so the top left is free for a legend.
	for i, s := range ss {
		fmt.Fprintf(&b, `<text x="%d" y="%d" fill="%s" font-weight="600">%s</text>`, padL+6, padTop+12+13*i, s.colour, esc(s.name))
	}
	for _, s := range ss {
		var pts []string
		for i, y := range s.ys {
			if math.IsNaN(y) {
				continue
			}
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", xAt(i), yAt(y)))
		}
		if len(pts) == 0 {
			continue
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="2.4" points="%s"/>`, s.colour, strings.Join(pts, " "))
		for i, y := range s.ys {
			if !math.IsNaN(y) {
				fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="3.2" fill="%s"><title>%s, %d clients: %.0f ops/s</title></circle>`, xAt(i), yAt(y), s.colour, esc(s.name), xs[i], y)
			}
		}
	}
	b.WriteString(`</svg>`)
	return b.String()
}

// barGroup is one system's bars in a bar chart.
type barGroup struct {
	name, colour string
	vals         []float64
}

// barChart draws groups of bars on a log scale (microseconds).
func barChart(title string, groups []barGroup, barNames []string) string {
	var b strings.Builder
	lo, hi := math.Inf(1), 0.0
	for _, g := range groups {
		for _, v := range g.vals {
			if v > 0 {
				lo, hi = math.Min(lo, v), math.Max(hi, v)
			}
		}
	}
	if hi == 0 {
		lo, hi = 1, 10
	}
	dLo, dHi := math.Floor(math.Log10(lo)), math.Ceil(math.Log10(hi))
	if dHi == dLo {
		dHi++
	}
	pw, ph := float64(chartW-padL-padR), float64(chartH-padTop-padBott)
	yAt := func(v float64) float64 { return padTop + ph*(1-(math.Log10(v)-dLo)/(dHi-dLo)) }
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-size="11" font-family="system-ui,sans-serif">`, chartW, chartH, chartW, chartH)
	fmt.Fprintf(&b, `<text x="%d" y="16" font-size="12.5" font-weight="600">%s</text>`, padL-50, esc(title))
	for e := dLo; e <= dHi; e++ {
		y := yAt(math.Pow(10, e))
		fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#e6eaef"/><text x="%d" y="%.1f" text-anchor="end" fill="#5b6675">%s</text>`,
			padL, chartW-padR, y, y, padL-6, y+4, fmtUS(math.Pow(10, e)))
	}
	gw := pw / float64(len(groups))
	bw := gw * 0.8 / float64(len(barNames))
	for gi, g := range groups {
		x0 := padL + gw*float64(gi) + gw*0.1
		for i, v := range g.vals {
			if v <= 0 {
				continue
			}
			y := yAt(v)
			opacity := 1 - 0.28*float64(i)
			fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s" fill-opacity="%.2f"><title>%s %s: %s</title></rect>`,
				x0+bw*float64(i), y, bw-2, padTop+ph-y, g.colour, opacity, esc(g.name), barNames[i], fmtUS(v))
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle" font-size="9" fill="#39424e">%s</text>`, x0+bw*float64(i)+bw/2-1, y-3, fmtUS(v))
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle" fill="#39424e">%s</text>`, x0+gw*0.4, chartH-padBott+16, esc(g.name))
	}
	fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle" fill="#5b6675">bars: %s</text>`, padL+pw/2, chartH-6, strings.Join(barNames, ", "))
	b.WriteString(`</svg>`)
	return b.String()
}

// niceScale returns an axis top ≥ v and a tick step giving 4-6 ticks.
func niceScale(v float64) (top, step float64) {
	if v <= 0 {
		return 1, 0.25
	}
	raw := v / 5
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 2.5, 5, 10} {
		if step = m * mag; raw <= step {
			break
		}
	}
	return math.Ceil(v/step) * step, step
}

// shortNum formats axis values: 12k, 1.5M.
func shortNum(v float64) string {
	switch {
	case v >= 1e6:
		return strings.TrimSuffix(fmt.Sprintf("%.1f", v/1e6), ".0") + "M"
	case v >= 1e3:
		return strings.TrimSuffix(fmt.Sprintf("%.1f", v/1e3), ".0") + "k"
	}
	return fmt.Sprintf("%.0f", v)
}
