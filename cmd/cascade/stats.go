package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/cascade-gateway/cascade/costing"
)

func init() {
	register("stats", "requests, cost, savings, energy and latency recorded in Redis", runStats)
}

// statsOut is where cascade stats prints.
var statsOut io.Writer = os.Stdout

func runStats(args []string) error {
	fs := flag.NewFlagSet("stats", flag.ContinueOnError)
	url := fs.String("redis", "redis://127.0.0.1:6379/0", "Redis URL the gateway records to (redis.url)")
	prefix := fs.String("prefix", "cascade:", "key prefix (redis.prefix)")
	window := fs.Duration("window", time.Hour, "how far back, at most 720h; up to 6h minute by minute, beyond hour by hour")
	by := fs.String("by", "tier", "group by tier, model or key")
	asJSON := fs.Bool("json", false, "print the JSON that GET /admin/stats serves (without recorder and routing)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	opt, err := redis.ParseURL(*url)
	if err != nil {
		return fmt.Errorf("--redis: %w", err)
	}
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rep, err := costing.Query(ctx, rdb, *prefix, *window, *by, time.Now())
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(statsOut)
		enc.SetIndent("", "  ")
		return enc.Encode(rep)
	}
	printReport(statsOut, rep, *window)
	return nil
}

// printReport writes rep as a table, one row per group and a total.
func printReport(w io.Writer, rep *costing.Report, window time.Duration) {
	fmt.Fprintf(w, "last %s (%s to %s) by %s\n\n", rep.Window, rep.From, rep.To, rep.By)
	if rep.Total.Requests == 0 {
		fmt.Fprintln(w, "no requests recorded in this window")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, strings.ToUpper(rep.By)+"\tREQUESTS\tESCALATED\tFALLBACK UP\tDEGRADED\tERRORS\tCLIENT ERR\tCANCELLED\tJUDGED\tCONF ESC\tWASTED $\tIN TOKENS\tOUT TOKENS\tCOST $\tBASELINE $\tSAVED\tENERGY Wh\tOUT TOK/Wh\tP50 ms\tP95 ms\tP99 ms\tTTFT P50 ms\t")
	row := func(name string, g costing.Group) {
		fmt.Fprintf(tw, "%s\t%d\t%.1f%%\t%.1f%%\t%.1f%%\t%d\t%d\t%d\t%d\t%.1f%%\t%.6f\t%d\t%d\t%.6f\t%.6f\t%.1f%%\t%.3f\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t\n",
			name, g.Requests, 100*g.EscalationRate, 100*g.FallbackRate, 100*g.DegradedRate, g.Errors, g.ClientErrors, g.Cancelled, g.Cascaded, 100*g.ConfidenceRate, g.WastedUSD, g.InputTokens, g.OutputTokens,
			g.CostUSD, g.BaselineCostUSD, 100*g.SavingsRate, g.EnergyWh, g.TokensPerWh,
			g.LatencyMs.P50, g.LatencyMs.P95, g.LatencyMs.P99, g.TTFTMs.P50)
	}
	names := make([]string, 0, len(rep.Groups))
	for n := range rep.Groups {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		row(n, rep.Groups[n])
	}
	row("total", rep.Total)
	tw.Flush()
	unit := "minute"
	if window > 6*time.Hour {
		unit = "hour"
	}
	fmt.Fprintf(w, "\n%s buckets with traffic: %d; SAVED is against serving every request on the last tier\n", unit, len(rep.Series))
}
