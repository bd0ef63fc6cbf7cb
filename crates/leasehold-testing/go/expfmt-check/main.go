// Command expfmt-check reads a Prometheus text exposition (format 0.0.4) on stdin and checks it
// with Prometheus's own parser (github.com/prometheus/common/expfmt), plus what a scrape would
// reject after parsing: two samples with one label set, and a classic histogram whose buckets
// decrease or whose +Inf bucket differs from its _count.
//
// It exits 0 and prints one line per metric family when the exposition is valid; otherwise it
// prints the parser's error (or the failed check) on stderr and exits 1.
package main

import (
	"fmt"
	"math"
	"os"
	"sort"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

func main() {
	parser := expfmt.NewTextParser(model.LegacyValidation)
	families, err := parser.TextToMetricFamilies(os.Stdin)
	if err != nil {
		fmt.Fprintf(os.Stderr, "expfmt-check: %v\n", err)
		os.Exit(1)
	}
	names := make([]string, 0, len(families))
	for name := range families {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		mf := families[name]
		if err := check(mf); err != nil {
			fmt.Fprintf(os.Stderr, "expfmt-check: %s: %v\n", name, err)
			os.Exit(1)
		}
		fmt.Printf("%s %s %d\n", name, mf.GetType(), len(mf.GetMetric()))
	}
}

// check rejects what the parser accepts but a Prometheus server would not ingest.
func check(mf *dto.MetricFamily) error {
	seen := map[string]bool{}
	for _, m := range mf.GetMetric() {
		key := labels(m)
		if seen[key] {
			return fmt.Errorf("two samples with labels {%s}", key)
		}
		seen[key] = true
		if h := m.GetHistogram(); h != nil {
			prev := uint64(0)
			for _, b := range h.GetBucket() {
				if b.GetCumulativeCount() < prev {
					return fmt.Errorf("{%s}: bucket le=%g holds %d, below a lower bucket's %d", key, b.GetUpperBound(), b.GetCumulativeCount(), prev)
				}
				prev = b.GetCumulativeCount()
				if math.IsInf(b.GetUpperBound(), +1) && b.GetCumulativeCount() != h.GetSampleCount() {
					return fmt.Errorf("{%s}: +Inf bucket %d differs from _count %d", key, b.GetCumulativeCount(), h.GetSampleCount())
				}
			}
			if h.GetSampleCount() < prev {
				return fmt.Errorf("{%s}: _count %d below a bucket's %d", key, h.GetSampleCount(), prev)
			}
		}
	}
	return nil
}

func labels(m *dto.Metric) string {
	pairs := make([]string, 0, len(m.GetLabel()))
	for _, l := range m.GetLabel() {
		pairs = append(pairs, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
	}
	sort.Strings(pairs)
	return strings.Join(pairs, ",")
}
