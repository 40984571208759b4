// Command exprnames prints the metric names each PromQL expression of a
// Prometheus rule file (.yaml) or a Grafana dashboard (.json) selects, as
// JSON lines {"where", "expr", "metrics", "error"}, parsed by Prometheus's
// own PromQL parser. make tools builds it into ./bin; the monitoring test
// of cmd/sluice compares its output with real scrapes. It is a module of
// its own so that the Prometheus server's dependencies stay out of
// sluice's.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
	"sigs.k8s.io/yaml"
)

type found struct {
	Where   string   `json:"where"`
	Expr    string   `json:"expr"`
	Metrics []string `json:"metrics"`
	Error   string   `json:"error,omitempty"`
}

// grafanaVars stand for the dashboard's variables, so that its queries parse.
var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h")

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: exprnames FILE.yaml|FILE.json ...")
		os.Exit(2)
	}
	enc := json.NewEncoder(os.Stdout)
	for _, path := range os.Args[1:] {
		exprs, err := expressions(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, "exprnames:", err)
			os.Exit(1)
		}
		for _, f := range exprs {
			f.Metrics, err = names(grafanaVars.Replace(f.Expr))
			if err != nil {
				f.Error = err.Error()
			}
			enc.Encode(f) // stdout
		}
	}
}

// expressions finds every expr in a rule file or a dashboard.
func expressions(path string) ([]found, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var doc any
	if err := yaml.Unmarshal(b, &doc); err != nil { // JSON is YAML
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var out []found
	var walk func(where string, v any)
	walk = func(where string, v any) {
		switch x := v.(type) {
		case map[string]any:
			label := where
			for _, k := range []string{"alert", "record", "title", "refId", "name"} {
				if s, ok := x[k].(string); ok {
					label = where + " " + k + "=" + s
					break
				}
			}
			keys := make([]string, 0, len(x))
			for k := range x {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				if s, ok := x[k].(string); ok && k == "expr" {
					out = append(out, found{Where: label, Expr: s})
					continue
				}
				walk(label, x[k])
			}
		case []any:
			for _, e := range x {
				walk(where, e)
			}
		}
	}
	walk(filepath.Base(path)+":", doc)
	return out, nil
}

// names are the metric names expr selects.
func names(expr string) ([]string, error) {
	e, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
	if err != nil {
		return nil, err
	}
	set := map[string]bool{}
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		name := vs.Name
		for _, m := range vs.LabelMatchers {
			if m.Name == labels.MetricName && m.Type == labels.MatchEqual {
				name = m.Value
			}
		}
		if name == "" {
			err = fmt.Errorf("a selector without a metric name: %s", vs)
		}
		set[name] = true
		return nil
	})
	out := make([]string, 0, len(set))
	for n := range set {
		out = append(out, n)
	}
	sort.Strings(out)
	return out, err
}
