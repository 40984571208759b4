// Package docblocks reads the fenced code blocks of a Markdown page. The
// user docs (docs/*.md) mark each shell block "sh e2e" (run in order on the
// e2e cluster by e2e/TestDocs) or "sh notrun" (needs a user's own cluster);
// TestDocsBlocksAreMarked holds every page to that.
package docblocks

import "strings"

// Block is one fenced code block.
type Block struct {
	Lang string   // the info string's first word ("sh", "yaml", ...)
	Tags []string // its other words ("e2e", "notrun")
	Body string   // the lines between the fences, each ending in a newline
	Line int      // the opening fence's line, from 1
}

// Tested reports whether the e2e suite runs b.
func (b Block) Tested() bool { return b.Lang == "sh" && b.Has("e2e") }

// Has reports whether b's info string carries tag.
func (b Block) Has(tag string) bool {
	for _, t := range b.Tags {
		if t == tag {
			return true
		}
	}
	return false
}

// Shell reports whether b holds shell commands.
func (b Block) Shell() bool {
	switch b.Lang {
	case "sh", "bash", "shell", "console", "zsh":
		return true
	}
	return false
}

// Parse returns md's fenced blocks (``` or ~~~ fences, at most three
// spaces of indent; an unclosed block runs to the end).
func Parse(md string) []Block {
	var out []Block
	var cur *Block
	var fence string
	var body strings.Builder
	for i, line := range strings.Split(md, "\n") {
		trimmed := strings.TrimLeft(line, " ")
		indent := len(line) - len(trimmed)
		if cur == nil {
			if indent > 3 {
				continue
			}
			for _, f := range []string{"```", "~~~"} {
				if strings.HasPrefix(trimmed, f) {
					n := len(trimmed) - len(strings.TrimLeft(trimmed, f[:1]))
					fence = trimmed[:n]
					words := strings.Fields(trimmed[n:])
					cur = &Block{Line: i + 1}
					if len(words) > 0 {
						cur.Lang, cur.Tags = words[0], words[1:]
					}
					body.Reset()
					break
				}
			}
			continue
		}
		if indent <= 3 && strings.HasPrefix(trimmed, fence) && strings.TrimSpace(strings.TrimLeft(trimmed, fence[:1])) == "" {
			cur.Body = body.String()
			out = append(out, *cur)
			cur = nil
			continue
		}
		body.WriteString(line + "\n")
	}
	if cur != nil {
		cur.Body = body.String()
		out = append(out, *cur)
	}
	return out
}
