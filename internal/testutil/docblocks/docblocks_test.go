package docblocks

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name string
		md   string
		want []Block
	}{
		{"tagged shell block", "text\n```sh e2e\nkubectl get pods\n```\n",
			[]Block{{Lang: "sh", Tags: []string{"e2e"}, Body: "kubectl get pods\n", Line: 2}}},
		{"longer fence holds a shorter one", "````yaml\na: 1\n```\nb: 2\n````\n",
			[]Block{{Lang: "yaml", Tags: []string{}, Body: "a: 1\n```\nb: 2\n", Line: 1}}},
		{"indented code is no fence", "    ```sh\n    x\n", nil},
		{"tilde fence, no info", "~~~\nx\n~~~\n", []Block{{Body: "x\n", Line: 1}}},
		{"unclosed block runs to the end", "```sh notrun\nhelm install\n",
			[]Block{{Lang: "sh", Tags: []string{"notrun"}, Body: "helm install\n\n", Line: 1}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Parse(tc.md)
			for i := range got {
				if got[i].Tags == nil {
					got[i].Tags = []string{}
				}
			}
			for i := range tc.want {
				if tc.want[i].Tags == nil {
					tc.want[i].Tags = []string{}
				}
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Parse:\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// TestDocsBlocksAreMarked: every shell block of docs/*.md is "sh e2e" or
// "sh notrun", every page is linked from docs/README.md, and the pages of
// the used-by paths run on the e2e cluster.
func TestDocsBlocksAreMarked(t *testing.T) {
	pages, err := filepath.Glob("../../../docs/*.md")
	if err != nil || len(pages) == 0 {
		t.Fatalf("no docs pages: %v", err)
	}
	index, err := os.ReadFile("../../../docs/README.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, page := range pages {
		name := filepath.Base(page)
		b, err := os.ReadFile(page)
		if err != nil {
			t.Fatal(err)
		}
		tested := 0
		for _, bl := range Parse(string(b)) {
			if !bl.Shell() {
				continue
			}
			switch {
			case bl.Lang == "sh" && bl.Has("e2e"):
				tested++
			case bl.Lang == "sh" && bl.Has("notrun"):
			default:
				t.Errorf("%s:%d: a shell block must be marked \"sh e2e\" (the e2e suite runs it) or \"sh notrun\"", name, bl.Line)
			}
		}
		if name != "README.md" && !strings.Contains(string(index), "("+name+")") {
			t.Errorf("docs/README.md does not link %s", name)
		}
		switch name {
		case "pvc.md", "static-pv.md", "inline.md", "serverless.md", "operating.md":
			if tested == 0 {
				t.Errorf("%s has no block the e2e suite runs", name)
			}
		}
	}
}
